"""Commands end to end: validation, publish on cmd, PUBACK, reply, offline devices, restarts and expiry."""

import asyncio
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from hubserver import signals
from hubserver.exceptions import ValidationError
from tests.conftest import device_client, provision_device
from tests.mqtt import until
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def command_row(correlation_id):
    return ThermometerMessage.objects.get(correlation_id=correlation_id, direction="outbound")


async def status_of(correlation_id):
    return (await command_row(correlation_id)).command_status


async def test_unknown_commands_and_invalid_payloads_are_refused():
    device, _ = await provision_device("thermometer", "c-0")
    with pytest.raises(ValidationError, match="has no command 'launch'"):
        await Thermometer.asend_command(device, "launch")
    with pytest.raises(ValidationError, match="set_mode payload/mode"):
        await Thermometer.asend_command(device, "set_mode", {"mode": "turbo"})
    assert not await database_sync_to_async(ThermometerMessage.objects.exists)()


async def test_round_trip_with_a_device_answering_on_reply(hub, clients):
    sent = []
    signals.device_command_sent.connect(
        lambda sender, device, command, payload, **kw: sent.append((sender, device.device_id, command, payload)),
        sender=Thermometer,
        weak=False,
        dispatch_uid="t-sent",
    )
    try:
        client, _ = await device_client(hub, clients, "thermometer", "c-1")
        await client.subscribe("things/thermometer/c-1/cmd", qos=1)
        device = await database_sync_to_async(Thermometer._device_model.objects.get)(device_id="c-1")
        message = await Thermometer.asend_command(device, "set_mode", {"mode": "manual"})
        assert message.command_status == "pending" and message.topic == "things/thermometer/c-1/cmd"
        received = await client.wait_messages(1)
        envelope = json.loads(received[0].payload)
        assert envelope == {
            "command": "set_mode",
            "payload": {"mode": "manual"},
            "correlation_id": message.correlation_id,
        }
        assert received[0].topic == "things/thermometer/c-1/cmd"
        await until(lambda: sent, message="device_command_sent")
        assert sent == [(Thermometer, "c-1", "set_mode", {"mode": "manual"})]
        assert await status_of(message.correlation_id) == "delivered"
        await client.publish(
            "things/thermometer/c-1/reply",
            json.dumps({"correlation_id": message.correlation_id, "status": "ok", "result": {"mode": "manual"}}),
        )
        await hub.router.flush()
        row = await command_row(message.correlation_id)
        assert (row.command_status, row.command_result) == ("replied", {"mode": "manual"})
    finally:
        signals.device_command_sent.disconnect(sender=Thermometer, dispatch_uid="t-sent")


async def test_an_error_reply_marks_the_command_failed(hub, clients):
    client, _ = await device_client(hub, clients, "thermometer", "c-2")
    await client.subscribe("things/thermometer/c-2/cmd", qos=1)
    device = await database_sync_to_async(Thermometer._device_model.objects.get)(device_id="c-2")
    message = await Thermometer.asend_command(device, "reboot")
    await client.wait_messages(1)
    await client.publish(
        "things/thermometer/c-2/reply",
        json.dumps({"correlation_id": message.correlation_id, "status": "error", "result": "busy"}),
    )
    await hub.router.flush()
    row = await command_row(message.correlation_id)
    assert (row.command_status, row.command_result) == ("failed", "busy")


async def test_a_command_for_an_offline_device_waits_until_it_connects(hub, clients):
    device, credentials = await provision_device("thermometer", "c-3")
    message = await Thermometer.asend_command(device, "reboot")
    await asyncio.sleep(0.3)
    assert await status_of(message.correlation_id) == "pending"
    client = clients(
        hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], credentials["mqtt_password"]
    )
    await client.connect()
    await client.subscribe("things/thermometer/c-3/cmd", qos=1)
    received = await client.wait_messages(1)
    assert json.loads(received[0].payload)["correlation_id"] == message.correlation_id
    for _ in range(50):
        if await status_of(message.correlation_id) == "delivered":
            break
        await asyncio.sleep(0.05)
    assert await status_of(message.correlation_id) == "delivered"


async def test_commands_queued_without_a_running_hub_are_sent_after_it_starts(transactional_db, clients):
    from hubserver.hub import Hub
    from tests.mqtt import free_port

    device, credentials = await provision_device("thermometer", "c-4")
    message = await Thermometer.asend_command(device, "reboot")  # no hub in this process yet
    hub = Hub(embedded={"host": "127.0.0.1", "port": free_port()})
    await hub.start()
    try:
        client = clients(
            hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], credentials["mqtt_password"]
        )
        await client.connect()
        await client.subscribe("things/thermometer/c-4/cmd", qos=1)
        received = await client.wait_messages(1)
        assert json.loads(received[0].payload)["correlation_id"] == message.correlation_id
    finally:
        await hub.stop()


async def test_a_command_without_a_reply_expires(hub):
    device, _ = await provision_device("thermometer", "c-5")
    message = await Thermometer.asend_command(device, "reboot")

    @database_sync_to_async
    def time_passes():
        ThermometerMessage.objects.filter(pk=message.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    await time_passes()
    hub.commands.notify(Thermometer, message.pk)
    for _ in range(100):
        if await status_of(message.correlation_id) == "expired":
            break
        await asyncio.sleep(0.05)
    assert await status_of(message.correlation_id) == "expired"


async def test_an_mqtt5_device_also_gets_the_correlation_id_as_correlation_data(hub, clients):
    from tests.mqtt import Client5

    _, credentials = await provision_device("thermometer", "c-5v")
    username = credentials["mqtt_username"]
    client = Client5(hub.engine.port, username, username, credentials["mqtt_password"])
    try:
        await client.connect()
        await client.subscribe("things/thermometer/c-5v/cmd", qos=1)
        device = await database_sync_to_async(Thermometer._device_model.objects.get)(device_id="c-5v")
        message = await Thermometer.asend_command(device, "reboot")
        (received,) = await client.wait_messages(1)
        assert json.loads(received.payload)["correlation_id"] == message.correlation_id
        assert received.prop("CorrelationData") == message.correlation_id.encode()
    finally:
        client.stop()
