"""MQTT 3.1.1 rules whose breach closes the connection ([MQTT-4.8.0-1] unless a rule says more), each test
naming its rule. A service client (amqtt's own path) and a device (the reader's short path) are both tried
where the packet is a PUBLISH. The ``broker`` tests run against stock amqtt too (strict xfail).
"""

import struct

import pytest

from tests.conftest import provision_device
from tests.mqtt import RawClient, _length, _string
from tests.test_mqtt_reader import publish_packet

pytestmark = pytest.mark.django_db(transaction=True)


def packet(first, body):
    return bytes([first]) + _length(len(body)) + body


VIOLATIONS = [
    pytest.param(packet(0x36, _string("lab/x") + b"\x00\x01x"), id="MQTT-3.3.1-4 publish qos 3"),
    pytest.param(publish_packet("lab/x", b"x", qos=1, packet_id=0), id="MQTT-2.3.1-1 publish packet id 0"),
    pytest.param(publish_packet("lab/+", b"x", qos=1, packet_id=1), id="MQTT-3.3.2-2 publish wildcard +"),
    pytest.param(publish_packet("lab/#", b"x", qos=0), id="MQTT-3.3.2-2 publish wildcard #"),
    pytest.param(publish_packet("lab/\0x", b"x", qos=1, packet_id=1), id="MQTT-4.7.3-2 publish NUL"),
    pytest.param(publish_packet("", b"x", qos=1, packet_id=1), id="MQTT-4.7.3-1 publish empty topic"),
    pytest.param(packet(0x82, struct.pack("!H", 1)), id="MQTT-3.8.3-3 subscribe without topics"),
    pytest.param(packet(0x80, struct.pack("!H", 1) + _string("lab/a") + b"\x00"), id="MQTT-3.8.1-1 subscribe flags"),
    pytest.param(packet(0x82, struct.pack("!H", 0) + _string("lab/a") + b"\x00"), id="MQTT-2.3.1-1 subscribe id 0"),
    pytest.param(packet(0x82, struct.pack("!H", 1) + _string("lab/a") + b"\x03"), id="MQTT-3-8.3-4 subscribe qos 3"),
    pytest.param(packet(0xA2, struct.pack("!H", 1)), id="MQTT-3.10.3-2 unsubscribe without topics"),
    pytest.param(packet(0xA0, struct.pack("!H", 1) + _string("lab/a")), id="MQTT-3.10.1-1 unsubscribe flags"),
    pytest.param(bytes([0x20, 2, 0, 0]), id="MQTT-4.8.0-1 client sends CONNACK"),
    pytest.param(bytes([0x90, 3, 0, 1, 0]), id="MQTT-4.8.0-1 client sends SUBACK"),
    pytest.param(bytes([0xB0, 2, 0, 1]), id="MQTT-4.8.0-1 client sends UNSUBACK"),
    pytest.param(bytes([0xD0, 0]), id="MQTT-4.8.0-1 client sends PINGRESP"),
]


# Stock amqtt closes on these too (on reserved types not always: it raced), so they run on the hub alone.
CLOSED_BY_STOCK_TOO = [
    pytest.param(bytes([0x00, 0]), id="MQTT-4.8.0-1 reserved type 0"),
    pytest.param(bytes([0xF0, 0]), id="MQTT-4.8.0-1 reserved type 15"),
    pytest.param(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01z"), id="MQTT-3.1.0-2 second CONNECT"),
]


@pytest.mark.parametrize("violation", VIOLATIONS)
async def test_a_service_client_breaking_a_rule_is_disconnected(broker, service, violation):
    await _closed_after(broker, service, violation)


@pytest.mark.parametrize("broker", ["hub"], indirect=True)
@pytest.mark.parametrize("violation", CLOSED_BY_STOCK_TOO)
async def test_reserved_types_and_a_second_connect_always_disconnect(broker, service, violation):
    for _ in range(20):  # stock amqtt failed to close on reserved types in about one try in ten
        await _closed_after(broker, service, violation)


async def _closed_after(broker, service, violation):
    raw = RawClient(broker.port)
    try:
        assert (await raw.connect("strict", *service))[0] == 0
        raw.writer.write(violation)
        assert await raw.closed(timeout=3), "the connection must be closed"
    finally:
        raw.close()


DEVICE_PUBLISHES = [
    pytest.param(lambda t: publish_packet(t, b"{}", qos=1, packet_id=0), id="MQTT-2.3.1-1 packet id 0"),
    pytest.param(lambda t: publish_packet(t.rsplit("/", 1)[0] + "/+", b"{}", qos=1, packet_id=1), id="MQTT-3.3.2-2 +"),
    pytest.param(lambda t: publish_packet(t + "/#", b"{}", qos=0), id="MQTT-3.3.2-2 #"),
    pytest.param(lambda t: publish_packet(t + "\0", b"{}", qos=1, packet_id=1), id="MQTT-4.7.3-2 NUL"),
    pytest.param(lambda t: publish_packet("", b"{}", qos=1, packet_id=1), id="MQTT-4.7.3-1 empty"),
    pytest.param(lambda t: bytes([0x32, 3, 0, 9, 0x61]), id="MQTT-4.8.0-1 topic longer than the packet"),
]


@pytest.mark.parametrize("build", DEVICE_PUBLISHES)
async def test_a_device_publish_breaking_a_rule_closes_without_acknowledgement(hub, build):
    """The reader's short path applies the same rules, and acknowledges nothing it closes for."""
    _, credentials = await provision_device("thermometer", "strict-1")
    raw = RawClient(hub.engine.port)
    username = credentials["mqtt_username"]
    try:
        assert (await raw.connect(username, username, credentials["mqtt_password"]))[0] == 0
        raw.writer.write(build("things/thermometer/strict-1/data"))
        assert await raw.closed(timeout=3)
    finally:
        raw.close()


async def test_a_subscription_is_still_answered_after_a_refused_one(hub, service):
    """Rules are about malformed packets: a well-formed filter the ACL refuses still gets 0x80 and the
    connection stays up (checked against the strictness above)."""
    raw = RawClient(hub.engine.port)
    try:
        assert (await raw.connect("polite", *service))[0] == 0
        assert await raw.subscribe("$SYS/#", qos=1, packet_id=3) in (0x80, 1)
        raw.writer.write(bytes([0xC0, 0]))
        assert (await raw.read_packet(timeout=3))[0] == 13
    finally:
        raw.close()


async def test_a_bystander_is_served_while_violators_are_closed(hub, service):
    bystander = RawClient(hub.engine.port)
    assert (await bystander.connect("bystander", *service))[0] == 0
    try:
        for index, violation in enumerate(VIOLATIONS + CLOSED_BY_STOCK_TOO):
            raw = RawClient(hub.engine.port)
            assert (await raw.connect(f"v{index}", *service))[0] == 0
            raw.writer.write(violation.values[0])
            assert await raw.closed(timeout=3)
            raw.close()
        bystander.writer.write(bytes([0xC0, 0]))
        assert (await bystander.read_packet(timeout=3))[0] == 13
    finally:
        bystander.close()
