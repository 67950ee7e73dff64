"""What the hub does with MQTT 5: its limits advertised in CONNACK and enforced with reason codes, a
device's message properties stored on its Message row, commands carrying correlation data and a
response topic to MQTT 5 devices (and still their JSON envelope to 3.1.1 ones), replies matched by
correlation data, and the DISCONNECTs the hub sends counted on /metrics."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from hubserver.plugins.mqtt5 import codec, reasons

from tests.conftest import device_client, provision_device
from tests.test_metrics import scrape, value
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)


async def raw_device(hub, raw, device_id, **kwargs):
    _, credentials = await provision_device("thermometer", device_id)
    client = raw(hub.engine.port)
    username = credentials["mqtt_username"]
    connack = await client.connect(username, username, credentials["mqtt_password"], **kwargs)
    assert connack.reason_code == reasons.SUCCESS
    return client, connack


@database_sync_to_async
def inbound(device_id):
    return list(ThermometerMessage.objects.filter(device__device_id=device_id, direction="inbound").order_by("pk"))


@database_sync_to_async
def command_row(correlation_id):
    return ThermometerMessage.objects.get(correlation_id=correlation_id, direction="outbound")


@database_sync_to_async
def device_row(device_id):
    return Thermometer._device_model.objects.get(device_id=device_id)


# --- the hub's limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PACKET_SIZE": 4096, "MAX_CONNECT_SIZE": 1024}], indirect=True)
async def test_connack_advertises_every_limit_the_hub_enforces(hub, raw):
    _, connack = await raw_device(hub, raw, "lim-1", properties={"request_response_information": 1})
    properties = connack.properties
    assert properties["maximum_packet_size"] == 4096  # MAX_PACKET_SIZE
    assert properties["receive_maximum"] >= 1
    assert properties["topic_alias_maximum"] >= 1
    assert properties["retain_available"] == 1
    assert properties["wildcard_subscription_available"] == 1
    assert properties["subscription_identifier_available"] == 1
    assert properties["shared_subscription_available"] == 1
    assert "maximum_qos" not in properties  # QoS 2 is supported
    assert properties["response_information"] == "things/thermometer/lim-1/reply"  # where its replies go


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PACKET_SIZE": 256, "MAX_CONNECT_SIZE": 256}], indirect=True)
async def test_a_packet_over_the_maximum_packet_size_is_disconnected_with_0x95_before_its_body(hub, raw):
    client, _ = await raw_device(hub, raw, "big-1")
    client.send(codec.Publish("things/thermometer/big-1/data", b'{"temperature": 1}', qos=1, packet_id=1))
    assert (await client.read_type(codec.Puback)).reason_code == reasons.SUCCESS
    # A fixed header announcing 10 MB, and nothing after it: the hub answers from the header alone.
    client.send(bytes((0x32, 0x80, 0xDA, 0xC4, 0x04)))
    disconnect = await client.read_type(codec.Disconnect)
    assert disconnect.reason_code == reasons.PACKET_TOO_LARGE
    assert await client.closed()
    samples = await scrape()
    assert value(samples, "hubserver_mqtt5_disconnects_total", reason="packet_too_large") == 1
    assert value(samples, "hubserver_mqtt_closed_total", reason="packet_too_large") == 1


@pytest.mark.parametrize("hub_settings_override", [{"MAX_AWAITING_REL": 2}], indirect=True)
async def test_qos2_messages_over_max_awaiting_rel_are_refused_with_0x97_and_the_connection_stays(hub, raw):
    client, _ = await raw_device(hub, raw, "rel-1")
    topic = "things/thermometer/rel-1/data"
    for packet_id in (1, 2):
        client.send(codec.Publish(topic, b'{"uptime": %d}' % packet_id, qos=2, packet_id=packet_id))
        assert (await client.read_type(codec.Pubrec)).reason_code == reasons.SUCCESS
    client.send(codec.Publish(topic, b'{"uptime": 3}', qos=2, packet_id=3))
    refused = await client.read_type(codec.Pubrec)
    assert (refused.packet_id, refused.reason_code) == (3, reasons.QUOTA_EXCEEDED)
    assert "reason_string" in refused.properties
    client.send(codec.Pubrel(1))
    assert (await client.read_type(codec.Pubcomp)).packet_id == 1
    client.send(codec.Publish(topic, b'{"uptime": 4}', qos=2, packet_id=4))  # room again
    assert (await client.read_type(codec.Pubrec)).reason_code == reasons.SUCCESS
    assert [m.payload_json["uptime"] for m in await inbound("rel-1")] == [1, 2, 4]


async def test_a_service_client_publishing_where_it_may_not_gets_0x87_on_amqtts_path_too(hub, service, v5, raw):
    client = v5(hub.engine.port, "svc-client", *service)
    await client.connect()
    code, properties = await client.publish("things/thermometer/x-1/data", b"{}", qos=1)
    assert code == reasons.NOT_AUTHORIZED
    assert properties.ReasonString
    code, _ = await client.publish("lab/anything", b"{}", qos=1)
    assert code == reasons.SUCCESS
    assert client.connected
    qos2 = raw(hub.engine.port)
    await qos2.connect("svc-qos2", *service)
    qos2.send(codec.Publish("things/thermometer/x-1/data", b"{}", qos=2, packet_id=5))
    pubrec = await qos2.read_type(codec.Pubrec)
    assert (pubrec.packet_id, pubrec.reason_code) == (5, reasons.NOT_AUTHORIZED)  # ends the exchange


async def test_a_protocol_error_is_disconnected_after_what_was_stored_before_it_is_acknowledged(hub, raw):
    client, _ = await raw_device(hub, raw, "pe-1")
    topic = "things/thermometer/pe-1/data"
    first = codec.encode(codec.Publish(topic, b'{"uptime": 1}', qos=1, packet_id=7))
    bad = codec.encode(codec.Publish(topic, b'{"uptime": 2}', qos=1, packet_id=8, properties={"topic_alias": 99}))
    client.send(first + bad)  # in one segment: the second arrives before the first is committed
    puback = await client.read()
    assert isinstance(puback, codec.Puback) and puback.packet_id == 7
    disconnect = await client.read()
    assert isinstance(disconnect, codec.Disconnect) and disconnect.reason_code == reasons.TOPIC_ALIAS_INVALID
    assert "reason_string" in disconnect.properties
    assert await client.closed()
    assert [m.payload_json["uptime"] for m in await inbound("pe-1")] == [1]


# --- properties stored -------------------------------------------------------------------------------


async def test_a_devices_properties_are_stored_on_its_message_row(hub, raw):
    client, _ = await raw_device(hub, raw, "prop-1")
    topic = "things/thermometer/prop-1/data"
    client.send(
        codec.Publish(
            topic,
            b'{"temperature": 20.5}',
            qos=1,
            packet_id=1,
            properties={
                "content_type": "application/vnd.example+json",
                "correlation_data": b"batch-17",
                "user_property": [("site", "north"), ("tag", "a"), ("tag", "b")],
            },
        )
    )
    client.send(codec.Publish(topic, b'{"temperature": 20.6}', qos=1, packet_id=2))
    client.send(
        codec.Publish(topic, b'{"temperature": 20.7}', qos=1, packet_id=3, properties={"correlation_data": b"\xff\x00"})
    )
    for _ in range(3):
        assert (await client.read_type(codec.Puback)).reason_code == reasons.SUCCESS
    with_props, plain, binary = await inbound("prop-1")
    assert with_props.content_type == "application/vnd.example+json"
    assert with_props.correlation_id == "batch-17"
    assert with_props.user_properties == {"site": "north", "tag": ["a", "b"]}
    assert with_props.processing_status == "completed"
    assert (plain.content_type, plain.correlation_id, plain.user_properties) == ("application/json", "", {})
    assert binary.correlation_id == "hex:ff00"  # correlation data that is not text


# --- commands and replies ----------------------------------------------------------------------------


async def test_a_command_to_an_mqtt5_device_carries_correlation_data_and_a_response_topic(hub, v5):
    _, credentials = await provision_device("thermometer", "cmd5-1")
    username = credentials["mqtt_username"]
    device = v5(hub.engine.port, username, username, credentials["mqtt_password"])
    await device.connect()
    await device.subscribe("things/thermometer/cmd5-1/cmd", qos=1)
    message = await Thermometer.asend_command(await device_row("cmd5-1"), "set_mode", {"mode": "manual"})
    (received,) = await device.wait_messages(1)
    assert received.prop("CorrelationData") == message.correlation_id.encode()
    assert received.prop("ResponseTopic") == "things/thermometer/cmd5-1/reply"
    assert received.prop("ContentType") == "application/json"
    assert ("command", "set_mode") in received.prop("UserProperty")
    assert json.loads(received.payload)["payload"] == {"mode": "manual"}  # the envelope is there too
    # The reply names its command by correlation data alone: no correlation_id in its JSON.
    code, _ = await device.publish(
        received.prop("ResponseTopic"),
        b'{"status": "ok", "result": {"mode": "manual"}}',
        CorrelationData=received.prop("CorrelationData"),
    )
    assert code == reasons.SUCCESS
    for _ in range(200):
        row = await command_row(message.correlation_id)
        if row.command_status == "replied":
            break
        await asyncio.sleep(0.05)
    assert (row.command_status, row.command_result) == ("replied", {"mode": "manual"})


async def test_a_command_to_a_311_device_keeps_its_json_envelope_and_json_reply(hub, clients):
    client, _ = await device_client(hub, clients, "thermometer", "cmd4-1")
    await client.subscribe("things/thermometer/cmd4-1/cmd", qos=1)
    message = await Thermometer.asend_command(await device_row("cmd4-1"), "set_mode", {"mode": "auto"})
    (received,) = await client.wait_messages(1)
    envelope = json.loads(received.payload)
    assert envelope == {"command": "set_mode", "payload": {"mode": "auto"}, "correlation_id": message.correlation_id}
    reply = {"correlation_id": message.correlation_id, "status": "error", "result": "busy"}
    await client.publish("things/thermometer/cmd4-1/reply", json.dumps(reply).encode())
    for _ in range(200):
        row = await command_row(message.correlation_id)
        if row.command_status == "failed":
            break
        await asyncio.sleep(0.05)
    assert (row.command_status, row.command_result) == ("failed", "busy")
