"""A device's Last Will is stored like any message it sends, then delivered (README: every message is kept)."""

import pytest
from channels.db import database_sync_to_async

from tests.conftest import device_client, make_service_user
from tests.mqtt import until
from tests.testapp.models import ThermometerDevice, ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def device_row(device_id):
    return ThermometerDevice.objects.get(device_id=device_id)


@database_sync_to_async
def messages(topic):
    return list(ThermometerMessage.objects.filter(topic=topic).values_list("payload_json", flat=True))


async def test_a_status_will_is_stored_delivered_and_sets_the_device_status(hub, clients):
    await make_service_user("watcher", "watcher-pass")
    watcher = clients(hub.engine.port, "watcher", "watcher", "watcher-pass")
    await watcher.connect()
    await watcher.subscribe("things/thermometer/+/status", qos=1)
    topic = "things/thermometer/w-1/status"
    device, _ = await device_client(hub, clients, device_id="w-1", will=(topic, b'{"status": "error"}', 1))
    device.stop()  # gone without DISCONNECT: the Will is published
    received = await watcher.wait_messages(1)
    assert (received[0].topic, received[0].payload) == (topic, b'{"status": "error"}')
    stored = []

    async def will_stored():
        stored[:] = await messages(topic)
        return bool(stored)

    for _ in range(200):
        if await will_stored():
            break
        await until(lambda: True, interval=0.05)
    assert stored == [{"status": "error"}], "the Will is kept in the audit trail"
    row = await device_row("w-1")
    assert row.status == "error", "the Will is the device's last word, after its disconnection"


async def test_a_normal_disconnect_discards_the_will(hub, clients):
    topic = "things/thermometer/w-2/status"
    device, _ = await device_client(hub, clients, device_id="w-2", will=(topic, b'{"status": "error"}', 1))
    await device.disconnect()
    # The hub records the disconnection once it has read the DISCONNECT: a Will would be routed then.
    for _ in range(200):
        if (await device_row("w-2")).status == "offline":
            break
        await until(lambda: True, interval=0.05)
    await hub.router.flush()
    assert await messages(topic) == []
    assert (await device_row("w-2")).status == "offline"
