"""``hubserver run`` as a user runs it: a real process, real ports, real signals."""

import json
import os
import resource
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from tests.mqtt import free_port
from tests.test_tls_and_errors import certificate  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow  # every test here starts `hubserver run` or another hubserver process

BINARY = str(Path(sys.executable).parent / "hubserver")


def environment(data_dir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_"))}
    env.update({"HUBSERVER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra})
    return env


class RunningHub:
    def __init__(self, data_dir, http_port=None, mqtt_port=None, open_files=None, env=None, args=()):
        self.data_dir = data_dir
        self.env = env or {}  # extra environment variables
        self.args = list(args)  # extra options of ``hubserver run``
        self.open_files = open_files  # start the process with this soft RLIMIT_NOFILE
        self.http_port = http_port or free_port()
        self.mqtt_port = mqtt_port or free_port()
        self.output = []
        self.process = None

    def start(self, wait=True):
        self.process = subprocess.Popen(
            [
                BINARY,
                "run",
                "--host",
                "127.0.0.1",
                "--http-port",
                str(self.http_port),
                "--mqtt-port",
                str(self.mqtt_port),
                *self.args,
            ],
            env=environment(self.data_dir, **self.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=self._prepare,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            deadline = time.monotonic() + 60
            while not any("hubserver is running" in line for line in self.output):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the hub did not start:\n" + "".join(self.output))
                time.sleep(0.05)
        return self

    def _prepare(self):
        # Ctrl-C as from a terminal: a process inherits an ignored SIGINT, and pytest-xdist's workers ignore it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if self.open_files:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            time.sleep(0.1)
            wrote = self.text()
            raise AssertionError(f"the hub did not stop within {timeout} s of {sig!r}; it wrote:\n{wrote}") from None
        time.sleep(0.1)
        return code

    def text(self):
        return "".join(self.output)

    def provision(self, count, prefix="ws-"):
        out = subprocess.run(
            [BINARY, "provision", "weatherstation", "--count", str(count), "--prefix", prefix, "--format", "json"],
            env=environment(self.data_dir),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return json.loads(out.stdout)


@pytest.fixture
def running(tmp_path):
    hubs = []

    def start(**kwargs):
        hub = RunningHub(tmp_path / "data", **kwargs).start()
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        if hub.process.poll() is None:
            hub.process.kill()
            hub.process.wait()


def test_first_run_creates_the_admin_once_and_serves_http(running):
    hub = running(open_files=256)
    first = hub.text()
    assert "Created the admin account" in first and "admin" in first
    with socket.create_connection(("127.0.0.1", hub.http_port)) as sock:
        sock.sendall(b"GET /admin/login/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    # Every connection is a file descriptor: started with a soft limit of 256, the hub lifts it to the hard one.
    limits = Path(f"/proc/{hub.process.pid}/limits").read_text()
    soft, hard = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3:5]
    assert int(hard) > 256 and soft == hard
    assert hub.stop(signal.SIGINT) == 0
    again = RunningHub(hub.data_dir).start()
    try:
        assert "Created the admin account" not in again.text()
    finally:
        assert again.stop() == 0


def test_a_busy_port_stops_start_up_before_anything_is_created(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for kind, hub in (
            ("MQTT", RunningHub(tmp_path / "a", mqtt_port=port)),
            ("HTTP", RunningHub(tmp_path / "b", http_port=port)),
        ):
            hub.start(wait=False)
            code = hub.process.wait(60)
            time.sleep(0.1)
            assert code != 0
            assert f"cannot listen for {kind} on 127.0.0.1:{port}" in hub.text()
            assert "Created the admin account" not in hub.text()
            assert not (hub.data_dir / "hubserver.sqlite3").exists(), "no database (and no admin) before the ports"


def test_a_second_start_names_every_busy_port_and_the_hub_that_holds_them(tmp_path):
    runtime = {"XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    hub = RunningHub(tmp_path / "data", env=runtime).start()
    pid = hub.process.pid
    try:
        # `hubserver run` again in another terminal: the hub already running there is named, with both ports.
        again = RunningHub(hub.data_dir, http_port=hub.http_port, mqtt_port=hub.mqtt_port, env=runtime)
        again.start(wait=False)
        assert again.process.wait(60) != 0
        time.sleep(0.1)
        for kind, port in (("HTTP", hub.http_port), ("MQTT", hub.mqtt_port)):
            assert (
                f"cannot listen for {kind} on 127.0.0.1:{port}: hubserver (pid {pid}) is already running on this "
                f"database and listens there; stop it first (Ctrl+C in its terminal, or kill {pid})."
            ) in again.text()
        # Another data directory on the same MQTT port: the holder and its data are named, nothing is created.
        other = RunningHub(tmp_path / "other", mqtt_port=hub.mqtt_port, env=runtime)
        other.start(wait=False)
        assert other.process.wait(60) != 0
        time.sleep(0.1)
        assert (
            f"cannot listen for MQTT on 127.0.0.1:{hub.mqtt_port}: hubserver (pid {pid}) on another database "
            f"({hub.data_dir}) listens there; stop it, or use --mqtt-port."
        ) in other.text()
        assert "cannot listen for HTTP" not in other.text()
        assert not (tmp_path / "other" / "hubserver.sqlite3").exists()
    finally:
        assert hub.stop() == 0


def test_the_admin_password_is_printed_once_with_the_way_to_reset_it(running, tmp_path):
    hub = running()
    printed = next(line for line in hub.output if "Log in at" in line)
    assert f"Log in at http://127.0.0.1:{hub.http_port}/admin/ as  admin  with password  " in printed
    password = printed.split()[-1]
    reset = next(line for line in hub.output if "shown only once" in line)
    program = reset.split("To set a new one: ")[1].split()[0]
    assert program in (BINARY, "hubserver")  # as the user runs it: by its path, or by name from PATH
    assert reset.strip().endswith(f"{program} --data-dir {hub.data_dir} changepassword admin")
    assert hub.stop() == 0

    # The documented way works: changepassword (asking twice, here on stdin instead of a terminal).
    changed = subprocess.run(
        [BINARY, "--data-dir", str(hub.data_dir), "changepassword", "admin"],
        env=environment(hub.data_dir),
        input="a-new-admin-pass-42\na-new-admin-pass-42\n",
        capture_output=True,
        text=True,
        start_new_session=True,  # no controlling terminal: getpass reads stdin
        timeout=120,
    )
    assert "Password changed successfully for user 'admin'" in changed.stdout, changed.stderr
    check = "from django.contrib.auth import authenticate as a; print(bool(a(username='admin', password={!r})))"
    for secret, valid in ((password, "False"), ("a-new-admin-pass-42", "True")):
        out = subprocess.run(
            [BINARY, "shell", "-v", "0", "-c", check.format(secret)],
            env=environment(hub.data_dir),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip() == valid, out.stderr


def binary(*args, data_dir, env=None, check=True):
    result = subprocess.run(
        [BINARY, *args], env=environment(data_dir, **(env or {})), capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_other_commands_find_the_running_hub_on_their_database(tmp_path):
    runtime = {"XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    hub = RunningHub(tmp_path / "data", env=runtime).start()
    try:
        # Provisioning prints where this hub really listens (not the default 1883), and the WebSocket URL.
        info = json.loads(binary("provision", "weatherstation", "ws-1", "--format", "json",
                                 data_dir=hub.data_dir, env=runtime).stdout)  # fmt: skip
        assert (info["host"], info["mqtt_port"]) == ("127.0.0.1", hub.mqtt_port)
        assert info["websocket_url"] == f"ws://127.0.0.1:{hub.http_port}/mqtt"
        publish_one(info, info["mqtt_port"], 7.5)

        # What a deployment says wins: a hub behind NAT or in a container.
        public = {
            "HUBSERVER_PUBLIC_HOST": "hub.example.com",
            "HUBSERVER_PUBLIC_MQTT_PORT": "11883",
            "HUBSERVER_PUBLIC_MQTT_TLS_PORT": "18883",
            "HUBSERVER_PUBLIC_WEBSOCKET_URL": "wss://hub.example.com/mqtt",
        }
        out = binary("provision", "weatherstation", "ws-2", "--format", "csv", data_dir=hub.data_dir,
                     env=runtime | public).stdout  # fmt: skip
        row = dict(zip(*[line.split(",") for line in out.splitlines()], strict=True))
        assert (row["host"], row["mqtt_port"], row["mqtt_tls_port"]) == ("hub.example.com", "11883", "18883")
        assert row["websocket_url"] == "wss://hub.example.com/mqtt"

        # The simulator connects to the running hub's port without being told.
        simulated = binary("simulate", "weatherstation", "--count", "1", "--interval", "0.2", "--duration", "2",
                           "--live", "no", data_dir=hub.data_dir, env=runtime)  # fmt: skip
        assert f"127.0.0.1:{hub.mqtt_port}" in simulated.stdout + simulated.stderr

        # A command that would create another database says which hub runs where, and how to reach its data.
        other = binary("provision", "weatherstation", "ws-3", data_dir=tmp_path / "other", env=runtime)
        lines = other.stderr.splitlines()
        assert f"hubserver: creating a new database in {tmp_path / 'other'}" in lines
        warning = next(line for line in lines if "a hub is running" in line)
        assert f"(pid {hub.process.pid}, MQTT port {hub.mqtt_port}) on another database" in warning
        assert warning.endswith(f"--data-dir {hub.data_dir} ...")
        assert "No hub is running on this database" in other.stderr
    finally:
        assert hub.stop() == 0
    assert not list((tmp_path / "runtime").rglob("*.json")), "the hub's note is removed when it stops"
    after = binary("provision", "weatherstation", "ws-4", "--format", "json", data_dir=hub.data_dir, env=runtime)
    assert json.loads(after.stdout)["mqtt_port"] == 1883 and "No hub is running on this database" in after.stderr
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        assert db.execute("SELECT temperature FROM devicetypes_weatherstationreading").fetchall()[0] == (7.5,)


def test_mqtt_over_websocket_on_the_http_port(running):
    hub = running()
    credentials = hub.provision(1, prefix="wsock-")[0]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"], transport="websockets")
    client.ws_set_options(path="/mqtt")
    client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
    client.connect("127.0.0.1", hub.http_port)
    client.loop_start()
    try:
        info = client.publish(credentials["topics"]["data"], json.dumps({"temperature": 12.5}), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    assert hub.stop() == 0
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        assert db.execute("SELECT temperature FROM devicetypes_weatherstationreading").fetchall() == [(12.5,)]


def publish_one(credentials, port, temperature, transport="tcp", ca_certs=None, protocol=paho.MQTTv311):
    """CONNECT, PUBLISH at QoS 1 and wait for the PUBACK (sent by the hub after commit), then DISCONNECT."""
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"], transport=transport, protocol=protocol
    )
    if transport == "websockets":
        client.ws_set_options(path="/mqtt")
    if ca_certs:
        client.tls_set(ca_certs=ca_certs, cert_reqs=ssl.CERT_REQUIRED)
    client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        info = client.publish(credentials["topics"]["data"], json.dumps({"temperature": temperature}), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def mapped_uvloop(pid):
    return "/uvloop/" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize(
    "env, args, shown",
    [
        ({}, [], "Event loop: uvloop"),  # the default
        ({"HUBSERVER_EVENT_LOOP": "asyncio"}, [], "Event loop: asyncio (_UnixSelectorEventLoop)"),
        ({"HUBSERVER_EVENT_LOOP": "asyncio"}, ["--event-loop", "uvloop"], "Event loop: uvloop"),
        ({}, ["--event-loop", "asyncio"], "Event loop: asyncio (_UnixSelectorEventLoop)"),
    ],
)
def test_the_hub_runs_and_serves_on_the_chosen_event_loop(running, certificate, env, args, shown):  # noqa: F811
    tls_port = free_port()
    tls = {"HUBSERVER_MQTT_TLS_PORT": str(tls_port)}
    tls |= {"HUBSERVER_MQTT_TLS_CERTFILE": certificate[0], "HUBSERVER_MQTT_TLS_KEYFILE": certificate[1]}
    hub = running(env=env | tls, args=args)
    assert shown in hub.text()
    assert mapped_uvloop(hub.process.pid) == ("uvloop" in shown)
    tcp, websocket, secure = hub.provision(3, prefix="loop-")
    publish_one(tcp, hub.mqtt_port, 1.5)  # amqtt on the loop's streams
    publish_one(websocket, hub.http_port, 2.5, transport="websockets")  # Twisted's reactor and daphne
    publish_one(secure, tls_port, 3.5, ca_certs=certificate[0])  # the loop's TLS transport
    with socket.create_connection(("127.0.0.1", hub.http_port)) as sock:
        sock.sendall(b"GET /admin/login/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    assert hub.stop(signal.SIGINT) == 0, hub.text()
    assert "Stopped." in hub.text()
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        stored = db.execute("SELECT temperature FROM devicetypes_weatherstationreading ORDER BY temperature")
        assert stored.fetchall() == [(1.5,), (2.5,), (3.5,)]


def test_mqtt5_on_every_listener(running, certificate):  # noqa: F811
    tls_port = free_port()
    tls = {"HUBSERVER_MQTT_TLS_PORT": str(tls_port)}
    tls |= {"HUBSERVER_MQTT_TLS_CERTFILE": certificate[0], "HUBSERVER_MQTT_TLS_KEYFILE": certificate[1]}
    hub = running(env=tls)
    tcp, websocket, secure = hub.provision(3, prefix="five-")
    publish_one(tcp, hub.mqtt_port, 5.1, protocol=paho.MQTTv5)
    publish_one(websocket, hub.http_port, 5.2, transport="websockets", protocol=paho.MQTTv5)
    publish_one(secure, tls_port, 5.3, ca_certs=certificate[0], protocol=paho.MQTTv5)
    assert hub.stop(signal.SIGINT) == 0, hub.text()
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        stored = db.execute("SELECT temperature FROM devicetypes_weatherstationreading ORDER BY temperature")
        assert stored.fetchall() == [(5.1,), (5.2,), (5.3,)]


def test_without_uvloop_the_hub_falls_back_to_asyncio_and_says_so(running, tmp_path):
    missing = tmp_path / "no-uvloop" / "uvloop"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text("raise ImportError('uvloop is not installed here')\n")
    hub = running(env={"PYTHONPATH": str(missing.parent)})
    assert "uvloop is not installed: running on asyncio's own event loop" in hub.text()
    assert "Event loop: asyncio (_UnixSelectorEventLoop)" in hub.text()
    assert not mapped_uvloop(hub.process.pid)
    publish_one(hub.provision(1, prefix="fallback-")[0], hub.mqtt_port, 4.5)
    assert hub.stop() == 0


def test_an_unknown_event_loop_is_refused(tmp_path):
    out = subprocess.run(
        [BINARY, "run", "--event-loop", "trio"], env=environment(tmp_path), capture_output=True, text=True
    )
    assert out.returncode != 0 and "invalid choice: 'trio'" in out.stderr
    out = subprocess.run(
        [BINARY, "run"], env=environment(tmp_path, HUBSERVER_EVENT_LOOP="trio"), capture_output=True, text=True
    )
    assert out.returncode != 0 and "HUBSERVER['EVENT_LOOP'] must be one of uvloop, asyncio, got 'trio'" in out.stderr


def test_sigterm_under_load_loses_no_acknowledged_message(running):
    hub = running()
    devices = hub.provision(10, prefix="load-")
    stop = threading.Event()
    sent = []  # (key, MessageInfo): acknowledged when info.is_published()
    clients = []

    def publisher(credentials):
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"])
        client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
        client.max_inflight_messages_set(50)
        client.connect("127.0.0.1", hub.mqtt_port)
        client.loop_start()
        clients.append(client)
        seq = 0
        while not stop.is_set() and seq < 20_000:
            seq += 1
            key = f"{credentials['device_id']}:{seq}"
            info = client.publish(credentials["topics"]["data"], json.dumps({"temperature": 20, "seq": key}), 1)
            sent.append((key, info))
            if seq % 50 == 0:
                time.sleep(0.01)

    threads = [threading.Thread(target=publisher, args=(d,), daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    time.sleep(2.5)
    assert hub.stop(signal.SIGTERM) == 0, hub.text()
    stop.set()
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.loop_stop()
    # A publish made while paho was not connected (before its CONNACK, after the hub stopped) was never sent.
    acked = {key for key, info in list(sent) if info.rc == paho.MQTT_ERR_SUCCESS and info.is_published()}
    assert len(acked) > 100, "the load must have been real"
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        stored = {
            json.loads(row[0])["seq"]
            for row in db.execute(
                "SELECT payload_json FROM devicetypes_weatherstationmessage WHERE topic LIKE '%/data'"
            )
        }
    missing = acked - stored
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages are not in the database"


def test_the_container_health_check_follows_the_hub(tmp_path):
    runtime = {"XDG_RUNTIME_DIR": str(tmp_path / "runtime")}
    # As in a container: only the hub's public name is configured; the check comes from inside, over loopback.
    hub = RunningHub(tmp_path / "data", env=runtime | {"HUBSERVER_ALLOWED_HOSTS": "hub.example.com"}).start()

    def health_check():  # the image's HEALTHCHECK command
        return subprocess.run(
            [sys.executable, "-m", "hubserver.healthcheck"],
            env=environment(tmp_path, **runtime),
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        healthy = health_check()
        assert healthy.returncode == 0, healthy.stderr
        with socket.create_connection(("127.0.0.1", hub.http_port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status": "ok"}')
        hub.process.send_signal(signal.SIGSTOP)  # a hub that hangs
        try:
            unhealthy = health_check()
        finally:
            hub.process.send_signal(signal.SIGCONT)
        assert unhealthy.returncode == 1
        assert unhealthy.stderr.startswith(f"unhealthy: no HTTP answer on 127.0.0.1:{hub.http_port}")
    finally:
        assert hub.stop() == 0


@pytest.mark.parametrize("paused", [False, True], ids=["serving", "after-sigstop-sigcont"])
def test_sigterm_while_http_requests_are_being_served_stops_the_hub(running, paused):
    """A request in flight at SIGTERM has a thread waiting for a task on the loop: the hub used to print
    "Stopped." and never exit (Python joins that thread at exit). A hub that was stopped and continued
    (SIGSTOP, SIGCONT: a container paused, a laptop) serves the requests that queued meanwhile all at once."""
    hub = running()
    finished = threading.Event()
    answered = []

    def ask_again_and_again():
        while not finished.is_set():
            try:
                with socket.create_connection(("127.0.0.1", hub.http_port), timeout=30) as sock:
                    while not finished.is_set():
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                        if not sock.recv(4096):
                            break
                        answered.append(1)
            except OSError:
                time.sleep(0.01)

    clients = [threading.Thread(target=ask_again_and_again, daemon=True) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 60
        while len(answered) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        if paused:
            hub.process.send_signal(signal.SIGSTOP)
            time.sleep(0.5)  # the clients' next requests queue up
            hub.process.send_signal(signal.SIGCONT)
        served_before = len(answered)
        while len(answered) < served_before + 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(answered) >= served_before + 10, "the hub did not serve HTTP"
        code = hub.stop(timeout=60)  # SIGTERM, the clients still asking
    finally:
        finished.set()
    assert code == 0, hub.text()
    assert "Stopped." in hub.text()
    assert "Traceback" not in hub.text()
