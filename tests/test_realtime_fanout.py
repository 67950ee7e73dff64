"""Fan-out cost: one channel-layer message per committed batch and group, whatever the number of messages
and viewers, and no duplicates for a viewer in both a type group and a device group."""

from collections import Counter

import pytest
from channels.layers import get_channel_layer

from hubserver.realtime import fanout
from hubserver.realtime.events import device_group, type_group
from hubserver.routing.results import RouteResult
from tests.conftest import provision_device
from tests.realtime_urls import drain, flush_layer, request, viewer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def clean_layer():
    await flush_layer()
    yield
    await flush_layer()


def data(device_id, message_id, temperature):
    return RouteResult(
        stored=True,
        kind="data",
        type_name="thermometer",
        device_id=device_id,
        message_id=message_id,
        readings={"temperature": temperature},
        processing_status="completed",
    )


def connected(device_id):
    return RouteResult(stored=True, kind="connect", type_name="thermometer", device_id=device_id, new_status="online")


@pytest.fixture
def counted(monkeypatch):
    layer = get_channel_layer()
    calls = Counter()
    original = layer.group_send

    async def group_send(group, message):
        calls[group] += 1
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", group_send)
    return calls


async def test_one_group_send_per_batch_and_group_and_no_duplicates(counted):
    for device_id in ("t-1", "t-2", "t-3"):
        await provision_device("thermometer", device_id)
    by_type = await viewer("by-type")
    by_device = await viewer("by-device")
    both = await viewer("both")
    await request(by_type, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
    await request(by_device, {"type": "subscribe", "device_type": "thermometer", "device_id": "t-1", "request_id": 1})
    await request(both, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
    await request(both, {"type": "subscribe", "device_type": "thermometer", "device_id": "t-2", "request_id": 2})

    batch = [data("t-1", 1, 1.0), data("t-2", 2, 2.0), data("t-1", 3, 3.0), connected("t-3"), data("t-2", 4, 4.0)]
    batch += [data("t-1", 5 + i, 10.0 + i) for i in range(100)]
    await fanout.on_commit(batch)

    # One message for the type group and one per device group that has viewers (t-3's has none).
    assert counted == {
        type_group("thermometer"): 1,
        device_group("thermometer", "t-1"): 1,
        device_group("thermometer", "t-2"): 1,
    }
    got = {name: await drain(ws) for name, ws in (("type", by_type), ("device", by_device), ("both", both))}
    assert len(got["type"]) == 105 and got["type"][3] == {**got["type"][3], "type": "connection", "state": "online"}
    assert [e["id"] for e in got["device"]] == [1, 3, *range(5, 105)]
    assert got["both"] == got["type"]  # each event once, in batch order

    # A second batch: another single message per group.
    await fanout.on_commit([data("t-2", 200, 5.0)])
    assert counted[type_group("thermometer")] == 2 and counted[device_group("thermometer", "t-2")] == 2
    assert [e["id"] for e in await drain(both)] == [200]
    assert await drain(by_device) == []
    for ws in (by_type, by_device, both):
        await ws.disconnect()


async def test_batches_nobody_watches_cost_no_channel_layer_message(counted):
    await fanout.on_commit([data("t-1", 1, 1.0), connected("t-2")])
    assert counted == {}


async def test_status_events_come_from_the_committed_result_without_reading_rows(counted):
    """The batch hands realtime what it wrote: a status event for a message row that is not in the database
    (nothing to read back) still shows what the device stated and the status it replaced."""
    from datetime import UTC, datetime

    await provision_device("thermometer", "t-1")
    ws = await viewer("watcher")
    await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
    received = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = RouteResult(
        stored=True,
        kind="status",
        type_name="thermometer",
        device_id="t-1",
        message_id=987654,  # no such row
        processing_status="completed",
        old_status="online",
        new_status="maintenance",
        received_at=received,
        status_fields={"status": "maintenance", "battery_level": 42.0, "firmware_version": "9.9"},
    )
    await fanout.on_commit([status])
    (event,) = await drain(ws)
    assert event == {
        "type": "status",
        "device_type": "thermometer",
        "device_id": "t-1",
        "id": 987654,
        "timestamp": "2030-01-02T03:04:05Z",
        "status": "maintenance",
        "old_status": "online",
        "battery_level": 42.0,
        "firmware_version": "9.9",
    }
    await ws.disconnect()
