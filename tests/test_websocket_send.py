"""A WebSocket client that stops reading: what the hub holds for it is bounded (``WEBSOCKET_SEND_BUFFER``, then
the endpoint's own queue limit), it is dropped from or closed, and the clients that do read are served.

Against ``hubserver run`` (daphne): the unbounded buffer was Twisted's, under daphne's ``send``. The stalled
clients are raw sockets with a small receive buffer that read their handshake and then nothing."""

import base64
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from tests.mqtt import _length, _string
from tests.test_run import BINARY, RunningHub, environment

pytestmark = pytest.mark.slow  # a hub process

FLOOD_TOPIC = "lab/flood"
MAX_QUEUED = 50


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    data = tmp_path_factory.mktemp("wsend")
    env = {
        "XDG_RUNTIME_DIR": str(data / "runtime"),
        "HUBSERVER_CLIENT_MESSAGE_RATE": "0",  # the flooding publisher is the test's, not the attack
        "HUBSERVER_CLIENT_BYTE_RATE": "0",
        "HUBSERVER_MAX_QUEUED_MESSAGES": str(MAX_QUEUED),
    }
    running = RunningHub(data / "data", env=env).start()
    found = re.search(r"as\s+admin\s+with\s+password\s+(\S+)", running.text())
    running.admin_password = found.group(1)
    yield running
    assert running.stop() == 0


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status_file:
        status = status_file.read()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))


def metric(hub, name, **labels):
    with socket.create_connection(("127.0.0.1", hub.http_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in answer.decode().splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in /metrics")


# --- a raw WebSocket client ------------------------------------------------------------------------------


class RawWebSocket:
    """Handshake, masked frames out, frames in; reads nothing unless asked."""

    def __init__(self, port, path, subprotocol=None, receive_buffer=4096):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: the window
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.pending = b""
        while b"\r\n\r\n" not in self.pending:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            self.pending += chunk
        head, self.pending = self.pending.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, data, opcode=0x2):
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x80 | opcode])
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exactly(self, n):
        while len(self.pending) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("end of stream")
            self.pending += chunk
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def frame(self):
        """(opcode, payload) of the next frame."""
        first, second = self._exactly(2)
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        return first & 0x0F, self._exactly(n)

    def read_until_closed(self):
        """Read every frame until the close frame or the end of the connection: the close code, None when the
        connection ended without one, "open" when it is still open after the socket's timeout."""
        try:
            while True:
                opcode, payload = self.frame()
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except TimeoutError:
            return "open"
        except (ConnectionError, OSError):
            return None

    def close(self):
        self.sock.close()


def mqtt_connect(client_id, username, password):
    flags = 0x02 | 0x80 | 0x40
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
    body += _string(client_id) + _string(username) + _string(password)
    return bytes([0x10]) + _length(len(body)) + body


def mqtt_subscribe(topic, qos=0, packet_id=1):
    body = struct.pack("!H", packet_id) + _string(topic) + bytes([qos])
    return bytes([0x82]) + _length(len(body)) + body


def paho_client(hub, client_id, transport="tcp"):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, transport=transport)
    if transport == "websockets":
        client.ws_set_options(path="/mqtt")
    client.username_pw_set("admin", hub.admin_password)
    return client


# --- MQTT over WebSocket ---------------------------------------------------------------------------------


def test_an_mqtt_subscriber_over_websocket_that_stops_reading_is_bounded_and_others_are_served(hub):
    stalled = RawWebSocket(hub.http_port, "/mqtt", subprotocol="mqtt")
    stalled.send(mqtt_connect("stalled-ws", "admin", hub.admin_password))
    assert stalled.frame()[1][:4] == b"\x20\x02\x00\x00"  # CONNACK, accepted
    stalled.send(mqtt_subscribe(FLOOD_TOPIC))
    assert stalled.frame()[1][:1] == b"\x90"  # SUBACK; from now on it reads nothing

    received = []
    innocent = paho_client(hub, "innocent-ws", transport="websockets")
    subscribed = threading.Event()
    innocent.on_message = lambda client, userdata, message: received.append(len(message.payload))
    innocent.on_subscribe = lambda *args: subscribed.set()
    innocent.connect("127.0.0.1", hub.http_port)
    innocent.loop_start()
    publisher = paho_client(hub, "publisher")
    publisher.connect("127.0.0.1", hub.mqtt_port)
    publisher.loop_start()
    try:
        innocent.subscribe(FLOOD_TOPIC, qos=0)
        assert subscribed.wait(10)
        before = rss_kb(hub.process.pid)
        payload = os.urandom(64 * 1024)
        rounds, per_round = 40, 10  # 25 MiB meant for each subscriber; the innocent one keeps up
        for n in range(rounds):
            for _ in range(per_round):
                publisher.publish(FLOOD_TOPIC, payload, qos=0)
            deadline = time.monotonic() + 30
            while len(received) < (n + 1) * per_round and time.monotonic() < deadline:
                time.sleep(0.005)
        assert len(received) == rounds * per_round, "the subscriber that reads missed messages"
        grown_mb = (rss_kb(hub.process.pid) - before) / 1024
        # Held for the stalled client: WEBSOCKET_SEND_BUFFER (64 KiB) in the transport, up to 64 KiB of
        # writes, MAX_QUEUED_MESSAGES deliveries (3.2 MiB); not the 25 MiB sent its way.
        assert grown_mb < 12, f"the hub grew by {grown_mb:.0f} MB for a client that reads nothing"
        # Most of what was meant for it was dropped (the rest: in socket buffers, and queued).
        assert metric(hub, "hubserver_mqtt_dropped_total", reason="queue_full") >= rounds * per_round // 2
        assert metric(hub, "hubserver_websocket_send_paused_total", endpoint="mqtt") >= 1
        assert "does not read what it is sent" in hub.text()
        # A publisher is still acknowledged at once.
        info = publisher.publish("lab/after", b"ok", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        for client in (innocent, publisher):
            client.disconnect()
            client.loop_stop()
        stalled.close()


def ws_frame(data):
    """A binary frame with an all-zero mask (the payload goes as is): cheap to build at a MiB a frame."""
    n = len(data)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([0x82]) + length + b"\0\0\0\0" + data


def test_a_client_flooding_over_websocket_is_no_longer_read_while_the_hub_is_behind(hub):
    """Reading back-pressure on the way in survives the send-buffer wrapper: a client sending QoS 0 as fast as
    its socket lets it makes the hub stop reading it, instead of the hub reading (and holding) all it sends."""
    flooder = RawWebSocket(hub.http_port, "/mqtt", subprotocol="mqtt")
    flooder.send(mqtt_connect("flooder-ws", "admin", hub.admin_password))
    assert flooder.frame()[1][:4] == b"\x20\x02\x00\x00"
    body = _string("lab/ws-flood") + b'{"temperature": 20.5}'
    packet = bytes([0x30]) + _length(len(body)) + body
    frame = ws_frame(packet * (2**20 // len(packet)))
    before = rss_kb(hub.process.pid)
    throttled = metric(hub, "hubserver_mqtt_throttled_total", reason="websocket_buffer")
    frames, offered = 0, 96  # 96 MiB offered; a hub that reads it all holds far more than that
    flooder.sock.settimeout(1)
    deadline = time.monotonic() + 8
    try:
        while frames < offered and time.monotonic() < deadline:
            flooder.sock.sendall(frame)
            frames += 1
    except TimeoutError:
        pass  # the hub stopped reading: the socket's buffers are full
    grown_mb = (rss_kb(hub.process.pid) - before) / 1024
    # The hub parses tiny QoS 0 packets into several times their size (with the test's rate limits off, all
    # of what it read is in flight at once): a hub that read all 96 MiB would hold gigabytes.
    assert frames < offered, "the hub kept reading a client it could not keep up with"
    assert grown_mb < 200, f"the hub grew by {grown_mb:.0f} MB reading {frames} MiB from one WebSocket client"
    assert metric(hub, "hubserver_mqtt_throttled_total", reason="websocket_buffer") > throttled
    # Others are served meanwhile.
    publisher = paho_client(hub, "bystander")
    publisher.connect("127.0.0.1", hub.mqtt_port)
    publisher.loop_start()
    try:
        info = publisher.publish("lab/after-flood", b"ok", qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        flooder.close()


# --- the live view -----------------------------------------------------------------------------------------


def api_token(hub):
    made = subprocess.run(
        [BINARY, "drf_create_token", "admin"],
        env=environment(hub.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return re.search(r"token (\w+)", made.stdout).group(1)


def test_a_live_viewer_that_stops_reading_is_closed_and_others_are_served(hub):
    token = api_token(hub)
    device = hub.provision(1, prefix="viewed-")[0]

    def viewer():
        socket_ = RawWebSocket(hub.http_port, f"/ws/hub/?token={token}")
        socket_.send(json.dumps({"type": "subscribe", "device_type": "weatherstation"}).encode(), opcode=0x1)
        assert json.loads(socket_.frame()[1])["type"] == "subscribed"
        return socket_

    stalled = viewer()  # reads nothing from now on
    attentive = viewer()
    events = []
    finished = threading.Event()

    def read_events():
        while not finished.is_set():
            try:
                opcode, payload = attentive.frame()
            except (ConnectionError, OSError):
                return
            if opcode == 0x1:
                events.append(json.loads(payload)["type"])

    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=device["client_id"])
    publisher.username_pw_set(device["mqtt_username"], device["mqtt_password"])
    publisher.connect("127.0.0.1", hub.mqtt_port)
    publisher.loop_start()
    try:
        # More events (about 150 bytes each) than the viewer's queue (REALTIME_QUEUE_SIZE, 1000) and what the
        # sockets between hold (loopback's send buffer grows to a few MB).
        sent = 30_000
        for n in range(sent):
            publisher.publish(device["topics"]["data"], json.dumps({"temperature": n % 40}), qos=0)
            if n % 500 == 499:
                time.sleep(0.02)
        deadline = time.monotonic() + 90
        while events.count("reading") < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events.count("reading") == sent, "the viewer that reads missed events"
        assert metric(hub, "hubserver_realtime_slow_viewers_total") >= 1
        stalled.sock.settimeout(30)
        assert stalled.read_until_closed() in (4429, None)  # too_slow, or cut once it could not take that
        assert metric(hub, "hubserver_websocket_send_paused_total", endpoint="live") >= 1
        attentive.send(json.dumps({"type": "ping", "request_id": "still-here"}).encode(), opcode=0x1)
        deadline = time.monotonic() + 10
        while "pong" not in events and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "pong" in events
    finally:
        finished.set()
        publisher.disconnect()
        publisher.loop_stop()
        stalled.close()
        attentive.close()
