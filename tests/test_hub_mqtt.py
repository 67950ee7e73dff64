"""The hub as devices see it: real paho clients against the embedded broker and router, real rows."""

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from channels.db import database_sync_to_async

from hubserver import signals
from tests.conftest import device_client, make_service_user, provision_device
from tests.mqtt import Client5, until
from tests.testapp import hooks
from tests.testapp.devices import Hygrometer
from tests.testapp.models import HygrometerDevice, HygrometerMessage, HygrometerReading, ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)
# A device's own timestamp: yesterday, inside the window around the receive time (TIMESTAMP_MAX_PAST).
GIVEN = (datetime.now(UTC) - timedelta(days=1)).replace(microsecond=0).isoformat()


@database_sync_to_async
def rows(model, **filters):
    return list(model.objects.filter(**filters).order_by("pk").values())


async def test_published_readings_are_stored_and_hooks_and_signals_fire_once(hub, clients):
    received = []

    async def on_data(sender, device, readings, message, **kwargs):
        received.append((sender, device.device_id, readings, message.pk))

    signals.device_data_received.connect(on_data, sender=Hygrometer)
    hooks.calls.clear()
    try:
        client, _ = await device_client(hub, clients, "hygrometer", "h-1")
        for value in (40.0, 41.5, 42.0):
            await client.publish("things/hygrometer/h-1/data", json.dumps({"humidity": value, "extra": 1}))
        await until(lambda: len(received) == 3, message="three data signals")
        await hub.router.flush()
        stored = await rows(HygrometerReading)
        assert [r["humidity"] for r in stored] == [40.0, 41.5, 42.0]
        assert [r[2] for r in received] == [{"humidity": 40.0}, {"humidity": 41.5}, {"humidity": 42.0}]
        assert {r[0] for r in received} == {Hygrometer}
        messages = await rows(HygrometerMessage, topic="things/hygrometer/h-1/data")
        assert [m["processing_status"] for m in messages] == ["completed"] * 3
        assert sorted(r[3] for r in received) == [m["id"] for m in messages]
        await until(
            lambda: (
                [c for c in hooks.calls if c[0] == "on_data"]
                and len([c for c in hooks.calls if c[0] == "on_data"]) == 3
            ),
            message="three on_data hooks",
        )
        await asyncio.sleep(0.2)
        assert len(received) == 3, "each signal fires exactly once per message"
    finally:
        signals.device_data_received.disconnect(on_data, sender=Hygrometer)


async def test_readings_list_format_and_timestamp(hub, clients):
    client, _ = await device_client(hub, clients, "hygrometer", "h-2")
    await client.publish(
        "things/hygrometer/h-2/data",
        json.dumps(
            {
                "readings": [{"type": "humidity", "value": 55}, {"type": "temperature", "value": -70}],
                "timestamp": GIVEN,
            }
        ),
    )
    await hub.router.flush()
    reading = (await rows(HygrometerReading))[0]
    assert (reading["humidity"], reading["temperature"]) == (55.0, -70.0)
    assert reading["timestamp"].isoformat() == GIVEN


async def test_malformed_payloads_are_stored_as_failed_and_the_hub_keeps_going(hub, clients):
    client, _ = await device_client(hub, clients, "hygrometer", "h-3")
    await client.publish("things/hygrometer/h-3/data", b"\xff not json")
    await client.publish("things/hygrometer/h-3/data", json.dumps({"humidity": 140, "temperature": 20}))
    await client.publish("things/hygrometer/h-3/data", json.dumps({"humidity": 50}))
    await hub.router.flush()
    messages = await rows(HygrometerMessage, topic="things/hygrometer/h-3/data")
    assert [m["processing_status"] for m in messages] == ["failed", "failed", "completed"]
    assert bytes(messages[0]["payload_raw"]) == b"\xff not json"
    assert messages[0]["processing_error"]
    assert "humidity" in messages[1]["processing_error"] and "maximum" in messages[1]["processing_error"]
    readings = await rows(HygrometerReading)
    assert [(r["humidity"], r["temperature"]) for r in readings] == [(None, 20.0), (50.0, None)]


async def test_status_updates_the_device_and_fires_status_changed(hub, clients):
    changes = []

    def on_status(sender, device, old_status, new_status, **kwargs):
        changes.append((old_status, new_status))

    signals.device_status_changed.connect(on_status, sender=Hygrometer)
    try:
        client, _ = await device_client(hub, clients, "hygrometer", "h-4")
        await until(lambda: ("offline", "online") in changes, message="online on connect")
        await client.publish(
            "things/hygrometer/h-4/status",
            json.dumps({"status": "maintenance", "battery": 64.5, "firmware_version": "2.1.0"}),
        )
        await until(lambda: ("online", "maintenance") in changes, message="status change")
        device = (await rows(HygrometerDevice, device_id="h-4"))[0]
        assert (device["status"], device["battery_level"], device["firmware_version"]) == ("maintenance", 64.5, "2.1.0")
        await client.disconnect()
        await until(lambda: ("maintenance", "offline") in changes, message="offline on disconnect")
    finally:
        signals.device_status_changed.disconnect(on_status, sender=Hygrometer)


async def test_connect_and_disconnect_signals(hub, clients):
    events = []
    signals.device_connected.connect(
        lambda sender, device, **kw: events.append(("connected", device.device_id)),
        sender=Hygrometer,
        weak=False,
        dispatch_uid="t-conn",
    )
    signals.device_disconnected.connect(
        lambda sender, device, **kw: events.append(("disconnected", device.device_id)),
        sender=Hygrometer,
        weak=False,
        dispatch_uid="t-disc",
    )
    try:
        client, _ = await device_client(hub, clients, "hygrometer", "h-5")
        await until(lambda: ("connected", "h-5") in events)
        client.stop()  # abrupt: no DISCONNECT packet
        await until(lambda: ("disconnected", "h-5") in events)
        assert events == [("connected", "h-5"), ("disconnected", "h-5")]
    finally:
        signals.device_connected.disconnect(sender=Hygrometer, dispatch_uid="t-conn")
        signals.device_disconnected.disconnect(sender=Hygrometer, dispatch_uid="t-disc")


async def test_puback_waits_for_the_commit(hub, clients, monkeypatch):
    from hubserver.routing import router as router_module

    release = threading.Event()
    original = router_module.write_batch

    def slow_write_batch(works, cache):
        release.wait(10)
        return original(works, cache)

    client, _ = await device_client(hub, clients, "hygrometer", "h-6")
    await asyncio.sleep(0.3)  # let the connect's status change commit before the slowdown
    monkeypatch.setattr(router_module, "write_batch", slow_write_batch)
    info = await client.publish("things/hygrometer/h-6/data", json.dumps({"humidity": 10}), wait=False)
    await asyncio.sleep(0.5)
    assert not info.is_published(), "the PUBACK must not come before the commit"
    assert not await database_sync_to_async(HygrometerReading.objects.exists)()
    release.set()
    await until(info.is_published, message="PUBACK after the commit")
    assert await database_sync_to_async(HygrometerReading.objects.count)() == 1


async def test_a_failed_commit_is_not_acknowledged(hub, clients, monkeypatch):
    from hubserver.routing import router as router_module

    def failing(works, cache):
        raise RuntimeError("disk full")

    client, _ = await device_client(hub, clients, "hygrometer", "h-7")
    await asyncio.sleep(0.3)
    monkeypatch.setattr(router_module, "write_batch", failing)
    info = await client.publish("things/hygrometer/h-7/data", json.dumps({"humidity": 10}), wait=False)
    await client.wait_disconnected()
    assert not info.is_published()


class TestAccessControl:
    async def test_wrong_password_unknown_user_and_anonymous_are_refused(self, hub, clients):
        _, credentials = await provision_device("thermometer", "t-10")
        wrong = clients(hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], "nope")
        assert await wrong.connect(expect_success=False) == 135  # paho's "not authorized"
        unknown = clients(hub.engine.port, "thermometer.ghost", "thermometer.ghost", "x")
        assert await unknown.connect(expect_success=False) == 135
        anonymous = clients(hub.engine.port, "anon")
        assert await anonymous.connect(expect_success=False) == 135

    async def test_a_wrong_client_id_is_refused_with_the_rule_in_the_log_and_the_connack(self, hub, clients, caplog):
        """Good credentials with a client id they may not use: the CONNACK says the identifier is the problem
        (3.1.1: 0x02, which paho reports as 133; MQTT 5: 0x85), and the log says the rule, once a minute."""
        _, credentials = await provision_device("thermometer", "t-13")
        username, password = credentials["mqtt_username"], credentials["mqtt_password"]
        rule = (
            f"refused MQTT connection of '{username}': a device's client id must equal its username "
            f"('{username}'), got 'foo'"
        )
        device = clients(hub.engine.port, "foo", username, password)
        assert await device.connect(expect_success=False) == 133  # "Client identifier not valid"
        assert rule in caplog.text
        assert "bad credentials" not in caplog.text  # the credentials were good
        again = Client5(hub.engine.port, "foo", username, password)
        try:
            assert await again.connect(expect_success=False) == 0x85
        finally:
            again.stop()
        assert caplog.text.count(rule) == 1, "a device retrying with its wrong id is logged once a minute"
        await make_service_user()
        service = clients(hub.engine.port, username, "dashboard", "s3cret-pass")
        assert await service.connect(expect_success=False) == 133
        assert (
            f"refused MQTT connection of 'dashboard': client id '{username}' is the username of a device, which "
            "only that device may use; connect with another client id" in caplog.text
        )
        right = clients(hub.engine.port, username, username, password)
        assert await right.connect() == 0
        wrong_password = clients(hub.engine.port, username, username, "nope")
        assert await wrong_password.connect(expect_success=False) == 135  # credentials: still "not authorized"

    async def test_a_wrong_password_cannot_knock_a_device_off(self, hub, clients):
        victim, credentials = await device_client(hub, clients, "thermometer", "t-11")
        assert await victim.subscribe("things/thermometer/t-11/cmd") == 1
        intruder = clients(hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], "guess")
        assert await intruder.connect(expect_success=False) == 135
        await hub.engine.publish("things/thermometer/t-11/cmd", b'{"command": "reboot"}', qos=1)
        messages = await victim.wait_messages(1)
        assert messages[0].topic == "things/thermometer/t-11/cmd" and victim.connected

    async def test_inactive_device_is_refused(self, hub, clients):
        device, credentials = await provision_device("thermometer", "t-12")
        device.is_active = False
        await database_sync_to_async(device.save)()
        client = clients(
            hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], credentials["mqtt_password"]
        )
        assert await client.connect(expect_success=False) == 135

    async def test_device_publishes_only_to_its_own_topics(self, hub, clients):
        await provision_device("thermometer", "t-13")
        client, _ = await device_client(hub, clients, "thermometer", "t-14")
        for topic in (
            "things/thermometer/t-13/data",
            "things/thermometer/t-13/status",
            "things/thermometer/t-14/cmd",
            "things/hygrometer/t-14/data",
            "elsewhere/x",
        ):
            await client.publish(topic, json.dumps({"temperature": 1, "status": "error"}))
        await client.publish("things/thermometer/t-14/data", json.dumps({"temperature": 1}))
        await hub.router.flush()
        stored = await rows(ThermometerMessage)
        assert [m["topic"] for m in stored] == ["things/thermometer/t-14/data"]

    async def test_device_subscribes_only_to_its_own_cmd_topic(self, hub, clients):
        client, _ = await device_client(hub, clients, "thermometer", "t-15")
        assert await client.subscribe("things/thermometer/t-16/cmd") == 0x80
        assert await client.subscribe("things/+/+/cmd") == 0x80
        assert await client.subscribe("things/thermometer/t-15/data") == 0x80
        assert await client.subscribe("#") == 0x80
        assert await client.subscribe("things/thermometer/t-15/cmd", qos=1) == 1
        assert client.connected, "a refused subscription leaves the connection usable"

    async def test_a_will_on_another_devices_topic_is_refused(self, hub, clients):
        await provision_device("thermometer", "t-17")
        _, credentials = await provision_device("thermometer", "t-18")
        client = clients(
            hub.engine.port,
            credentials["mqtt_username"],
            credentials["mqtt_username"],
            credentials["mqtt_password"],
            will=("things/thermometer/t-17/status", '{"status":"error"}'),
        )
        assert await client.connect(expect_success=False) == 135
        ok = clients(
            hub.engine.port,
            credentials["mqtt_username"],
            credentials["mqtt_username"],
            credentials["mqtt_password"],
            will=("things/thermometer/t-18/status", '{"status":"offline"}'),
        )
        await ok.connect()

    async def test_nobody_but_the_hub_publishes_commands(self, hub, clients):
        await make_service_user("dashboard", "pw-1")
        device, _ = await device_client(hub, clients, "thermometer", "t-19")
        await device.subscribe("things/thermometer/t-19/cmd")
        service = clients(hub.engine.port, "dash", "dashboard", "pw-1")
        await service.connect()
        await service.publish("things/thermometer/t-19/cmd", b'{"command": "reboot"}')
        await asyncio.sleep(0.3)
        assert device.messages == []
        await hub.engine.publish("things/thermometer/t-19/cmd", b'{"command": "reboot"}')
        assert (await device.wait_messages(1))[0].payload == b'{"command": "reboot"}'

    async def test_service_client_reads_the_device_namespace(self, hub, clients):
        await make_service_user("node-red", "pw-2")
        service = clients(hub.engine.port, "nr", "node-red", "pw-2")
        await service.connect()
        assert await service.subscribe("things/#", qos=1) == 1
        device, _ = await device_client(hub, clients, "thermometer", "t-20")
        await device.publish("things/thermometer/t-20/data", b'{"temperature": 5}')
        messages = await service.wait_messages(1)
        assert messages[0].topic == "things/thermometer/t-20/data"

    async def test_user_without_the_permission_is_refused(self, hub, clients):
        await make_service_user("visitor", "pw-3", permitted=False)
        client = clients(hub.engine.port, "v", "visitor", "pw-3")
        assert await client.connect(expect_success=False) == 135

    async def test_rotating_credentials_disconnects_the_live_session(self, hub, clients):
        client, _ = await device_client(hub, clients, "thermometer", "t-21")
        await provision_device("thermometer", "t-21")  # provisioning again rotates the secrets
        await client.wait_disconnected()

    async def test_deactivating_disconnects_the_live_session(self, hub, clients):
        client, _ = await device_client(hub, clients, "thermometer", "t-22")

        @database_sync_to_async
        def deactivate():
            from tests.testapp.models import ThermometerDevice

            device = ThermometerDevice.objects.get(device_id="t-22")
            device.is_active = False
            device.save()

        await deactivate()
        await client.wait_disconnected()


class TestAnonymous:
    @pytest.fixture
    def hub_settings_override(self):
        return {"ALLOW_ANONYMOUS": True, "ANONYMOUS_DENY": ["secret/#"]}

    async def test_anonymous_only_outside_the_namespace_and_deny_list(self, hub, clients):
        anonymous = clients(hub.engine.port, "anon-1")
        await anonymous.connect()
        assert await anonymous.subscribe("things/#") == 0x80
        assert await anonymous.subscribe("secret/x") == 0x80
        assert await anonymous.subscribe("lab/#", qos=1) == 1
        await anonymous.publish("lab/bench", b"hello")
        assert (await anonymous.wait_messages(1))[0].payload == b"hello"
        await device_client(hub, clients, "thermometer", "t-30")
        await anonymous.publish("things/thermometer/t-30/data", b'{"temperature": 1}')
        await asyncio.sleep(0.3)
        await hub.router.flush()
        assert await rows(ThermometerMessage) == []
