"""Every way of sending a command gives live viewers the same events: ``pending``, ``sent``, ``delivered``
and ``replied``, in that order, from the command dispatcher (the one place command states change).

Here the hub runs in the test's loop and the viewer is a WebSocket client of ``/ws/hub/`` driven through
the ASGI app; ``test_command_events_live.py`` does the same against a ``hubserver run`` process."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from tests.conftest import device_client
from tests.realtime_urls import CHANGE, next_event, request, viewer
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice

pytestmark = pytest.mark.django_db(transaction=True)

STATES = ["pending", "sent", "delivered", "replied"]


async def answering_device(hub, clients, device_id):
    """A device subscribed to its cmd topic; ``answer()`` replies to the command it received."""
    device, _ = await device_client(hub, clients, "thermometer", device_id)
    await device.subscribe(f"things/thermometer/{device_id}/cmd", qos=1)

    async def answer():
        (received,) = await device.wait_messages(1)
        correlation_id = json.loads(received.payload)["correlation_id"]
        reply = {"correlation_id": correlation_id, "status": "ok", "result": {"done": True}}
        await device.publish(f"things/thermometer/{device_id}/reply", json.dumps(reply))
        return correlation_id

    return answer


async def watching(name="watcher"):
    """A viewer subscribed to every thermometer (it sends nothing itself)."""
    ws = await viewer(name)
    await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": "w"})
    return ws


async def command_states(ws, device_id):
    """The command events the viewer receives for ``device_id`` until the command is replied."""
    events = [await next_event(ws, "command", device_id=device_id)]
    while events[-1]["command_status"] != "replied":
        events.append(await next_event(ws, "command", device_id=device_id))
    assert len({event["correlation_id"] for event in events}) == 1
    return [event["command_status"] for event in events], events[-1]


def staff_client(codenames=CHANGE):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames, content_type__app_label="testapp"))
    client = Client()
    client.force_login(user)
    return client


async def test_send_command(hub, clients):
    answer = await answering_device(hub, clients, "s-1")
    ws = await watching()
    device = await database_sync_to_async(ThermometerDevice.objects.get)(device_id="s-1")
    message = await Thermometer.asend_command(device, "set_mode", {"mode": "manual"})
    assert await answer() == message.correlation_id
    states, replied = await command_states(ws, "s-1")
    assert states == STATES
    assert (replied["correlation_id"], replied["result"]) == (message.correlation_id, {"done": True})
    await ws.disconnect()


async def test_rest_api(hub, clients):
    answer = await answering_device(hub, clients, "a-1")
    ws = await watching()

    def post():
        return staff_client().post(
            "/api/thermometer/devices/a-1/commands/",
            {"command": "set_mode", "payload": {"mode": "manual"}},
            content_type="application/json",
        )

    response = await sync_to_async(post)()
    assert response.status_code == 202, response.content
    assert await answer() == response.json()["correlation_id"]
    states, _ = await command_states(ws, "a-1")
    assert states == STATES
    await ws.disconnect()


async def test_admin_action(hub, clients):
    answer = await answering_device(hub, clients, "m-1")
    ws = await watching()

    def post():
        device = ThermometerDevice.objects.get(device_id="m-1")
        data = {
            "action": "send_command",
            "_selected_action": [device.pk],
            "apply": "yes",
            "command": "set_mode",
            "payload": '{"mode": "manual"}',
        }
        return staff_client().post(reverse("admin:testapp_thermometerdevice_changelist"), data)

    response = await sync_to_async(post)()
    assert response.status_code == 302, response.content  # back to the list, with "sent" in the messages
    await answer()
    states, _ = await command_states(ws, "m-1")
    assert states == STATES
    await ws.disconnect()


async def test_websocket_command(hub, clients):
    answer = await answering_device(hub, clients, "w-1")
    ws = await watching()
    operator = await viewer("operator", codenames=CHANGE)
    sent = await request(
        operator,
        {
            "type": "command",
            "device_type": "thermometer",
            "device_id": "w-1",
            "command": "set_mode",
            "payload": {"mode": "manual"},
            "request_id": "go",
        },
    )
    assert (sent["command_status"], sent["request_id"]) == ("pending", "go")
    assert await answer() == sent["correlation_id"]
    states, _ = await command_states(ws, "w-1")  # another viewer: pending comes from the dispatcher too
    assert states == STATES
    operator_states, _ = await command_states(operator, "w-1")  # the sender: each later state once
    assert operator_states == STATES[1:]
    await ws.disconnect()
    await operator.disconnect()
