"""MQTT 5 properties of devices' messages through an external broker: both of the client's ways of reading a
PUBLISH give the router the same thing, and on a real Mosquitto with dynamic security (the hub in-process
with the external engine) a reply that names its command by Correlation Data alone moves the command to
``replied``, and a message's Content Type, Correlation Data and User Properties are stored on its row, as
the embedded broker does."""

import asyncio
import io
import threading
import urllib.parse
import uuid

import paho.mqtt.client as paho
import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.test import override_settings
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hubserver.brokers.connection import BrokerAddress
from hubserver.brokers.mqtt import message_properties
from hubserver.brokers.mqtt_client import FLAGS, BrokerClient
from hubserver.conf import EXTERNAL_ENGINE
from hubserver.hub import Hub
from hubserver.routing.properties import MessageProperties
from plugins.mqtt5.codec import encode_publish
from tests.conftest import provision_device
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

TOPIC = "things/thermometer/t-1/data"


def _read(packets):
    """What ``on_publish`` gets for each PUBLISH, fed as bytes to the client's packet handler."""
    address = BrokerAddress("default", "127.0.0.1", 1883, "", "", "probe", 30, False, "", "", "")
    got = []
    client = BrokerClient(address, lambda *message: got.append(message))
    for packet in packets:
        client._client._package_handler._handle_packet(packet[0], packet[2:])  # after a 1-byte length
    return got


def test_the_short_path_and_gmqtts_path_give_the_router_the_same_properties():
    plain_qos1 = encode_publish(TOPIC, b"{}", qos=1, packet_id=7)  # the short path
    plain_qos0 = encode_publish(TOPIC, b"{}", qos=0)  # gmqtt's
    full = {
        "content_type": "application/vnd.example+json",
        "correlation_data": b"batch-3",
        "user_property": [("site", "roof"), ("tag", "a"), ("tag", "b")],
    }
    packets = [
        plain_qos1,
        plain_qos0,
        encode_publish(TOPIC, b"{}", qos=1, packet_id=8, properties=full),
        encode_publish(TOPIC, b"{}", qos=0, properties=full),
        encode_publish(TOPIC, b"{}", qos=1, packet_id=9, properties={"correlation_data": b"\xff\x00"}),
        encode_publish(TOPIC, b"{}", qos=1, packet_id=10, properties={"message_expiry_interval": 60}),
    ]
    assert all(len(packet) < 128 for packet in packets)  # one byte of remaining length, as _read assumes
    got = _read(packets)
    assert [(topic, bytes(payload), qos, mid) for topic, payload, qos, _, mid in got] == [
        (TOPIC, b"{}", 1, 7),
        (TOPIC, b"{}", 0, None),
        (TOPIC, b"{}", 1, 8),
        (TOPIC, b"{}", 0, None),
        (TOPIC, b"{}", 1, 9),
        (TOPIC, b"{}", 1, 10),
    ]
    properties = [message[3] for message in got]
    # Without properties both paths give the flags alone, which the engine does not convert at all.
    assert properties[0] == properties[1] == {"dup": 0, "retain": 0}
    assert len(properties[0]) == FLAGS
    expected = MessageProperties("application/vnd.example+json", "batch-3", {"site": "roof", "tag": ["a", "b"]})
    assert message_properties(properties[2]) == message_properties(properties[3]) == expected
    assert message_properties(properties[4]) == MessageProperties(correlation_id="hex:ff00")
    assert message_properties(properties[5]) is None  # properties, none of them stored
    assert message_properties(properties[0]) is None


@pytest.fixture
async def external_hub(mosquitto_url):
    """The hub on the session's Mosquitto under an account of this test's own (set up with the plugin's
    admin account), its own client id and share group: other tests on the same Mosquitto take nothing of
    its messages."""
    parts = urllib.parse.urlsplit(mosquitto_url)
    tag = uuid.uuid4().hex[:8]
    entry = {
        "ENGINE": EXTERNAL_ENGINE,
        "HOST": parts.hostname,
        "PORT": parts.port,
        "USERNAME": f"hub-props-{tag}",
        "PASSWORD": f"secret-{tag}",
        "CLIENT_ID": f"hub-props-{tag}",
        "SHARE_GROUP": f"props-{tag}",
    }
    with override_settings(HUBSERVER={"BROKERS": {"default": entry}}):
        admin = ["--admin-username", urllib.parse.unquote(parts.username)]
        admin += ["--admin-password", urllib.parse.unquote(parts.password)]
        await asyncio.to_thread(call_command, "broker", "setup", *admin, stdout=io.StringIO())
        hub = Hub()
        await hub.start()
        try:
            yield parts.port, tag
        finally:
            await hub.stop()


class Device:
    """A provisioned device as paho MQTT 5 firmware would connect it to Mosquitto."""

    def __init__(self, port, device_id, credentials):
        username = credentials["mqtt_username"]
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=username, protocol=paho.MQTTv5)
        self.client.username_pw_set(username, credentials["mqtt_password"])
        self.topics = {kind: f"things/thermometer/{device_id}/{kind}" for kind in ("data", "reply", "cmd")}
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.commands = []
        self.got_command = threading.Event()
        self.client.on_connect = lambda c, u, flags, code, p: self.connected.set()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subscribed.set()
        self.client.on_message = lambda c, u, message: (self.commands.append(message), self.got_command.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    async def ready(self):
        assert await asyncio.to_thread(self.connected.wait, 10), "the device did not connect to Mosquitto"

    async def publish(self, kind, payload, qos=1, **properties):
        """Publish with MQTT 5 properties (paho's names); at QoS 1 return once Mosquitto acknowledged."""
        props = Properties(PacketTypes.PUBLISH)
        for name, value in properties.items():
            setattr(props, name, value)
        info = self.client.publish(self.topics[kind], payload, qos=qos, properties=props if properties else None)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.rc == paho.MQTT_ERR_SUCCESS

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@database_sync_to_async
def inbound(device_id):
    return list(ThermometerMessage.objects.filter(device__device_id=device_id, direction="inbound").order_by("pk"))


@database_sync_to_async
def command_row(correlation_id):
    return ThermometerMessage.objects.get(correlation_id=correlation_id, direction="outbound")


async def wait_for(check, what, timeout=15.0):
    for _ in range(int(timeout / 0.05)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_reply_with_correlation_data_only_moves_the_command_to_replied(external_hub):
    port, tag = external_hub
    device_row, credentials = await provision_device("thermometer", f"cd-{tag}")
    device = Device(port, f"cd-{tag}", credentials)
    try:
        await device.ready()
        device.client.subscribe(device.topics["cmd"], qos=1)
        assert await asyncio.to_thread(device.subscribed.wait, 10)
        sent = await Thermometer.asend_command(device_row, "set_mode", {"mode": "manual"})
        assert await asyncio.to_thread(device.got_command.wait, 15), "the command did not reach the device"
        (command,) = device.commands
        correlation = command.properties.CorrelationData
        assert correlation == sent.correlation_id.encode()
        assert command.properties.ContentType == "application/json"  # as the embedded broker sends it
        # Firmware that answers the MQTT 5 way: the correlation data back as a property, none in the JSON.
        await device.publish("reply", b'{"status": "ok", "result": {"mode": "manual"}}', CorrelationData=correlation)

        async def replied():
            row = await command_row(sent.correlation_id)
            return row if row.command_status == "replied" else None

        row = await wait_for(replied, "the command row did not become replied")
        assert row.command_result == {"mode": "manual"}
        (reply,) = await inbound(f"cd-{tag}")
        assert reply.correlation_id == sent.correlation_id
    finally:
        device.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
async def test_a_messages_content_type_and_user_properties_are_stored_on_its_row(external_hub):
    port, tag = external_hub
    device_id = f"up-{tag}"
    _, credentials = await provision_device("thermometer", device_id)
    device = Device(port, device_id, credentials)
    try:
        await device.ready()
        await device.publish(
            "data",
            b'{"temperature": 19.5}',
            ContentType="application/vnd.example+json",
            CorrelationData=b"batch-3",
            UserProperty=[("site", "roof"), ("tag", "a"), ("tag", "b")],
        )
        await device.publish("data", b'{"temperature": 20.5}')  # none: the short path, the defaults
        await device.publish("data", b'{"temperature": 21.5}', qos=0, UserProperty=[("site", "cellar")])
        await device.publish("data", b'{"temperature": 22.5}', CorrelationData=b"\xff\x00")

        async def stored():
            rows = await inbound(device_id)
            return rows if len(rows) == 4 else None

        rows = {row.payload_json["temperature"]: row for row in await wait_for(stored, "four rows")}
        assert rows[19.5].content_type == "application/vnd.example+json"
        assert rows[19.5].correlation_id == "batch-3"
        assert rows[19.5].user_properties == {"site": "roof", "tag": ["a", "b"]}
        assert (rows[20.5].content_type, rows[20.5].correlation_id, rows[20.5].user_properties) == (
            "application/json",
            "",
            {},
        )
        assert rows[21.5].user_properties == {"site": "cellar"}  # QoS 0: gmqtt's own path
        assert rows[22.5].correlation_id == "hex:ff00"  # correlation data that is not text
        assert all(row.processing_status == "completed" for row in rows.values())
    finally:
        device.close()
