"""Database connections under ASGI stay bounded whatever the request rate: bursts of requests through the
hub's real ASGI application (Django's handler, a thread per request) leave no SQLite descriptor behind."""

import asyncio
import gc
import json
import os

import pytest
from django.db import connection

from tests.conftest import provision_device

pytestmark = pytest.mark.django_db(transaction=True)

BURST = 300


def sqlite_descriptors():
    """Open descriptors of this process on the test database (its file, -wal and -shm)."""
    name = os.path.realpath(connection.settings_dict["NAME"])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(name):
            count += 1
    return count


async def post(app, path, body, headers=(), method="POST"):
    """One request through the ASGI application, as a server would deliver it; returns the status."""
    body = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await never.wait()  # the client stays: Django listens for a disconnect while it answers

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


@pytest.fixture
def application():
    from hubserver.asgi import application

    return application


@pytest.fixture
def no_gc():
    """Without the garbage collector, a connection nobody closed stays open: what a serving process with
    rare full collections (hubserver run's tuning) sees for minutes."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.slow  # bursts of requests
async def test_a_burst_of_bad_key_ingest_requests_leaves_no_connection_open(hub, application, no_gc):
    await provision_device("thermometer", "t-1")
    path = "/iot/devices/thermometer/t-1/data/"
    await post(application, path, {"temperature": 1.0}, [(b"x-api-key", b"warm-up")])
    before = sqlite_descriptors()
    after = []
    for _ in range(2):
        statuses = await asyncio.gather(
            *(post(application, path, {"temperature": 1.0}, [(b"x-api-key", b"wrong-%d" % n)]) for n in range(BURST))
        )
        assert set(statuses) <= {401, 429}  # wrong keys; after AUTH_FAILURE_LIMIT of them, throttled
        after.append(sqlite_descriptors())
    # The lookups run on the loop's thread pool, whose threads keep one connection each (a file and its
    # -wal: 2 or 3 descriptors): at most that many more after the first burst, none after the second.
    pool_threads = min(32, (os.cpu_count() or 1) + 4)
    assert after[0] - before <= 3 * pool_threads
    assert after[1] <= after[0]


async def test_bursts_of_sync_view_requests_leave_no_connection_open(application, no_gc):
    """The REST API's views are sync views: Django runs each request in a thread of its own, which opens a
    connection of its own (here to look the API token up). Closed at the end of the request, it is not left
    for the collector; SQLite may keep a closed connection's file open for reuse while other connections hold
    locks, so the count may follow the busiest moment once, never the number of requests."""
    headers = [(b"authorization", b"Token not-a-token")]
    after = []
    for _ in range(4):
        statuses = await asyncio.gather(
            *(post(application, "/api/thermometer/devices/", b"", headers, method="GET") for _ in range(30))
        )
        assert statuses == [401] * 30
        after.append(sqlite_descriptors())
    # A connection left open would add at least one descriptor per request: 30 a burst. Reuse may differ
    # by the odd descriptor with how many requests overlapped at the busiest moment of each burst.
    assert after[-1] - after[0] <= 3, after
