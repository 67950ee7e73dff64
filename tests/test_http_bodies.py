"""HTTP request bodies are refused from their headers, before they are read: per-route limits, chunked
bodies capped as they stream. Against ``hubserver run`` over raw sockets (daphne), and the same rule as
ASGI middleware for other servers."""

import json
import socket
import time
import urllib.request

import pytest
from django.test import override_settings

from hubserver.conf import validate
from hubserver.web import bodies
from tests.test_run import RunningHub

TOKEN = "a-broker-token-for-the-body-tests"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_request(port, head, body=b"", read_timeout=10):
    """Send ``head`` (and ``body``), then read until the hub closes: (status line, headers, body, seconds)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body)
        sock.settimeout(read_timeout)
        data = b""
        started = time.monotonic()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return lines[0], {k.lower(): v for k, v in headers.items()}, rest, time.monotonic() - started


def post_head(path, length=None, *extra):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            series, _, value = line.rpartition(" ")
            found[series[len(name) :]] = float(value)
    return found


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    env = {
        "HUBSERVER_HTTP_MAX_BODY_SIZE": "4096",
        "HUBSERVER_BROKER_AUTH_BACKEND": "1",
        "HUBSERVER_BROKER_AUTH_TOKEN": TOKEN,
    }
    hub = RunningHub(tmp_path_factory.mktemp("bodies") / "data", env=env)
    hub.start()
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()


@pytest.mark.slow
def test_a_declared_body_over_the_limit_is_refused_before_a_byte_of_it_is_sent(hub):
    """The attack: 200 MB announced to the broker auth endpoint, and the body never sent. The answer comes
    from the headers alone (the hub would otherwise wait for the body forever), then the hub closes."""
    status, headers, body, _ = raw_request(hub.http_port, post_head("/iot/broker/auth/", 209_715_200))
    assert status == "HTTP/1.1 413 Content Too Large"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": "request body too large: this URL takes at most 16384 bytes", "limit": 16384}
    # Device ingestion's limit is MAX_PAYLOAD_SIZE; every other URL has HTTP_MAX_BODY_SIZE (4096 here).
    status, _, body, _ = raw_request(hub.http_port, post_head("/iot/devices/weatherstation/x/data/", 262_145))
    assert status.startswith("HTTP/1.1 413") and json.loads(body)["limit"] == 262_144
    status, _, body, _ = raw_request(hub.http_port, post_head("/api/weatherstation/devices/", 4097))
    assert status.startswith("HTTP/1.1 413") and json.loads(body)["limit"] == 4096
    # No Django view ran for any of them; each refusal is counted by route.
    refused = metric(hub.http_port, "hubserver_http_bodies_refused_total")
    assert refused['{route="hubserver:broker-auth"}'] == 1
    assert refused['{route="hubserver:device-data"}'] == 1
    assert refused['{route="weatherstation-device-list"}'] == 1
    assert metric(hub.http_port, "hubserver_http_broker_requests_total") == {}
    assert "refused an HTTP body over the 16384-byte limit of hubserver:broker-auth" in hub.text()


@pytest.mark.slow
def test_expect_100_continue_gets_the_413_instead_of_the_go_ahead(hub):
    head = post_head("/iot/broker/auth/", 1_000_000, "Expect: 100-continue")
    status, _, body, _ = raw_request(hub.http_port, head)
    assert status.startswith("HTTP/1.1 413")
    assert b"100 Continue" not in body


@pytest.mark.slow
def test_a_body_within_the_limit_is_served(hub):
    body = json.dumps({"username": "weatherstation.nobody", "password": "x"}).encode()
    status, _, answer, _ = raw_request(
        hub.http_port,
        post_head("/iot/broker/auth/", len(body), "Connection: close", f"Authorization: Bearer {TOKEN}"),
        body,
    )
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(answer) == {"result": "deny"}


@pytest.mark.slow
def test_a_chunked_body_is_cut_off_as_it_passes_the_limit(hub):
    chunk = b"x" * 8192
    stream = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4))  # 32 KB, over 16 KB
    head = post_head("/iot/broker/auth/", None, "Transfer-Encoding: chunked")
    status, _, body, _ = raw_request(hub.http_port, head, stream)
    assert status.startswith("HTTP/1.1 413") and json.loads(body)["limit"] == 16384


@pytest.mark.slow
def test_clients_streaming_big_bodies_get_413_and_the_hub_keeps_none_of_it(hub):
    """Ten clients each announce 200 MB and stream 20 MB of it (and ten stream chunked bodies): the hub's
    memory stays flat, every client reads its 413, and the hub still answers normal requests."""
    before = rss_kb(hub.process.pid)
    answers = []
    block = b"x" * 65536
    for index in range(20):
        chunked = index % 2 == 1
        sock = socket.create_connection(("127.0.0.1", hub.http_port))
        if chunked:
            sock.sendall(post_head("/iot/broker/auth/", None, "Transfer-Encoding: chunked"))
            piece = b"%x\r\n%s\r\n" % (len(block), block)
        else:
            sock.sendall(post_head("/iot/broker/auth/", 209_715_200))
            piece = block
        sock.settimeout(10)
        sent = 0
        try:
            while sent < 20 * 2**20:
                sock.sendall(piece)
                sent += len(block)
        except OSError:  # the hub closed after its linger: it reads nothing more
            pass
        data = b""
        try:
            while not data.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        sock.close()
        answers.append(data.split(b"\r\n", 1)[0])
    grown_mb = (rss_kb(hub.process.pid) - before) / 1024
    assert answers == [b"HTTP/1.1 413 Content Too Large"] * 20
    assert grown_mb < 50, f"the hub grew by {grown_mb:.0f} MB while refusing 400 MB of bodies"
    status, _, _, _ = raw_request(
        hub.http_port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status == "HTTP/1.1 200 OK"


# -- the rule and the ASGI middleware, in-process ------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "route", "limit"),
    [
        ("/iot/broker/auth/", "hubserver:broker-auth", 16384),
        ("/iot/broker/acl/?x=1", "hubserver:broker-acl", 16384),
        ("/iot/devices/thermometer/t%2D1/data/", "hubserver:device-data", 1000),
        ("/iot/devices/thermometer/t-1/status/", "hubserver:device-status", 1000),
        ("/admin/login/", "admin:login", 2048),
        ("/no/such/page", "other", 2048),
    ],
)
def test_each_route_has_its_limit(path, route, limit):
    with override_settings(HUBSERVER={"MAX_PAYLOAD_SIZE": 1000, "HTTP_MAX_BODY_SIZE": 2048}):
        assert bodies.body_limit(path) == (route, limit)
    with override_settings(HUBSERVER={"HTTP_BODY_LIMITS": {route: 7}}):
        assert bodies.body_limit(path) == (route, 7)


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"HTTP_MAX_BODY_SIZE": 0}, "HTTP_MAX_BODY_SIZE"),
        ({"HTTP_BODY_LIMITS": {"hubserver:device-data": "1 MB"}}, "hubserver:device-data"),
        ({"HTTP_BODY_LIMITS": {"hubserver:device-data": -1}}, "hubserver:device-data"),
        ({"HTTP_BODY_LIMITS": {5: 10}}, "HTTP_BODY_LIMITS"),
        ({"HTTP_BODY_LIMITS": [("a", 1)]}, "HTTP_BODY_LIMITS"),
    ],
)
def test_body_limit_settings_are_validated(user, named):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=named.replace("[", r"\[")):
        validate(user)


def test_the_binary_reads_body_limits_from_the_environment(monkeypatch):
    from django.core.exceptions import ImproperlyConfigured
    from hubserver.settings.environment import env_sizes

    monkeypatch.setenv("X_SIZES", "hubserver:device-data=65536, admin:login=100")
    assert env_sizes("X_SIZES", {}) == {"hubserver:device-data": 65536, "admin:login": 100}
    monkeypatch.setenv("X_SIZES", "hubserver:device-data")
    with pytest.raises(ImproperlyConfigured, match="X_SIZES"):
        env_sizes("X_SIZES", {})


class Inner:
    """An ASGI app that reads the whole body, like Django does before a view runs."""

    def __init__(self):
        self.called = False
        self.body = b""

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, headers, chunks):
    received, sent = [], []
    queue = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        message = queue.pop(0)
        received.append(message)
        return message

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/iot/broker/auth/", "headers": headers, "client": ("t", 1)}
    await app(scope, receive, send)
    return received, sent


async def test_the_middleware_answers_413_from_the_declared_length_without_receiving():
    bodies.stats.clear()
    inner = Inner()
    received, sent = await call(bodies.BodyLimitMiddleware(inner), [(b"content-length", b"209715200")], [b"x"])
    assert received == [] and not inner.called
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["limit"] == 16384
    assert bodies.stats.snapshot() == {"hubserver:broker-auth": 1}


async def test_the_middleware_stops_a_streamed_body_at_the_limit():
    inner = Inner()
    chunks = [b"x" * 8192] * 10  # 80 KB, no declared length
    received, sent = await call(bodies.BodyLimitMiddleware(inner), [], chunks)
    assert len(received) == 3  # the third chunk passed 16 KB: nothing more was taken
    assert sent[0]["status"] == 413
    inner = Inner()
    received, sent = await call(bodies.BodyLimitMiddleware(inner), [], [b"{}"])
    assert inner.body == b"{}" and sent[0]["status"] == 200
