"""Fuzzing the MQTT reader and the router in-process (hypothesis): random bytes, mutated valid packets and
random payloads from an authenticated device. Whatever one connection sends, at most that connection is
closed, the hub keeps serving a bystander on another connection, and nothing it answers is malformed.

The hub runs in a thread with its own event loop, so that hypothesis drives plain blocking sockets.
Bounded: a few hundred examples, each a connection of its own.
"""

import asyncio
import contextlib
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mqtt import _length, _string, free_port
from tests.test_mqtt_reader import publish_packet

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOPIC = "things/thermometer/fuzz-1/data"
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class ThreadedHub:
    """The embedded engine on an event loop of its own thread."""

    def __init__(self):
        from hubserver.hub import Hub

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.hub = Hub(embedded={"host": "127.0.0.1", "port": self.port})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.hub.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.hub.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def connect(port, username, password, client_id=None):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    body = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += _string(client_id or username) + _string(username) + _string(password)
    sock.sendall(bytes([0x10]) + _length(len(body)) + body)
    assert recv_exactly(sock, 4)[:2] == b"\x20\x02"
    return sock


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def read_packets(sock, timeout):
    """Whatever the hub sends until it closes or is quiet for ``timeout``: each packet must be well-formed."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    packets, index = [], 0
    while index < len(data):
        first, length, shift = data[index], 0, 0
        index += 1
        while True:
            assert index < len(data), f"a truncated packet header in {data!r}"
            byte = data[index]
            index += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        assert index + length <= len(data), f"a truncated packet in {data!r}"
        packets.append((first >> 4, data[index : index + length]))
        index += length
    return packets


VALID = [
    publish_packet(TOPIC, b'{"temperature": 20.5}', qos=0),
    publish_packet(TOPIC, b'{"temperature": 21.5}', qos=1, packet_id=1),
    publish_packet(TOPIC, b'{"uptime": 3}', qos=2, packet_id=2),
    publish_packet(TOPIC.replace("data", "status"), b'{"status": "online"}', qos=1, packet_id=3, retain=True),
    bytes([0x82])
    + _length(2 + len(_string("things/thermometer/fuzz-1/cmd")) + 1)
    + struct.pack("!H", 4)
    + _string("things/thermometer/fuzz-1/cmd")
    + b"\x01",
    bytes([0xA2])
    + _length(2 + len(_string("things/thermometer/fuzz-1/cmd")))
    + struct.pack("!H", 5)
    + _string("things/thermometer/fuzz-1/cmd"),
    bytes([0x62, 2, 0, 2]),  # PUBREL
    bytes([0x40, 2, 0, 9]),  # PUBACK for nothing
    bytes([0xC0, 0]),  # PINGREQ
]


@st.composite
def mutated(draw):
    packet = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert"]))
        if kind == "flip" and packet:
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
        elif kind == "truncate" and packet:
            del packet[draw(st.integers(0, len(packet) - 1)) :]
        else:
            at = draw(st.integers(0, len(packet)))
            packet[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(packet)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
payloads = (
    st.binary(max_size=200)
    | st.dictionaries(
        st.sampled_from(["temperature", "uptime", "door_open", "label", "timestamp", "readings"]),
        json_values,
        max_size=5,
    ).map(lambda d: __import__("json").dumps(d).encode())
    | st.sampled_from([b"1e-400", b'{"temperature": 1e999}', b'{"timestamp": "9999-12-31T23:59:59Z"}', b"\x00" * 8])
)


@pytest.fixture
def fuzzed_hub(transactional_db):
    from hubserver import registry
    from hubserver.access.provisioning import provision

    model = registry.get_models("thermometer")[0]
    credentials = {}
    for device_id in ("fuzz-1", "bystander-1"):
        device, _ = model.objects.get_or_create(device_id=device_id)
        credentials[device_id] = provision(device)
    with ThreadedHub() as hub:
        bystander = connect(
            hub.port, credentials["bystander-1"]["mqtt_username"], credentials["bystander-1"]["mqtt_password"]
        )
        yield hub, credentials["fuzz-1"], bystander
        bystander.close()


def check(hub, credentials, bystander, data):
    sock = connect(hub.port, credentials["mqtt_username"], credentials["mqtt_password"])
    with contextlib.suppress(ConnectionError):  # closed already: fine
        sock.sendall(data)
    read_packets(sock, 0.15)  # answers, if any, are well-formed packets
    sock.close()
    bystander.sendall(bytes([0xC0, 0]))
    bystander.settimeout(5)
    assert recv_exactly(bystander, 2) == bytes([0xD0, 0]), "the bystander is still served"
    assert hub.thread.is_alive()


def test_random_bytes_close_at_most_their_own_connection(fuzzed_hub):
    hub, credentials, bystander = fuzzed_hub

    @FUZZ
    @given(st.binary(min_size=1, max_size=300))
    def run(data):
        check(hub, credentials, bystander, data)

    run()


def test_mutated_valid_packets_close_at_most_their_own_connection(fuzzed_hub):
    hub, credentials, bystander = fuzzed_hub

    @FUZZ
    @given(st.lists(mutated(), min_size=1, max_size=4))
    def run(packets):
        check(hub, credentials, bystander, b"".join(packets))

    run()


def test_random_payloads_are_acknowledged_or_refused_never_crash(fuzzed_hub):
    hub, credentials, bystander = fuzzed_hub

    @FUZZ
    @given(payloads)
    def run(payload):
        sock = connect(hub.port, credentials["mqtt_username"], credentials["mqtt_password"])
        sock.sendall(publish_packet(TOPIC, payload, qos=1, packet_id=7))
        sock.settimeout(10)
        assert recv_exactly(sock, 4) == bytes([0x40, 2, 0, 7]), "stored (perhaps as failed): acknowledged"
        sock.close()
        bystander.sendall(bytes([0xC0, 0]))
        assert recv_exactly(bystander, 2) == bytes([0xD0, 0])

    run()
