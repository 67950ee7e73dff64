"""The message router end to end: topics and payloads in, real rows, signals and hooks out."""

import asyncio
import logging
import threading
from datetime import UTC, datetime, timedelta
from datetime import timezone as fixed_offset

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from hubserver import signals
from hubserver.exceptions import ConfigurationError
from hubserver.routing import BatchCommitError, MessageRouter, Refusal, RouterNotRunning
from hubserver.routing import batch as batch_module
from hubserver.routing import router as router_module
from tests.testapp import hooks
from tests.testapp.devices import Hygrometer, Thermometer
from tests.testapp.models import (
    HygrometerDevice,
    HygrometerMessage,
    HygrometerReading,
    ThermometerDevice,
    ThermometerMessage,
    ThermometerReading,
)

pytestmark = pytest.mark.django_db(transaction=True)

T1 = "things/thermometer/t1"
H1 = "things/hygrometer/h1"
# A device's own timestamp: yesterday, inside the window around the receive time (TIMESTAMP_MAX_PAST).
GIVEN_DT = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0)
GIVEN = GIVEN_DT.isoformat()


def rows(model, **filters):
    return sync_to_async(lambda: list(model.objects.filter(**filters).order_by("pk")))()


def get(model, **filters):
    return sync_to_async(lambda: model.objects.get(**filters))()


def count(model, **filters):
    return sync_to_async(lambda: model.objects.filter(**filters).count())()


@pytest.fixture
def thermometer(transactional_db):
    return ThermometerDevice.objects.create(device_id="t1")


@pytest.fixture
def hygrometer(transactional_db):
    return HygrometerDevice.objects.create(device_id="h1")


@pytest.fixture
def hub(settings):
    """Change HUBSERVER settings before the router starts: ``hub(HEARTBEAT_TIMEOUT=0.3)``."""

    def configure(**values):
        settings.HUBSERVER = {**settings.HUBSERVER, **values}

    return configure


@pytest.fixture
async def router(transactional_db):
    router = MessageRouter()
    await router.start()
    yield router
    await router.stop()


@pytest.fixture
def record():
    """``calls = record(signal)`` connects a receiver (sync, or async with ``is_async=True``) that
    records the keyword arguments of every call; disconnected after the test."""
    connected = []

    def connect(signal, sender=None, is_async=False):
        calls = []

        if is_async:

            async def receiver(**kwargs):
                calls.append(kwargs)

        else:

            def receiver(**kwargs):
                calls.append(kwargs)

        signal.connect(receiver, sender=sender, weak=False)
        connected.append((signal, receiver, sender))
        return calls

    yield connect
    for signal, receiver, sender in connected:
        signal.disconnect(receiver, sender=sender)


@pytest.fixture(autouse=True)
def clear_hooks():
    hooks.calls.clear()
    yield
    hooks.calls.clear()


# Data messages ---------------------------------------------------------------------------------


async def test_flat_payload_creates_a_reading(router, thermometer):
    payload = b'{"temperature": 21.5, "uptime": 10, "door_open": true, "label": "hall", "timestamp": "%s"}' % (
        GIVEN.encode()
    )
    result = await router.route("data", "thermometer", "t1", payload, qos=1, client_id="t1")

    (reading,) = await rows(ThermometerReading)
    assert (reading.temperature, reading.uptime, reading.door_open, reading.label) == (21.5, 10, True, "hall")
    assert reading.timestamp == GIVEN_DT
    assert reading.device_id == thermometer.pk
    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "completed"
    assert message.processing_error == ""
    assert message.topic == f"{T1}/data"
    assert message.direction == "inbound"
    assert message.payload_json["label"] == "hall"
    assert message.processed_at is not None
    assert result.stored and result.processing_status == "completed"
    assert (result.message_id, result.reading_id) == (message.pk, reading.pk)
    assert result.readings == {"temperature": 21.5, "uptime": 10, "door_open": True, "label": "hall"}


async def test_stored_rows_read_back_like_rows_saved_through_the_orm(router, thermometer):
    """The writer inserts plain rows: every column, the ones it does not set included, must read back as the
    model's own save() would have stored it."""
    await router.route(
        "data", "thermometer", "t1", '{"label": "caf\u00e9 ☕", "uptime": 3.0, "nested": {"a": [1, null]}}'.encode()
    )
    await router.route("data", "thermometer", "t1", b"\xff not json")
    await router.route("status", "thermometer", "t1", b'{"status": "maintenance", "battery_level": 55.5}')

    ok, broken, status = await rows(ThermometerMessage)
    reference = ThermometerMessage(device=thermometer, topic="x")
    for message in (ok, broken, status):
        assert message.content_type == reference.content_type == "application/json"
        assert message.user_properties == {}
        assert (message.command, message.command_status) == ("", "")
        assert message.expires_at is None and message.command_result is None
        assert message.processed_at is not None and message.processed_at.tzinfo is not None
    assert await count(ThermometerMessage, command_result__isnull=True) == 3
    assert ok.payload_json == {"label": "café ☕", "uptime": 3.0, "nested": {"a": [1, None]}}
    assert ok.payload_raw is None
    assert await count(ThermometerMessage, payload_json__nested__a__0=1) == 1  # JSON lookups work on the text
    assert broken.payload_json is None and bytes(broken.payload_raw) == b"\xff not json"
    assert broken.processing_status == "failed"
    (reading,) = await rows(ThermometerReading)
    assert (reading.label, reading.uptime, reading.temperature, reading.door_open) == ("café ☕", 3, None, None)
    assert isinstance(reading.uptime, int)
    device = await get(ThermometerDevice, pk=thermometer.pk)
    assert (device.status, device.battery_level) == ("maintenance", 55.5)
    assert device.last_seen == status.received_at


async def test_readings_list_payload_converts_the_timestamp_to_utc(router, hygrometer):
    payload = (
        b'{"readings": [{"type": "temperature", "value": 25.3}, {"type": "humidity", "value": 80.1}],'
        b' "timestamp": "%s"}' % GIVEN_DT.astimezone(fixed_offset(timedelta(hours=2))).isoformat().encode()
    )
    await router.route("data", "hygrometer", "h1", payload)

    (reading,) = await rows(HygrometerReading)
    assert (reading.temperature, reading.humidity) == (25.3, 80.1)
    assert reading.timestamp == GIVEN_DT
    assert reading.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize("timestamp", [None, "not a time", 1736942400])
async def test_missing_or_unparseable_timestamp_uses_server_time(router, thermometer, timestamp):
    body = {"temperature": 20}
    if timestamp is not None:
        body["timestamp"] = timestamp
    before = timezone.now()
    await router.route("data", "thermometer", "t1", orjson.dumps(body))
    after = timezone.now()

    (reading,) = await rows(ThermometerReading)
    assert before <= reading.timestamp <= after
    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "completed"


async def test_server_time_is_the_time_the_broker_received_the_message(router, thermometer):
    received = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    await router.route("data", "thermometer", "t1", b'{"temperature": 20}', received_at=received)

    (reading,) = await rows(ThermometerReading)
    assert reading.timestamp == received
    assert reading.received_at == received
    device = await get(ThermometerDevice, pk=thermometer.pk)
    assert device.last_seen == received


async def test_unknown_fields_are_ignored(router, thermometer):
    result = await router.route(
        "data", "thermometer", "t1", b'{"temperature": 19, "pressure": 1013, "mode": "manual", "x": {}}'
    )

    (reading,) = await rows(ThermometerReading)
    assert reading.temperature == 19
    assert reading.uptime is None
    assert result.processing_status == "completed"
    device = await get(ThermometerDevice, pk=thermometer.pk)
    assert device.mode == "auto"  # a StateField is not a Reading


async def test_invalid_values_fail_the_message_and_valid_ones_are_kept(router, thermometer):
    result = await router.route(
        "data",
        "thermometer",
        "t1",
        b'{"temperature": 120, "uptime": "long", "door_open": 1, "label": "ok", "humidity": 5}',
    )

    (reading,) = await rows(ThermometerReading)
    assert (reading.label, reading.temperature, reading.uptime, reading.door_open) == ("ok", None, None, None)
    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "failed"
    for field in ("temperature", "uptime", "door_open"):
        assert field in message.processing_error
    assert "label" not in message.processing_error
    assert result.processing_status == "failed"
    assert result.error == message.processing_error


async def test_a_message_without_declared_readings_is_completed_without_a_reading(router, thermometer, record):
    calls = record(signals.device_data_received)
    result = await router.route("data", "thermometer", "t1", b'{"pressure": 1013}')
    await router.flush()

    assert await count(ThermometerReading) == 0
    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "completed"
    assert result.reading_id is None
    assert calls == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"temperature": 20', "invalid JSON"),
        (b"[20]", "must be a JSON object"),
        (b"\xff\xfe binary", "invalid JSON"),
        (b'{"label": "a\\u0000"}', "NUL"),
    ],
)
async def test_unparseable_payload_is_stored_failed_and_the_router_keeps_working(router, thermometer, payload, reason):
    result = await router.route("data", "thermometer", "t1", payload)

    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "failed"
    assert reason in message.processing_error
    assert bytes(message.payload_raw) == payload
    assert message.payload_json is None
    assert result.stored and result.processing_status == "failed"

    await router.route("data", "thermometer", "t1", b'{"temperature": 22}')
    (reading,) = await rows(ThermometerReading)
    assert reading.temperature == 22
    assert router.stats()["failed"] == 1
    assert router.stats()["stored"] == 2


# Status ----------------------------------------------------------------------------------------


async def test_status_payload_updates_the_device_and_fires_status_changed_once(router, hygrometer, record):
    calls = record(signals.device_status_changed)
    result = await router.route(
        "status",
        "hygrometer",
        "h1",
        b'{"status": "maintenance", "battery": 55, "firmware_version": "2.1.0", "timestamp": "x"}',
    )
    await router.route("status", "hygrometer", "h1", b'{"status": "maintenance", "battery_level": 50.5}')
    await router.flush()

    device = await get(HygrometerDevice, pk=hygrometer.pk)
    assert (device.status, device.battery_level, device.firmware_version) == ("maintenance", 50.5, "2.1.0")
    assert device.last_seen is not None
    assert len(calls) == 1
    call = calls[0]
    assert set(call) == {"signal", "sender", "device", "old_status", "new_status"}
    assert call["sender"] is Hygrometer
    assert (call["old_status"], call["new_status"]) == ("offline", "maintenance")
    assert call["device"].device_id == "h1"
    assert hooks.calls == [("on_status_change", "h1", "offline", "maintenance")]
    assert (result.old_status, result.new_status) == ("offline", "maintenance")
    assert await count(HygrometerMessage, processing_status="completed") == 2


async def test_invalid_status_fields_fail_the_message_and_valid_ones_apply(router, transactional_db, record):
    thermometer = await sync_to_async(ThermometerDevice.objects.create)(device_id="t1", status="error")
    calls = record(signals.device_status_changed)
    await router.route(
        "status", "thermometer", "t1", b'{"status": "asleep", "battery_level": 150, "firmware_version": "3.0"}'
    )
    await router.flush()

    device = await get(ThermometerDevice, pk=thermometer.pk)
    assert (device.status, device.battery_level, device.firmware_version) == ("error", None, "3.0")
    (message,) = await rows(ThermometerMessage)
    assert message.processing_status == "failed"
    assert "status" in message.processing_error
    assert "battery_level" in message.processing_error
    assert "firmware" not in message.processing_error
    assert calls == []


# Signals and hooks -----------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
async def test_data_received_fires_once_per_message_with_the_documented_arguments(
    router, thermometer, record, is_async
):
    calls = record(signals.device_data_received, is_async=is_async)
    other = record(signals.device_data_received, sender=Hygrometer)
    await router.route("data", "thermometer", "t1", b'{"temperature": 20, "uptime": 5}')
    await router.route("data", "thermometer", "t1", b'{"temperature": 21}')
    await router.flush()

    assert len(calls) == 2
    assert set(calls[0]) == {"signal", "sender", "device", "readings", "message"}
    assert calls[0]["sender"] is Thermometer
    assert calls[0]["signal"] is signals.device_data_received
    assert calls[0]["readings"] == {"temperature": 20.0, "uptime": 5}
    assert calls[1]["readings"] == {"temperature": 21.0}
    assert isinstance(calls[0]["device"], ThermometerDevice)
    assert calls[0]["device"].pk == thermometer.pk
    message = calls[0]["message"]
    assert isinstance(message, ThermometerMessage)
    assert message.pk is not None
    assert (await get(ThermometerMessage, pk=message.pk)).processing_status == "completed"
    assert other == []


async def test_hooks_of_the_device_type_are_called(router, hygrometer):
    await router.route("data", "hygrometer", "h1", b'{"humidity": 40, "temperature": -60}')
    await router.flush()

    assert hooks.calls == [
        ("on_status_change", "h1", "offline", "online"),  # it spoke, so it is online
        ("on_data", "h1", {"humidity": 40.0, "temperature": -60.0}),
    ]


async def test_failing_receivers_and_hooks_are_logged_and_do_not_stop_the_router(
    router, hygrometer, record, monkeypatch, caplog
):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.device_data_received.connect(broken, weak=False)

    async def broken_hook(self, device, readings):
        raise RuntimeError("hook bug")

    monkeypatch.setattr(Hygrometer, "on_data", broken_hook)
    calls = record(signals.device_data_received)
    try:
        with caplog.at_level(logging.ERROR, logger="hubserver.routing"):
            await router.route("data", "hygrometer", "h1", b'{"humidity": 40}')
            await router.route("data", "hygrometer", "h1", b'{"humidity": 41}')
            await router.flush()
    finally:
        signals.device_data_received.disconnect(broken)

    assert len(calls) == 2
    assert await count(HygrometerReading) == 2
    logged = [r for r in caplog.records if r.exc_info]
    assert any("receiver bug" in str(r.exc_info[1]) for r in logged)
    assert any("hook bug" in str(r.exc_info[1]) for r in logged)


async def test_commit_listeners_get_each_batch_once(router, thermometer):
    batches = []
    router.add_commit_listener(batches.append)
    futures = [await router.submit("data", "thermometer", "t1", b'{"uptime": %d}' % i) for i in range(5)]
    await asyncio.gather(*futures)
    await router.flush()

    assert [len(b) for b in batches] == [5]  # submitted without yielding: one batch
    assert [r.readings["uptime"] for r in batches[0]] == [0, 1, 2, 3, 4]


async def test_reply_is_stored_with_its_correlation_id(router, thermometer):
    replies = []

    async def on_reply(device_type, device, message, reply):
        replies.append((device_type, device.device_id, message.correlation_id, reply.status, reply.result))

    router.add_reply_listener(on_reply)
    result = await router.route(
        "reply", "thermometer", "t1", b'{"correlation_id": "c-42", "status": "ok", "result": {"rebooted": 1}}'
    )
    bad = await router.route("reply", "thermometer", "t1", b'{"status": "ok"}')
    await router.flush()

    message = await get(ThermometerMessage, pk=result.message_id)
    assert (message.correlation_id, message.processing_status, message.direction) == ("c-42", "completed", "inbound")
    assert result.correlation_id == "c-42"
    assert replies == [(Thermometer, "t1", "c-42", "ok", {"rebooted": 1})]
    assert bad.processing_status == "failed" and "correlation_id" in bad.error


# Refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (("data", "nosuchtype", "t1"), Refusal.UNKNOWN_TYPE),
        (("data", "thermometer", "ghost"), Refusal.UNKNOWN_DEVICE),
        (("cmd", "thermometer", "t1"), Refusal.BAD_TOPIC),  # the hub's own kind, never a device's
        (("telemetry", "thermometer", "t1"), Refusal.BAD_TOPIC),
        (("data", "thermometer", "t1/x"), Refusal.BAD_TOPIC),  # not one topic level
        (("data", "thermometer", "+"), Refusal.BAD_TOPIC),
        (("data", "thermometer", "t" * 250), Refusal.BAD_TOPIC),  # its topic would not fit the Message row
    ],
)
async def test_unroutable_messages_are_not_stored(router, thermometer, parts, reason):
    result = await router.route(*parts, b'{"temperature": 20}')

    assert not result.stored
    assert result.reason == reason
    assert await count(ThermometerMessage) == 0
    assert await count(ThermometerReading) == 0
    assert router.stats()["refused"] == {reason: 1}


async def test_inactive_device_is_refused(router, transactional_db):
    await sync_to_async(ThermometerDevice.objects.create)(device_id="t1", is_active=False)
    result = await router.route("data", "thermometer", "t1", b'{"temperature": 20}')

    assert (result.stored, result.reason) == (False, Refusal.INACTIVE_DEVICE)
    assert await count(ThermometerMessage) == 0


async def test_unknown_devices_are_answered_from_the_cache_after_the_first_lookup(router, transactional_db):
    first = await router.route("data", "thermometer", "ghost", b"{}")
    future = await router.submit("data", "thermometer", "ghost", b"{}")

    assert first.reason == Refusal.UNKNOWN_DEVICE
    assert future.done()  # no database round trip
    assert future.result().reason == Refusal.UNKNOWN_DEVICE
    assert router.stats()["refused"] == {Refusal.UNKNOWN_DEVICE: 2}


async def test_the_cache_follows_device_changes(router, transactional_db):
    assert (await router.route("data", "thermometer", "t1", b"{}")).reason == Refusal.UNKNOWN_DEVICE
    device = await sync_to_async(ThermometerDevice.objects.create)(device_id="t1")
    assert (await router.route("data", "thermometer", "t1", b"{}")).stored

    device.is_active = False
    await sync_to_async(device.save)()
    assert (await router.route("data", "thermometer", "t1", b"{}")).reason == Refusal.INACTIVE_DEVICE

    device.is_active = True
    device.device_id = "t1-renamed"
    await sync_to_async(device.save)()
    assert (await router.route("data", "thermometer", "t1", b"{}")).reason == Refusal.UNKNOWN_DEVICE
    assert (await router.route("data", "thermometer", "t1-renamed", b"{}")).stored

    await sync_to_async(device.delete)()
    assert (await router.route("data", "thermometer", "t1-renamed", b"{}")).reason == Refusal.UNKNOWN_DEVICE


async def test_oversize_payload_is_refused(hub, thermometer):
    hub(MAX_PAYLOAD_SIZE=64)
    router = MessageRouter()
    await router.start()
    try:
        result = await router.route("data", "thermometer", "t1", b'{"label": "%s"}' % (b"x" * 100))
        ok = await router.route("data", "thermometer", "t1", b'{"label": "short"}')
    finally:
        await router.stop()

    assert (result.stored, result.reason) == (False, Refusal.PAYLOAD_TOO_LARGE)
    assert ok.stored
    assert await count(ThermometerMessage) == 1
    assert router.stats()["refused"] == {Refusal.PAYLOAD_TOO_LARGE: 1}


async def test_the_router_refuses_to_start_without_time_zone_support(settings, transactional_db):
    settings.USE_TZ = False
    router = MessageRouter()
    with pytest.raises(ConfigurationError, match="USE_TZ = True"):
        await router.start()
    assert not router.running


async def test_submit_needs_a_running_router(transactional_db):
    router = MessageRouter()
    with pytest.raises(RouterNotRunning):
        await router.submit("data", "thermometer", "t1", b"{}")
    await router.start()
    await router.stop()
    with pytest.raises(RouterNotRunning):
        await router.route("data", "thermometer", "t1", b"{}")


# The group-commit writer -----------------------------------------------------------------------


async def test_concurrent_messages_are_written_in_few_transactions(router, transactional_db):
    def create():
        ThermometerDevice.objects.bulk_create(ThermometerDevice(device_id=f"t{i}") for i in range(20))

    await sync_to_async(create)()

    async def device(i):
        return [await router.route("data", "thermometer", f"t{i}", b'{"uptime": %d}' % n, qos=1) for n in range(25)]

    results = [r for rs in await asyncio.gather(*(device(i) for i in range(20))) for r in rs]

    assert len(results) == 500
    assert all(r.stored and r.processing_status == "completed" for r in results)
    assert await count(ThermometerReading) == 500
    assert await count(ThermometerMessage) == 500
    for i in (0, 19):
        uptimes = [r.uptime for r in await rows(ThermometerReading, device__device_id=f"t{i}")]
        assert uptimes == list(range(25))
    stats = router.stats()
    assert stats["batches"] <= 50  # 500 messages, one transaction per batch
    assert stats["max_batch_size"] >= 10
    assert (stats["received"], stats["stored"]) == (500, 500)


async def test_a_failed_commit_fails_its_batch_and_the_next_batch_succeeds(router, thermometer, monkeypatch):
    await router.route("data", "thermometer", "t1", b'{"uptime": 1}')  # warm the cache
    original = batch_module.Rows.save
    attempts = []

    def locked_once(self):
        attempts.append(1)
        if len(attempts) == 1:
            original(self)  # rows written, then the commit fails: all of it must roll back
            raise OperationalError("database is locked")
        original(self)

    monkeypatch.setattr(batch_module.Rows, "save", locked_once)
    failed = [await router.submit("status", "thermometer", "t1", b'{"status": "error"}')]
    failed += [await router.submit("data", "thermometer", "t1", b'{"uptime": %d}' % n) for n in range(3)]
    outcomes = await asyncio.gather(*failed, return_exceptions=True)
    assert all(isinstance(o, BatchCommitError) for o in outcomes)
    assert "database is locked" in str(outcomes[0])

    result = await router.route("status", "thermometer", "t1", b'{"status": "maintenance"}')
    assert result.stored
    assert (result.old_status, result.new_status) == ("online", "maintenance")  # "error" never happened
    assert [r.uptime for r in await rows(ThermometerReading)] == [1]
    assert await count(ThermometerMessage) == 2
    stats = router.stats()
    assert stats["commit_errors"] == 1


async def test_a_full_queue_makes_producers_wait(hub, thermometer, monkeypatch):
    hub(WRITER_QUEUE_SIZE=10)
    entered, release = threading.Event(), threading.Event()
    original = router_module.write_batch

    def slow(works, cache):
        entered.set()
        release.wait()
        original(works, cache)

    monkeypatch.setattr(router_module, "write_batch", slow)
    router = MessageRouter()
    await router.start()
    try:
        futures = [await router.submit("data", "thermometer", "t1", b'{"uptime": 0}')]
        await asyncio.to_thread(entered.wait)  # the writer holds message 0 and is busy
        futures += [await router.submit("data", "thermometer", "t1", b'{"uptime": %d}' % n) for n in range(1, 11)]
        assert router.stats()["queued"] == 10
        blocked = asyncio.create_task(router.submit("data", "thermometer", "t1", b'{"uptime": 11}'))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not blocked.done()  # back-pressure, not an ever-growing queue
        release.set()
        futures.append(await blocked)
        results = await asyncio.gather(*futures)
    finally:
        release.set()
        await router.stop()

    assert all(r.stored for r in results)
    assert [r.uptime for r in await rows(ThermometerReading)] == list(range(12))


async def test_stop_writes_everything_queued(thermometer, transactional_db):
    router = MessageRouter()
    await router.start()
    futures = [await router.submit("data", "thermometer", "t1", b'{"uptime": %d}' % n) for n in range(100)]
    await router.stop()

    assert all(f.done() and f.result().stored for f in futures)
    assert await count(ThermometerReading) == 100


async def test_last_seen_costs_one_update_per_batch(router, thermometer, hygrometer, monkeypatch):
    captured = []
    original = router_module.write_batch

    def capturing(works, cache):
        with CaptureQueriesContext(connection) as queries:
            original(works, cache)
        captured.append([q["sql"] for q in queries.captured_queries])

    monkeypatch.setattr(router_module, "write_batch", capturing)
    futures = []
    for n in range(50):
        futures.append(await router.submit("data", "thermometer", "t1", b'{"uptime": %d}' % n))
        futures.append(await router.submit("data", "hygrometer", "h1", b'{"humidity": %d}' % n))
    results = await asyncio.gather(*futures)

    assert len(captured) == 1  # submitted without yielding: one batch
    # Django logs an executemany as "<rows> times: <sql>": one UPDATE per Device model, one row per device.
    updates = [sql for sql in captured[0] if "UPDATE" in sql.split("times: ")[-1][:6]]
    assert len(updates) == 2  # one per Device model, not one per message
    assert all(sql.startswith("1 times: ") and "last_seen" in sql for sql in updates)
    device = await get(ThermometerDevice, pk=thermometer.pk)
    messages = await rows(ThermometerMessage)
    assert len(messages) == 50
    assert device.last_seen == max(m.received_at for m in messages)
    assert all(r.stored for r in results)


# Connections and heartbeat ---------------------------------------------------------------------


async def test_connect_and_disconnect(router, hygrometer, record):
    connected = record(signals.device_connected)
    disconnected = record(signals.device_disconnected)
    changed = record(signals.device_status_changed)

    result = await router.device_connected("hygrometer", "h1")
    await router.flush()
    assert result.stored and (result.old_status, result.new_status) == ("offline", "online")
    device = await get(HygrometerDevice, pk=hygrometer.pk)
    assert device.status == "online"
    assert device.last_seen is not None
    assert len(connected) == 1
    assert set(connected[0]) == {"signal", "sender", "device"}
    assert connected[0]["sender"] is Hygrometer

    await router.device_disconnected("hygrometer", "h1", reason="socket closed")
    await router.flush()
    assert (await get(HygrometerDevice, pk=hygrometer.pk)).status == "offline"
    assert len(disconnected) == 1
    assert set(disconnected[0]) == {"signal", "sender", "device"}
    assert [(c["old_status"], c["new_status"]) for c in changed] == [("offline", "online"), ("online", "offline")]
    assert hooks.calls == [
        ("on_status_change", "h1", "offline", "online"),
        ("on_status_change", "h1", "online", "offline"),
    ]

    unknown = await router.device_connected("hygrometer", "nobody")
    assert (unknown.stored, unknown.reason) == (False, Refusal.UNKNOWN_DEVICE)


async def test_a_silent_device_goes_offline_after_the_heartbeat_timeout(hub, hygrometer, record):
    hub(HEARTBEAT_TIMEOUT=0.3)
    gone = asyncio.Event()
    disconnected = record(signals.device_disconnected)

    async def on_disconnect(**kwargs):
        gone.set()

    signals.device_disconnected.connect(on_disconnect, weak=False)
    changed = record(signals.device_status_changed)
    router = MessageRouter()
    await router.start()
    try:
        await router.device_connected("hygrometer", "h1")
        await router.route("data", "hygrometer", "h1", b'{"humidity": 50}')
        await asyncio.wait_for(gone.wait(), timeout=10)
        await router.flush()
        assert (await get(HygrometerDevice, pk=hygrometer.pk)).status == "offline"
        assert len(disconnected) == 1

        await router.route("data", "hygrometer", "h1", b'{"humidity": 51}')  # it speaks again: online
        await router.flush()
        assert (await get(HygrometerDevice, pk=hygrometer.pk)).status == "online"
    finally:
        signals.device_disconnected.disconnect(on_disconnect)
        await router.stop()

    assert [(c["old_status"], c["new_status"]) for c in changed] == [
        ("offline", "online"),
        ("online", "offline"),
        ("offline", "online"),
    ]


async def test_devices_left_online_by_a_previous_run_time_out(hub, transactional_db):
    hub(HEARTBEAT_TIMEOUT=0.3)
    device = await sync_to_async(HygrometerDevice.objects.create)(device_id="h1", status="online")
    gone = asyncio.Event()

    async def on_disconnect(**kwargs):
        gone.set()

    signals.device_disconnected.connect(on_disconnect, weak=False)
    router = MessageRouter()
    await router.start()
    try:
        await asyncio.wait_for(gone.wait(), timeout=10)
        await router.flush()
    finally:
        signals.device_disconnected.disconnect(on_disconnect)
        await router.stop()
    assert (await get(HygrometerDevice, pk=device.pk)).status == "offline"


@pytest.mark.slow  # waits three heartbeat timeouts
async def test_a_device_heard_by_another_process_is_not_marked_offline(hub, hygrometer):
    """Workers share a broker's messages: this process stopped hearing from the device, another did not
    (its last_seen in the database is recent), so the heartbeat timeout leaves it online."""
    hub(HEARTBEAT_TIMEOUT=0.5)
    router = MessageRouter()
    await router.start()
    stop = asyncio.Event()

    async def other_worker():
        while not stop.is_set():
            await sync_to_async(HygrometerDevice.objects.filter(pk=hygrometer.pk).update)(last_seen=timezone.now())
            await asyncio.sleep(0.1)

    try:
        await router.route("data", "hygrometer", "h1", b'{"humidity": 50}')
        elsewhere = asyncio.ensure_future(other_worker())
        await asyncio.sleep(1.5)  # three heartbeat timeouts of this process
        await router.flush()
        assert (await get(HygrometerDevice, pk=hygrometer.pk)).status == "online"
    finally:
        stop.set()
        await elsewhere
        await router.stop()
