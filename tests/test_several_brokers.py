"""Several external brokers (a ``default`` one and a ``lorawan`` one for LoRa types) on real Mosquittos: a type's
``Meta.broker`` decides which broker its topics are subscribed on, where its commands go, and what its
provisioning prints."""

import asyncio
import json
import threading
import urllib.parse

import paho.mqtt.client as paho
import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from hubserver.access.provisioning import connection_info
from hubserver.commands.sending import asend_command
from hubserver.conf import EXTERNAL_ENGINE
from hubserver.hub import Hub
from tests.conftest import provision_device
from tests.testapp.devices import Thermometer
from tests.testapp.models import HygrometerMessage, ThermometerMessage

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _entry(server, client_id):
    parts = urllib.parse.urlsplit(server.url)
    # Anonymous Mosquittos of the test's own: no device accounts to keep on them.
    return {
        "ENGINE": EXTERNAL_ENGINE,
        "HOST": parts.hostname,
        "PORT": parts.port,
        "CLIENT_ID": client_id,
        "DYNAMIC_SECURITY": False,
    }


def _client(server):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", server.extra["port"])
    client.loop_start()
    return client


async def _count(model, **filters):
    return await database_sync_to_async(model.objects.filter(**filters).count)()


async def test_a_types_broker_carries_its_topics_commands_and_provisioning(mosquitto_factory, monkeypatch):
    default, lorawan = mosquitto_factory(dynamic_security=False), mosquitto_factory(dynamic_security=False)
    monkeypatch.setattr(Thermometer._meta, "broker", "lorawan")
    brokers = {"default": _entry(default, "several-default"), "lorawan": _entry(lorawan, "several-lorawan")}
    with override_settings(HUBSERVER={"BROKERS": brokers}):
        hub = Hub()
        await hub.start()
        try:
            thermometer, credentials = await provision_device("thermometer", "t-lora")
            await provision_device("hygrometer", "h-default")
            info = connection_info(thermometer, credentials)
            assert (info["host"], info["mqtt_port"]) == ("127.0.0.1", lorawan.extra["port"])

            on_default, on_lorawan = _client(default), _client(lorawan)
            on_default.publish("things/thermometer/t-lora/data", b'{"temperature": 1}', qos=1).wait_for_publish(5)
            on_lorawan.publish("things/thermometer/t-lora/data", b'{"temperature": 2}', qos=1).wait_for_publish(5)
            on_default.publish("things/hygrometer/h-default/data", b'{"humidity": 3}', qos=1).wait_for_publish(5)
            for _ in range(100):
                if await _count(ThermometerMessage) and await _count(HygrometerMessage):
                    break
                await asyncio.sleep(0.05)
            await hub.router.flush()
            payloads = await database_sync_to_async(
                lambda: [m.payload_json for m in ThermometerMessage.objects.filter(direction="inbound")]
            )()
            assert payloads == [{"temperature": 2}]  # subscribed on lorawan only
            assert await _count(HygrometerMessage, direction="inbound") == 1

            got = threading.Event()
            commands = []
            device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="thermometer.t-lora", protocol=paho.MQTTv5)
            device.on_message = lambda c, u, m: (commands.append(m), got.set())
            device.connect("127.0.0.1", lorawan.extra["port"])
            device.subscribe("things/thermometer/t-lora/cmd", qos=1)
            device.loop_start()
            await asyncio.sleep(0.3)
            sent = await asend_command(thermometer, "reboot")
            assert await asyncio.to_thread(got.wait, 10), "the command did not reach the lorawan broker"
            assert json.loads(commands[0].payload)["correlation_id"] == sent.correlation_id
            assert commands[0].properties.CorrelationData.decode() == sent.correlation_id
            for client in (on_default, on_lorawan, device):
                client.loop_stop()
                client.disconnect()
        finally:
            await hub.stop()
