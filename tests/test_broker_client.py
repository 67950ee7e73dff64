"""The external engine's MQTT 5 connection (gmqtt with the hub's overrides) against a real Mosquitto:
acknowledgement only when the hub says so, persistent sessions, PUBACK reason codes, and start-up errors
that name the broker and the key."""

import asyncio
import dataclasses
import json
import time
import urllib.parse
import uuid

import pytest

from hubserver.brokers.connection import BrokerAddress, BrokerError
from hubserver.brokers.mqtt_client import NO_MATCHING_SUBSCRIBERS, BrokerClient
from tests.mqtt import free_port

pytestmark = pytest.mark.slow


def _address(url, **changes):
    parts = urllib.parse.urlsplit(url)
    address = BrokerAddress(
        name="default",
        host=parts.hostname,
        port=parts.port,
        username=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        client_id=f"test-{uuid.uuid4().hex[:8]}",
        keepalive=30,
        use_tls=False,
        ca_certs="",
        certfile="",
        keyfile="",
    )
    return dataclasses.replace(address, **changes)


@pytest.fixture
def broker_url(mosquitto_factory):
    """A Mosquitto of the test's own without accounts: these tests are about the client, not about ACLs."""
    return mosquitto_factory(dynamic_security=False).url


class Inbox:
    def __init__(self):
        self.messages = []
        self.arrived = asyncio.Event()

    def __call__(self, topic, payload, qos, properties, mid):
        self.messages.append((topic, bytes(payload), qos, properties, mid))
        self.arrived.set()

    async def wait(self, count, timeout=10.0):
        async def enough():
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)


async def test_messages_are_acknowledged_only_when_the_hub_says_so(broker_url):
    """Unacknowledged QoS 1 messages come back on the next connection of the persistent session; the ones
    the hub acknowledged do not (stock gmqtt acknowledges when its handler returns)."""
    address = _address(broker_url)
    topic = f"probe/{uuid.uuid4().hex[:6]}"
    first = Inbox()
    worker = BrokerClient(address, first)
    await worker.connect()
    await worker.subscribe([topic], qos=1)
    sender = BrokerClient(_address(broker_url), lambda *a: None, persistent=False)
    await sender.connect()
    for n in range(4):
        await sender.publish(topic, f"m{n}".encode(), qos=1)
    await sender.publish(topic, b"", qos=1)
    await first.wait(5)
    assert [(t, payload, qos, properties) for t, payload, qos, properties, _ in first.messages] == [
        (topic, payload, 1, {"dup": 0, "retain": 0}) for payload in (b"m0", b"m1", b"m2", b"m3", b"")
    ]
    for _, payload, _, _, mid in first.messages:
        if payload in (b"m0", b"m2", b""):
            worker.ack(mid)
    await asyncio.sleep(0.3)
    await worker.disconnect()

    again = Inbox()
    resumed = BrokerClient(address, again)
    await resumed.connect()
    assert resumed.session_present
    await again.wait(2)
    await asyncio.sleep(0.3)
    assert sorted(payload for _, payload, _, _, _ in again.messages) == [b"m1", b"m3"]
    assert all(properties["dup"] == 1 for *_, properties, _ in again.messages)  # sent again
    for *_, mid in again.messages:
        resumed.ack(mid)
    await resumed.disconnect()
    await sender.disconnect()


async def test_publish_returns_the_brokers_reason_code_and_carries_mqtt5_properties(broker_url):
    topic = f"probe/{uuid.uuid4().hex[:6]}/cmd"
    sender = BrokerClient(_address(broker_url), lambda *a: None, persistent=False)
    await sender.connect()
    assert await sender.publish(topic, b"{}", qos=1) == NO_MATCHING_SUBSCRIBERS
    inbox = Inbox()
    receiver = BrokerClient(_address(broker_url), inbox, persistent=False)
    await receiver.connect()
    await receiver.subscribe([topic])
    code = await sender.publish(topic, b"{}", qos=1, correlation_data=b"abc-123", user_property=[("source", "admin")])
    assert code == 0
    await inbox.wait(1)
    properties = inbox.messages[0][3]
    assert properties["correlation_data"] == [b"abc-123"]
    assert properties["user_property"] == [("source", "admin")]
    await receiver.disconnect()
    await sender.disconnect()


async def test_connection_errors_name_the_broker_and_the_key(mosquitto_url, tmp_path):
    cases = [
        (_address(mosquitto_url, password="wrong"), "['PASSWORD']"),
        (_address(mosquitto_url, port=free_port()), "['PORT']"),
        (_address(mosquitto_url, use_tls=True, ca_certs=str(tmp_path / "missing.crt")), "['CA_CERTS']"),
        (_address(mosquitto_url, use_tls=True, certfile=str(tmp_path / "missing.crt")), "['CERTFILE']"),
    ]
    for address, key in cases:
        client = BrokerClient(address, lambda *a: None)
        with pytest.raises(BrokerError) as error:
            await client.connect(timeout=5)
        assert "broker 'default'" in str(error.value) and key in str(error.value)


def test_seed_api_connect_subscribe_publish_with_correlation_and_user_properties(broker_url):
    """``MQTTBroker(name=...)`` used on its own, as django-devicehub code does: connect, a message handler,
    subscribe, publish with correlation_id and user_properties (real MQTT 5 properties), disconnect."""
    import threading

    import paho.mqtt.client as paho
    from django.test import override_settings

    from hubserver.brokers.mqtt import MQTTBroker
    from hubserver.conf import EXTERNAL_ENGINE

    parts = urllib.parse.urlsplit(broker_url)
    entry = {"ENGINE": EXTERNAL_ENGINE, "HOST": parts.hostname, "PORT": parts.port, "DYNAMIC_SECURITY": False}
    brokers = {"default": entry}
    device = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="seed-device", protocol=paho.MQTTv5)
    got = threading.Event()
    received = []
    device.on_message = lambda c, u, message: (received.append(message), got.set())
    device.connect(parts.hostname, parts.port)
    device.subscribe("things/weatherstation/ws-001/cmd", qos=1)
    device.loop_start()
    seen = []
    with override_settings(HUBSERVER={"BROKERS": brokers}):
        broker = MQTTBroker(name="default", client_id=f"seed-{uuid.uuid4().hex[:6]}")
        broker.set_message_handler(lambda b, topic, payload, qos, properties: seen.append((topic, bytes(payload))))
        broker.connect()
        try:
            broker.subscribe("probe/#")
            broker.loop_start()
            code = broker.publish(
                "things/weatherstation/ws-001/cmd",
                {"command": "reboot"},
                qos=1,
                correlation_id="abc-123",
                user_properties={"source": "admin"},
            )
            assert code == 0
            assert got.wait(10)
            message = received[0]
            assert json.loads(message.payload) == {"command": "reboot"}
            assert message.properties.CorrelationData == b"abc-123"
            assert message.properties.UserProperty == [("source", "admin")]
            device.publish("probe/x", b"hello", qos=1).wait_for_publish(10)
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert seen == [("probe/x", b"hello")]
        finally:
            broker.loop_stop()
            device.loop_stop()
            device.disconnect()


async def test_a_failed_start_leaves_the_session_free_for_the_next_one(broker_url, tmp_path, monkeypatch):
    """The first start fails (the broker is not there yet); a second start in the same process, with the
    same client id, connects: the failed one held nothing."""
    from django.test import override_settings

    from hubserver.brokers.mqtt import MQTTBroker
    from hubserver.conf import EXTERNAL_ENGINE

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    parts = urllib.parse.urlsplit(broker_url)
    entry = {"ENGINE": EXTERNAL_ENGINE, "HOST": parts.hostname, "DYNAMIC_SECURITY": False, "CLIENT_ID": "retry-1"}
    absent = override_settings(HUBSERVER={"BROKERS": {"default": {**entry, "PORT": free_port()}}})
    with absent, pytest.raises(BrokerError, match=r"\['PORT'\]"):
        await MQTTBroker(name="default").start()
    with override_settings(HUBSERVER={"BROKERS": {"default": {**entry, "PORT": parts.port}}}):
        broker = MQTTBroker(name="default")
        await broker.start()
        await broker.stop()
