"""The MQTT limits of docs/limits.md as a client meets them: oversize payloads, quotas, a client's share of
the writer queue, a client that reads nothing, and what /metrics counts. Small and bounded: a few hundred
packets, a few seconds."""

import asyncio
import logging
import socket
import struct
import threading

import pytest

from tests.conftest import provision_device
from tests.mqtt import Client, RawClient, _length, _string, until
from tests.test_metrics import scrape, value
from tests.test_mqtt_reader import PINGREQ, pubacks, publish_packet, stored
from tests.testapp.models import ThermometerMessage, ThermometerReading

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def engine(hub):
    """The running hub (its embedded engine is ``engine.engine``; /metrics reads its counters)."""
    return hub


async def device(hub, device_id):
    _, credentials = await provision_device("thermometer", device_id)
    client = RawClient(hub.engine.port)
    username = credentials["mqtt_username"]
    assert (await client.connect(username, username, credentials["mqtt_password"]))[0] == 0
    await asyncio.sleep(0.2)
    return client


async def rows(model, expected, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        found = await stored(model)
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.05)
    return await stored(model)


async def ping(client):
    client.writer.write(PINGREQ)
    packet_type, _ = await client.read_packet(timeout=5)
    return packet_type == 13


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PAYLOAD_SIZE": 1000}], indirect=True)
async def test_a_payload_over_max_payload_size_closes_the_connection_unacknowledged(engine):
    """Not acknowledged, not stored, counted; what came before it is stored and acknowledged."""
    client = await device(engine, "big-1")
    topic = "things/thermometer/big-1/data"
    client.writer.write(publish_packet(topic, b'{"uptime": 1}', packet_id=1))
    client.writer.write(publish_packet(topic, b'{"label": "%s"}' % (b"x" * 1000), packet_id=2))
    assert await pubacks(client, 1) == [1]
    assert await client.closed(timeout=3), "the oversize PUBLISH must close the connection"
    assert [r.uptime for r in await stored(ThermometerReading)] == [1]
    assert len(await stored(ThermometerMessage)) == 1
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_closed_total", reason="payload_too_large") == 1


@pytest.mark.parametrize(
    "hub_settings_override", [{"CLIENT_MESSAGE_RATE": 50, "CLIENT_MESSAGE_BURST": 10}], indirect=True
)
async def test_a_device_over_its_message_quota_is_slowed_down_and_loses_nothing(engine):
    flooder = await device(engine, "flood-1")
    bystander = await device(engine, "calm-1")
    topic = "things/thermometer/flood-1/data"
    flooder.writer.write(b"".join(publish_packet(topic, b'{"uptime": %d}' % n, qos=0) for n in range(60)))
    assert await ping(bystander), "a bystander is served while the flooder is paused"
    readings = await rows(ThermometerReading, 60)
    assert sorted(r.uptime for r in readings) == list(range(60)), "throttled, not dropped"
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_throttled_total", reason="messages") >= 1
    assert value(samples, "hubserver_mqtt_throttled_seconds_total") > 0
    assert engine.client_limits("thermometer.flood-1").get("throttled:messages", 0) >= 1
    assert not engine.client_limits("thermometer.calm-1")


async def test_a_device_type_meta_quota_overrides_the_setting(engine):
    from hubserver.plugins.limits import Limits

    from hubserver.registry import registry

    thermometer = registry.get("thermometer")
    original = getattr(thermometer._meta, "quota", None)
    thermometer._meta.quota = {"message_rate": 5000, "message_burst": 6000}
    try:
        limits = Limits.from_settings()
        quota = limits.quota_for(_device_principal("thermometer", "meta-1"))
        assert (quota.message_rate, quota.message_burst) == (5000, 6000)
        assert quota.byte_rate == limits.quota.byte_rate, "what the Meta does not say comes from the settings"
    finally:
        thermometer._meta.quota = original


def _device_principal(type_name, device_id):
    from hubserver.access.principals import DevicePrincipal

    return DevicePrincipal(
        type_name=type_name, device_id=device_id, device_pk=None, mqtt_username=f"{type_name}.{device_id}"
    )


@pytest.mark.parametrize("hub_settings_override", [{"CLIENT_QUEUE_SHARE": 5}], indirect=True)
async def test_a_client_has_a_share_of_the_writer_queue_and_waits_beyond_it(engine, monkeypatch):
    """While the database is slow, one client's messages wait in its socket, not in the shared queue."""
    from hubserver.routing import router as router_module

    flooder = await device(engine, "share-1")
    release = threading.Event()
    original = router_module.write_batch

    def slow_write_batch(works, cache):
        release.wait(10)
        return original(works, cache)

    monkeypatch.setattr(router_module, "write_batch", slow_write_batch)
    topic = "things/thermometer/share-1/data"
    flooder.writer.write(b"".join(publish_packet(topic, b'{"uptime": %d}' % n, qos=0) for n in range(40)))
    await asyncio.sleep(0.5)
    queued = engine.router.stats()["queued"]
    assert queued <= 5, f"{queued} messages of one client in the writer queue (its share is 5)"
    release.set()
    readings = await rows(ThermometerReading, 40)
    assert sorted(r.uptime for r in readings) == list(range(40))
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_throttled_total", reason="queue_share") >= 1


@pytest.mark.parametrize("hub_settings_override", [{"CLIENT_MESSAGE_RATE": 0}], indirect=True)
async def test_a_client_that_reads_nothing_is_not_read_either(engine):
    """300,000 PINGREQs from a client that never reads its PINGRESPs: once what the kernel holds is full, the
    hub stops reading it instead of buffering the answers, handles its packets without a task each, and a
    bystander is served meanwhile. (Both sockets' kernel buffers are made small so that the hub's is what
    fills; no message quota, which would slow the PINGREQs down long before, see the next test.)"""
    flooder = await device(engine, "deaf-1")
    bystander = await device(engine, "calm-2")
    (handler,) = [h for s, h in engine.engine.broker._sessions.values() if s.client_id == "thermometer.deaf-1"]
    handler._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    flooder.writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.writer.transport.set_write_buffer_limits(high=4 * 1024 * 1024)
    flooder.writer.write(PINGREQ * 300_000)
    counters = engine.engine.broker.limit_counters
    await until(lambda: counters.throttled["write_buffer"] >= 1, timeout=30, message="the reader to pause")
    assert await ping(bystander)
    assert handler._transport.get_write_buffer_size() < 256 * 1024
    assert not handler._tasks, "control packets are handled without a task each"
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_throttled_total", reason="write_buffer") >= 1
    flooder.close()


async def test_a_pingreq_flood_is_slowed_down_by_the_message_quota_and_others_are_served(engine, caplog):
    """A device sends 50,000 PINGREQs at once and reads none of the answers. PINGREQs count against its
    message quota (the defaults: 500/s, a burst of 2,000) as PUBLISHes do: past the burst its socket is read
    at the quota's pace, so it cannot keep the loop (and the database writer) from everyone else. A paho
    device publishing meanwhile gets every PUBACK and every message stored; the flooder is counted and
    logged once, and what the hub buffers for it stays small."""
    caplog.set_level(logging.INFO, logger="hubserver.mqtt")
    flooder = await device(engine, "ping-1")
    _, credentials = await provision_device("thermometer", "calm-3")
    innocent = Client(
        engine.engine.port, "thermometer.calm-3", credentials["mqtt_username"], credentials["mqtt_password"]
    )
    await innocent.connect()
    try:
        (handler,) = [h for s, h in engine.engine.broker._sessions.values() if s.client_id == "thermometer.ping-1"]
        flooder.writer.write(PINGREQ * 50_000)
        counters = engine.engine.broker.limit_counters
        await until(lambda: counters.throttled["messages"] >= 1, timeout=10, message="the flooder to be throttled")
        for n in range(20):
            await innocent.publish("things/thermometer/calm-3/data", b'{"uptime": %d}' % n)
        readings = await rows(ThermometerReading, 20)
        assert sorted(r.uptime for r in readings) == list(range(20))
        assert handler._transport.get_write_buffer_size() < 256 * 1024, "the answers it does not read are bounded"
        assert handler._reader_task is not None and not handler._reader_task.done(), "slowed down, not closed"
        assert engine.client_limits("thermometer.ping-1").get("throttled:messages", 0) >= 1
        assert not engine.client_limits("thermometer.calm-3")
        samples = await scrape()
        assert value(samples, "hubserver_mqtt_throttled_total", reason="messages") >= 1
        logged = [r for r in caplog.records if "ping-1" in r.getMessage() and "quota" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
    finally:
        flooder.close()
        await innocent.disconnect()


@pytest.mark.parametrize(
    "hub_settings_override", [{"CLIENT_MESSAGE_RATE": 100, "CLIENT_MESSAGE_BURST": 200}], indirect=True
)
async def test_acknowledgements_of_nothing_are_ignored_counted_and_logged_once(engine, caplog):
    """PUBACKs, PUBRECs, PUBRELs and PUBCOMPs for packet ids the hub never sent answer nothing: each one used
    to cost a warning line (amqtt's); now they count against the message quota like the requests they are,
    and the log says it once. The connection stays, and a bystander is served."""
    caplog.set_level(logging.INFO)
    flooder = await device(engine, "acks-1")
    bystander = await device(engine, "calm-4")
    flood = b"".join(
        bytes([kind, 2]) + struct.pack("!H", n % 65535 + 1)
        for n in range(1000)
        for kind in (0x40, 0x50, 0x62, 0x70)  # PUBACK, PUBREC, PUBREL, PUBCOMP
    )
    flooder.writer.write(flood)
    counters = engine.engine.broker.limit_counters
    await until(lambda: counters.throttled["messages"] >= 1, timeout=10, message="the flooder to be throttled")
    topic = "things/thermometer/calm-4/data"
    bystander.writer.write(publish_packet(topic, b'{"uptime": 4}', packet_id=4))
    assert await pubacks(bystander, 1) == [4]
    assert [r.uptime for r in await rows(ThermometerReading, 1)] == [4]
    assert not await flooder.closed(timeout=0.2), "ignored, not a reason to close"
    assert engine.client_limits("thermometer.acks-1").get("throttled:messages", 0) >= 1
    about = [r.getMessage() for r in caplog.records if "acks-1" in r.getMessage() or "Id" in r.getMessage()]
    assert not [m for m in about if "unknown pending" in m], "no line per acknowledgement"
    assert len([m for m in about if "for nothing the hub sent" in m]) == 1, about
    flooder.close()
    bystander.close()


@pytest.mark.parametrize("hub_settings_override", [{"MAX_AWAITING_REL": 3}], indirect=True)
async def test_qos2_messages_waiting_for_pubrel_are_capped(engine):
    """EMQX's max_awaiting_rel: the fourth QoS 2 PUBLISH without PUBREL closes the connection."""
    client = await device(engine, "rel-1")
    topic = "things/thermometer/rel-1/data"
    for packet_id in range(1, 4):
        client.writer.write(publish_packet(topic, b'{"uptime": %d}' % packet_id, qos=2, packet_id=packet_id))
        packet_type, data = await client.read_packet()
        assert (packet_type, struct.unpack("!H", data)[0]) == (5, packet_id)  # PUBREC
    client.writer.write(publish_packet(topic, b'{"uptime": 4}', qos=2, packet_id=4))
    assert await client.closed(timeout=3)
    assert len(await rows(ThermometerReading, 3)) == 3, "the three acknowledged (PUBREC) messages are stored"
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_closed_total", reason="awaiting_rel") == 1


@pytest.mark.parametrize("hub_settings_override", [{"MAX_CONNECT_SIZE": 200_000}], indirect=True)
async def test_what_a_client_chose_is_clipped_in_the_log(hub, caplog):
    """A CONNECT with a 60 KB client id and username costs the log a short line."""
    caplog.set_level(logging.INFO)
    raw = RawClient(hub.engine.port)
    raw.reader, raw.writer = await asyncio.open_connection("127.0.0.1", hub.engine.port)
    huge = "x" * 60_000
    body = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _string(huge) + _string(huge) + _string("pw")
    raw.writer.write(bytes([0x10]) + _length(len(body)) + body)
    try:
        assert await raw.closed(timeout=5)
    finally:
        raw.close()
    assert caplog.records, "the refusal is logged"
    assert max(len(record.getMessage()) for record in caplog.records) < 1000


@pytest.mark.parametrize(
    "hub_settings_override", [{"CLIENT_MESSAGE_RATE": 50, "CLIENT_MESSAGE_BURST": 5}], indirect=True
)
async def test_the_admin_shows_which_limits_a_device_hit(engine, admin_user):
    from django.test import AsyncClient

    from tests.test_admin import url

    flooder = await device(engine, "shown-1")
    topic = "things/thermometer/shown-1/data"
    flooder.writer.write(b"".join(publish_packet(topic, b'{"uptime": %d}' % n, qos=0) for n in range(20)))
    await rows(ThermometerReading, 20)
    device_row = (await stored(ThermometerReading))[0].device_id
    browser = AsyncClient()
    await browser.aforce_login(admin_user)
    response = await browser.get(url(ThermometerReading._meta.get_field("device").related_model, "change", device_row))
    assert response.status_code == 200
    assert "MQTT limits hit" in response.content.decode()
    assert "throttled messages: " in response.content.decode()


# --- MQTT over WebSocket: the ASGI app with the in-process broker, frames fed as daphne would -----------


class FakeSocket:
    """The ASGI side of one WebSocket: frames the test queues, and what the app sends back."""

    def __init__(self):
        self.incoming = asyncio.Queue()
        self.sent = []

    async def receive(self):
        return await self.incoming.get()

    async def send(self, message):
        self.sent.append(message)

    def frame(self, data):
        self.incoming.put_nowait({"type": "websocket.receive", "bytes": data})

    def closed_with(self):
        return next((m.get("code") for m in self.sent if m["type"] == "websocket.close"), None)


def start_websocket(engine):
    from hubserver.plugins.websocket import mqtt_websocket_app

    socket_ = FakeSocket()
    socket_.incoming.put_nowait({"type": "websocket.connect"})
    scope = {"type": "websocket", "subprotocols": ["mqtt"], "client": ("127.0.0.1", 5555)}
    app = asyncio.ensure_future(mqtt_websocket_app(lambda: engine.engine)(scope, socket_.receive, socket_.send))
    return socket_, app


async def test_a_websocket_frame_bigger_than_a_connect_before_connect_closes_it(engine):
    socket_, app = start_websocket(engine)
    socket_.frame(bytes([0x10]) + b"\xff" * 100_000)  # no CONNECT is 100 KB
    await asyncio.wait_for(app, 10)
    assert socket_.closed_with() == 1009
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_closed_total", reason="connect_too_large") == 1


@pytest.mark.parametrize(
    "hub_settings_override",
    [{"CLIENT_MESSAGE_RATE": 200, "CLIENT_MESSAGE_BURST": 10, "MAX_PACKET_SIZE": 65536}],
    indirect=True,
)
async def test_a_websocket_client_faster_than_its_quota_is_not_read_and_loses_nothing(engine):
    """Frames pile up in daphne's queue (here: the test's) instead of in the hub: the app stops receiving."""
    _, credentials = await provision_device("thermometer", "ws-1")
    username = credentials["mqtt_username"]
    body = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _string(username)
    body += _string(username) + _string(credentials["mqtt_password"])
    socket_, app = start_websocket(engine)
    socket_.frame(bytes([0x10]) + _length(len(body)) + body)
    await until(lambda: any(m.get("bytes", b"")[:1] == b"\x20" for m in socket_.sent), message="CONNACK")
    topic = "things/thermometer/ws-1/data"
    padding = b"x" * 1000
    for start in range(0, 300, 60):  # 5 frames of 60 messages, each frame ~60 KB: more than MAX_PACKET_SIZE
        socket_.frame(
            b"".join(
                publish_packet(topic, b'{"uptime": %d, "label": "%s"}' % (n, padding), qos=0)
                for n in range(start, start + 60)
            )
        )
    await asyncio.sleep(0.5)
    assert socket_.incoming.qsize() >= 1, "frames wait in the server's queue while the client is over its quota"
    messages = await rows(ThermometerMessage, 300, timeout=15)
    assert len(messages) == 300, "throttled, not dropped"
    samples = await scrape()
    assert value(samples, "hubserver_mqtt_throttled_total", reason="messages") >= 1
    assert value(samples, "hubserver_mqtt_throttled_total", reason="websocket_buffer") >= 1
    socket_.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(app, 10)


async def test_a_device_with_an_empty_client_id_is_accepted_under_its_username(hub):
    """README: a device connects with its username as client id, or an empty one."""
    _, credentials = await provision_device("thermometer", "anon-id-1")
    client = RawClient(hub.engine.port)
    try:
        code, _ = await client.connect("", credentials["mqtt_username"], credentials["mqtt_password"])
        assert code == 0
        assert "thermometer.anon-id-1" in hub.engine.broker._sessions
        client.writer.write(publish_packet("things/thermometer/anon-id-1/data", b'{"uptime": 3}', packet_id=9))
        assert await pubacks(client, 1) == [9]
    finally:
        client.close()


@pytest.mark.parametrize(
    "hub_settings_override", [{"MAX_INFLIGHT_MESSAGES": 2, "MAX_QUEUED_MESSAGES": 3}], indirect=True
)
async def test_deliveries_beyond_the_queue_are_dropped_and_counted(engine, service):
    raw = RawClient(engine.engine.port)
    try:
        assert (await raw.connect("never-acks", *service))[0] == 0
        assert await raw.subscribe("lab/queue", qos=1) == 1
        for n in range(10):
            await engine.engine.publish("lab/queue", b"%d" % n, qos=1)
        await until(lambda: engine.engine.stats()["dropped_deliveries"]["queue_full"] >= 5, message="drops")
        samples = await scrape()
        assert value(samples, "hubserver_mqtt_dropped_total", reason="queue_full") == 5  # 2 sent, 3 waiting
    finally:
        raw.close()
