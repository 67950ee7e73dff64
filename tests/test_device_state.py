"""A device reports its StateFields in the ``state`` object of its status messages and command replies: the
hub checks them against the DeviceType, stores them on the Device row, fires ``device_state_changed`` and
the ``on_state_change`` hook, and live views get a ``state`` event. Real MQTT clients, the in-process hub."""

import json

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from hubserver.signals import device_state_changed
from tests.conftest import device_client
from tests.mqtt import until
from tests.realtime_urls import fanout_on, flush_layer, next_event, request, viewer
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def clean_layer():
    await flush_layer()
    yield
    await flush_layer()


@pytest.fixture
def state_signals():
    received = []

    def receiver(sender, device, changes, message, **kwargs):
        received.append((sender, device.device_id, changes, message.topic))

    device_state_changed.connect(receiver)
    yield received
    device_state_changed.disconnect(receiver)


@database_sync_to_async
def row(device_id):
    """The Device row as stored (columns, not a cached instance)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT mode, setpoint FROM {ThermometerDevice._meta.db_table} WHERE device_id = %s", [device_id]
        )
        return cursor.fetchone()


@database_sync_to_async
def last_message(device_id, kind):
    message = ThermometerMessage.objects.filter(device__device_id=device_id, topic__endswith="/" + kind)
    return message.order_by("-pk").values("processing_status", "processing_error").first()


async def test_a_status_message_sets_state_stored_signalled_and_shown_live(hub, clients, state_signals):
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "t-1")
        ws = await viewer()
        await request(ws, {"type": "subscribe", "device_type": "thermometer", "device_id": "t-1", "request_id": "s"})
        status = {"status": "online", "state": {"mode": "manual", "setpoint": 19.5}}
        await device.publish("things/thermometer/t-1/status", json.dumps(status))

        event = await next_event(ws, "state")
        assert event["device_id"] == "t-1" and event["source"] == "status"
        assert event["state"] == {"mode": "manual", "setpoint": 19.5} and event["timestamp"].endswith("Z")
        assert await row("t-1") == ("manual", 19.5)
        await until(lambda: state_signals, message="the signal")
        assert state_signals == [
            (
                Thermometer,
                "t-1",
                {"mode": ("auto", "manual"), "setpoint": (21.0, 19.5)},
                "things/thermometer/t-1/status",
            )
        ]

        # The same state again changes nothing: no event, no signal.
        await device.publish("things/thermometer/t-1/status", json.dumps({"state": {"mode": "manual"}}))
        await device.publish("things/thermometer/t-1/status", json.dumps({"state": {"setpoint": 20}}))
        assert (await next_event(ws, "state"))["state"] == {"setpoint": 20.0}
        await until(lambda: len(state_signals) == 2, message="the second signal")
        assert state_signals[1][2] == {"setpoint": (19.5, 20.0)}
        await ws.disconnect()


async def test_a_reply_sets_state_and_the_hook_runs(hub, clients, monkeypatch):
    hooked = []
    monkeypatch.setattr(Thermometer, "on_state_change", lambda self, device, changes: hooked.append(changes))
    device, _ = await device_client(hub, clients, "thermometer", "r-1")
    await device.subscribe("things/thermometer/r-1/cmd")
    stored = await database_sync_to_async(ThermometerDevice.objects.get)(device_id="r-1")
    message = await Thermometer.asend_command(stored, "set_mode", {"mode": "manual"})
    [command] = await device.wait_messages(1)
    reply = {"correlation_id": message.correlation_id, "status": "ok", "result": {}, "state": {"mode": "manual"}}
    await device.publish("things/thermometer/r-1/reply", json.dumps(reply))
    await until(lambda: hooked, message="the hook")
    assert hooked == [{"mode": ("auto", "manual")}]
    assert await row("r-1") == ("manual", 21.0)

    def api_sees():
        from django.contrib.auth.models import User
        from django.test import Client

        client = Client()
        client.force_login(User.objects.create_superuser("root", password="pw"))
        return client.get("/api/thermometer/devices/r-1/").json()

    assert (await database_sync_to_async(api_sees)())["mode"] == "manual"
    assert json.loads(command.payload)["command"] == "set_mode"


async def test_bad_state_is_refused_by_name_and_the_valid_part_kept(hub, clients, monkeypatch):
    device, _ = await device_client(hub, clients, "thermometer", "b-1")
    state = {"mode": "turbo", "setpoint": 18, "firmware_channel": "beta"}  # the last is no StateField: ignored
    await device.publish("things/thermometer/b-1/status", json.dumps({"battery_level": 50, "state": state}))
    await hub.router.flush()
    assert await row("b-1") == ("auto", 18.0)
    message = await last_message("b-1", "status")
    assert message["processing_status"] == "failed"
    assert message["processing_error"] == "state.mode: 'turbo' is not one of ['auto', 'manual']"

    await device.publish("things/thermometer/b-1/status", json.dumps({"state": ["manual"]}))
    await hub.router.flush()
    assert (await last_message("b-1", "status"))["processing_error"] == "state: expected an object, got a list"

    # A StateField the hub alone sets is not the device's to report.
    monkeypatch.setattr(Thermometer._state_fields["setpoint"], "reported", False)
    await device.publish("things/thermometer/b-1/status", json.dumps({"state": {"setpoint": 30, "mode": "manual"}}))
    await hub.router.flush()
    assert await row("b-1") == ("manual", 18.0)
    assert (await last_message("b-1", "status"))[
        "processing_error"
    ] == "state.setpoint: set by the hub, not by the device"


def test_the_payload_schemas_describe_the_state_object():
    status = Thermometer.status_schema()["properties"]["state"]
    assert status["properties"] == {
        "mode": {"type": "string", "enum": ["auto", "manual"], "default": "auto"},
        "setpoint": {"type": "number", "default": 21.0},
    }
    reply = Thermometer.command_schemas()["set_mode"]["reply"]["properties"]["state"]
    assert reply == status
