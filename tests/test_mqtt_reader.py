"""The hub's MQTT reader (plugins/reader.py) as a device sees it on the wire: raw MQTT 3.1.1 packets in,
PUBACKs and rows out."""

import asyncio
import json
import struct
import threading

import pytest
from channels.db import database_sync_to_async

from tests.conftest import provision_device
from tests.mqtt import RawClient, _length, _string
from tests.testapp.models import ThermometerMessage, ThermometerReading

pytestmark = pytest.mark.django_db(transaction=True)

PINGREQ = bytes([0xC0, 0])


def publish_packet(topic, payload, qos=1, packet_id=None, retain=False):
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + _length(len(body)) + body


@database_sync_to_async
def stored(model, **filters):
    return list(model.objects.filter(**filters).order_by("pk"))


async def device(hub, device_id):
    _, credentials = await provision_device("thermometer", device_id)
    client = RawClient(hub.engine.port)
    username = credentials["mqtt_username"]
    assert (await client.connect(username, username, credentials["mqtt_password"]))[0] == 0
    await asyncio.sleep(0.2)  # the connect's status change commits before the test starts
    return client


async def pubacks(client, count, timeout=10.0):
    ids = []
    for _ in range(count):
        packet_type, data = await client.read_packet(timeout)
        assert packet_type == 4, f"expected a PUBACK, got packet type {packet_type}"
        ids.append(struct.unpack("!H", data)[0])
    return ids


async def test_pipelined_publishes_are_all_stored_and_acknowledged_in_order(hub):
    client = await device(hub, "r-1")
    topic = "things/thermometer/r-1/data"
    client.writer.write(
        b"".join(publish_packet(topic, b'{"uptime": %d}' % n, packet_id=n + 1) for n in range(50))
    )  # one TCP write: the reader must split it into 50 packets
    assert await pubacks(client, 50) == list(range(1, 51))
    readings = await stored(ThermometerReading)
    assert [r.uptime for r in readings] == list(range(50))
    client.close()


async def test_an_immediate_answer_does_not_overtake_a_message_waiting_for_its_commit(hub, monkeypatch):
    """MQTT-4.6.0-2: PUBACKs go out in the order the PUBLISHes came in, even when a later one (refused by
    the ACL: acknowledged, not stored) is answered before an earlier one has committed."""
    from hubserver.routing import router as router_module

    client = await device(hub, "r-2")
    release = threading.Event()
    original = router_module.write_batch

    def slow_write_batch(works, cache):
        release.wait(10)
        return original(works, cache)

    monkeypatch.setattr(router_module, "write_batch", slow_write_batch)
    client.writer.write(publish_packet("things/thermometer/r-2/data", b'{"uptime": 1}', packet_id=7))
    client.writer.write(publish_packet("things/thermometer/someone-else/data", b'{"uptime": 2}', packet_id=8))
    with pytest.raises(TimeoutError):
        await client.read_packet(timeout=0.5)  # nothing may be acknowledged before the first commit
    release.set()
    assert await pubacks(client, 2) == [7, 8]
    assert [m.topic for m in await stored(ThermometerMessage)] == ["things/thermometer/r-2/data"]
    client.close()


async def test_large_payloads_with_a_three_byte_remaining_length(hub):
    client = await device(hub, "r-3")
    label = "x" * 20_000  # remaining length > 16,383: three length bytes
    client.writer.write(
        publish_packet("things/thermometer/r-3/data", json.dumps({"label": label}).encode(), packet_id=1)
    )
    assert await pubacks(client, 1) == [1]
    (reading,) = await stored(ThermometerReading)
    assert reading.label == label
    client.close()


async def test_qos0_is_stored_and_never_acknowledged(hub):
    client = await device(hub, "r-4")
    client.writer.write(publish_packet("things/thermometer/r-4/data", b'{"uptime": 5}', qos=0) + PINGREQ)
    packet_type, _ = await client.read_packet()
    assert packet_type == 13  # PINGRESP first: no PUBACK for QoS 0
    for _ in range(100):
        if await stored(ThermometerReading):
            break
        await asyncio.sleep(0.05)
    assert [r.uptime for r in await stored(ThermometerReading)] == [5]
    client.close()


async def test_a_malformed_packet_closes_only_its_connection(hub):
    broken = await device(hub, "r-5")
    healthy = await device(hub, "r-6")
    broken.writer.write(bytes([0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))  # a remaining length of five bytes
    assert await broken.closed()
    healthy.writer.write(publish_packet("things/thermometer/r-6/data", b'{"uptime": 6}', packet_id=3))
    assert await pubacks(healthy, 1) == [3]
    healthy.close()


async def test_retained_and_qos2_publishes_still_take_the_full_path(hub):
    """RETAIN and QoS 2 go through amqtt's own flows: retained messages are kept, QoS 2 completes."""
    client = await device(hub, "r-7")
    client.writer.write(
        publish_packet("things/thermometer/r-7/status", b'{"status": "online"}', packet_id=4, retain=True)
    )
    assert await pubacks(client, 1) == [4]
    assert "things/thermometer/r-7/status" in hub.engine.broker._retained_messages
    client.writer.write(publish_packet("things/thermometer/r-7/data", b'{"uptime": 9}', qos=2, packet_id=5))
    packet_type, data = await client.read_packet()
    assert (packet_type, struct.unpack("!H", data)[0]) == (5, 5)  # PUBREC
    client.writer.write(bytes([0x62, 2]) + struct.pack("!H", 5))  # PUBREL
    packet_type, data = await client.read_packet()
    assert (packet_type, struct.unpack("!H", data)[0]) == (7, 5)  # PUBCOMP
    assert [r.uptime for r in await stored(ThermometerReading)] == [9]
    client.close()


async def test_a_burst_of_qos2_publishes_beyond_max_inflight_is_answered(hub):
    """More QoS 2 PUBLISHes in one write than MAX_INFLIGHT_MESSAGES (32): each flow parks after its PUBREC
    until the PUBREL the reader has yet to read, so parked flows must not count as busy ones."""
    client = await device(hub, "r-8")
    topic = "things/thermometer/r-8/data"
    client.writer.write(
        b"".join(publish_packet(topic, b'{"uptime": %d}' % n, qos=2, packet_id=n) for n in range(1, 41))
    )
    for _ in range(40):
        packet_type, _ = await client.read_packet()
        assert packet_type == 5  # PUBREC
    client.writer.write(b"".join(bytes([0x62, 2]) + struct.pack("!H", n) for n in range(1, 41)))
    for _ in range(40):
        packet_type, _ = await client.read_packet()
        assert packet_type == 7  # PUBCOMP
    assert len(await stored(ThermometerReading)) == 40
    client.close()
