"""MQTT 5 on the embedded broker, seen from paho-mqtt 2 in MQTT 5 mode (a device library nobody here
wrote) and, for what a library hides, a raw MQTT 5 client: properties, reason codes both ways, session
expiry, topic aliases, shared subscriptions, subscription options, Will delay, and the DISCONNECTs the
hub sends with a reason."""

import asyncio

import pytest
from channels.db import database_sync_to_async
from hubserver.plugins.mqtt5 import codec, reasons

from tests.conftest import provision_device
from tests.mqtt import RawClient, until

pytestmark = pytest.mark.django_db(transaction=True)


async def device5(hub, v5, device_id="t-1", **kwargs):
    _, credentials = await provision_device("thermometer", device_id)
    username = credentials["mqtt_username"]
    client = v5(hub.engine.port, username, username, credentials["mqtt_password"], **kwargs)
    await client.connect()
    return client, credentials


@database_sync_to_async
def messages_of(device_id):
    from hubserver import registry

    model = registry.get_models("thermometer")[2]
    return list(model.objects.filter(device__device_id=device_id, direction="inbound").order_by("pk"))


async def test_message_properties_reach_an_mqtt5_subscriber_with_its_subscription_identifier(hub, service, v5):
    subscriber = v5(hub.engine.port, "sub", *service)
    await subscriber.connect()
    assert await subscriber.subscribe("lab/#", qos=1, subscription_id=42) == 1
    publisher = v5(hub.engine.port, "pub", *service)
    await publisher.connect()
    code, _ = await publisher.publish(
        "lab/x",
        b"hello",
        PayloadFormatIndicator=1,
        ContentType="text/plain",
        ResponseTopic="lab/answers",
        CorrelationData=b"req-1",
        UserProperty=[("site", "roof"), ("site", "cellar")],
        MessageExpiryInterval=120,
    )
    assert code == reasons.SUCCESS
    (message,) = await subscriber.wait_messages(1)
    assert (message.topic, message.payload, message.qos) == ("lab/x", b"hello", 1)
    assert message.prop("PayloadFormatIndicator") == 1
    assert message.prop("ContentType") == "text/plain"
    assert message.prop("ResponseTopic") == "lab/answers"
    assert message.prop("CorrelationData") == b"req-1"
    assert message.prop("UserProperty") == [("site", "roof"), ("site", "cellar")]  # order kept [MQTT-3.3.2-18]
    assert 0 < message.prop("MessageExpiryInterval") <= 120
    assert message.prop("SubscriptionIdentifier") == [42]


async def test_mqtt5_and_311_clients_receive_each_others_messages(hub, service, v5, clients):
    old = clients(hub.engine.port, "old", *service)
    await old.connect()
    await old.subscribe("mixed/#", qos=1)
    new = v5(hub.engine.port, "new", *service)
    await new.connect()
    await new.subscribe("mixed/#", qos=1)
    await new.publish("mixed/from5", b"a", ContentType="text/plain")
    await old.publish("mixed/from4", b"b")
    assert sorted(m.topic for m in await old.wait_messages(2)) == ["mixed/from4", "mixed/from5"]
    received = await new.wait_messages(2)
    assert sorted(m.topic for m in received) == ["mixed/from4", "mixed/from5"]
    from5 = next(m for m in received if m.topic == "mixed/from5")
    assert from5.prop("ContentType") == "text/plain"


async def test_connack_advertises_the_hubs_limits_and_assigns_a_client_id(hub, service, raw):
    client = raw(hub.engine.port)
    connack = await client.connect("", *service)
    assert connack.reason_code == reasons.SUCCESS
    assert connack.properties["receive_maximum"] >= 1
    assert connack.properties["topic_alias_maximum"] >= 1
    assigned = connack.properties["assigned_client_identifier"]  # [MQTT-3.1.3-7]
    assert assigned


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PACKET_SIZE": 8192, "MAX_CONNECT_SIZE": 1024}], indirect=True)
async def test_paho_sees_the_hubs_limits_in_connack(hub, v5):
    device, _ = await device5(hub, v5, "lim-paho", connect_properties={"RequestResponseInformation": 1})
    connack = device.connack_properties
    assert connack.MaximumPacketSize == 8192  # MAX_PACKET_SIZE
    assert connack.ReceiveMaximum >= 1
    assert connack.TopicAliasMaximum >= 1
    assert (connack.SharedSubscriptionAvailable, connack.SubscriptionIdentifierAvailable) == (1, 1)
    assert connack.ResponseInformation == "things/thermometer/lim-paho/reply"
    # What it advertises it enforces: a PUBLISH over the maximum is refused with DISCONNECT 0x95.
    await device.publish(
        "things/thermometer/lim-paho/data", b'{"temperature": 1, "n": "' + b"x" * 9000 + b'"}', wait=False
    )
    await until(lambda: not device.connected, message="the disconnect")
    assert device.disconnect_reason == reasons.PACKET_TOO_LARGE


async def test_wrong_credentials_get_connack_0x86(hub, service, v5):
    client = v5(hub.engine.port, "intruder", "svc", "wrong")
    assert await client.connect(expect_success=False) == reasons.BAD_USER_NAME_OR_PASSWORD


async def test_a_device_publish_is_acknowledged_after_commit_with_the_reason_it_was_refused(
    hub, v5, hub_settings_override
):
    device, _ = await device5(hub, v5)
    code, _ = await device.publish("things/thermometer/t-1/data", b'{"temperature": 21.5}', ContentType="json")
    assert code == reasons.SUCCESS
    assert len(await messages_of("t-1")) == 1  # committed before the PUBACK
    code, _ = await device.publish("things/thermometer/t-2/data", b'{"temperature": 1}')
    assert code == reasons.NOT_AUTHORIZED  # another device's topic: refused by the ACL
    code, _ = await device.publish("things/thermometer/t-1/data", b"\xff\xfe", PayloadFormatIndicator=1)
    assert code == reasons.PAYLOAD_FORMAT_INVALID  # says UTF-8, is not
    assert len(await messages_of("t-1")) == 1
    assert device.connected  # refusals do not close the connection


@pytest.fixture
def small_payloads(hub_settings_override):
    hub_settings_override.update(MAX_PAYLOAD_SIZE=64)


async def test_a_payload_over_the_limit_gets_quota_exceeded_with_a_reason_string(small_payloads, hub, v5):
    device, _ = await device5(hub, v5)
    code, properties = await device.publish(
        "things/thermometer/t-1/data", b'{"temperature": 1, "x": "' + b"y" * 80 + b'"}'
    )
    assert code == reasons.QUOTA_EXCEEDED
    assert "MAX_PAYLOAD_SIZE" in properties.ReasonString
    assert await messages_of("t-1") == []


async def test_session_expiry_keeps_subscriptions_and_queued_messages_until_it_elapses(hub, service, v5):
    first = v5(hub.engine.port, "keeper", *service, session_expiry=60)
    await first.connect()
    await first.subscribe("lab/p", qos=1)
    await first.disconnect()
    await hub.engine.publish("lab/p", b"while you were away", qos=1)
    second = v5(hub.engine.port, "keeper", *service, clean_start=False, session_expiry=60)
    await second.connect()
    assert second.session_present
    (message,) = await second.wait_messages(1)
    assert (message.payload, message.retain) == (b"while you were away", False)


async def test_a_session_with_expiry_0_ends_with_its_connection(hub, service, v5):
    first = v5(hub.engine.port, "fleeting", *service)  # no Session Expiry Interval: 0
    await first.connect()
    await first.subscribe("lab/q", qos=1)
    await first.disconnect()
    second = v5(hub.engine.port, "fleeting", *service, clean_start=False)
    await second.connect()
    assert second.session_present is False


@pytest.mark.slow  # waits for a session to expire
async def test_an_expired_session_is_gone(hub, service, v5):
    first = v5(hub.engine.port, "brief", *service, session_expiry=1)
    await first.connect()
    await first.subscribe("lab/e", qos=1)
    await first.disconnect()
    await until(lambda: "brief" not in hub.engine.broker._sessions, timeout=5, message="the session to expire")
    second = v5(hub.engine.port, "brief", *service, clean_start=False, session_expiry=1)
    await second.connect()
    assert second.session_present is False


async def test_incoming_topic_aliases_are_resolved_per_connection(hub, service, v5, raw):
    subscriber = v5(hub.engine.port, "aliases-sub", *service)
    await subscriber.connect()
    await subscriber.subscribe("alias/#", qos=0)
    client = raw(hub.engine.port)
    assert (await client.connect("aliaser", *service)).reason_code == 0
    client.send(codec.Publish("alias/long/topic", b"1", properties={"topic_alias": 3}))
    client.send(codec.Publish("", b"2", properties={"topic_alias": 3}))
    messages = await subscriber.wait_messages(2)
    assert [(m.topic, m.payload) for m in messages] == [("alias/long/topic", b"1"), ("alias/long/topic", b"2")]
    client.send(codec.Publish("", b"3", properties={"topic_alias": 9}))  # never defined
    disconnect = await client.read_type(codec.Disconnect)
    assert disconnect.reason_code == reasons.PROTOCOL_ERROR
    assert await client.closed()


async def test_a_topic_alias_above_the_maximum_is_disconnected_with_0x94(hub, service, raw):
    client = raw(hub.engine.port)
    connack = await client.connect("aliaser", *service)
    too_big = connack.properties["topic_alias_maximum"] + 1
    client.send(codec.Publish("a/b", b"x", properties={"topic_alias": too_big}))
    disconnect = await client.read_type(codec.Disconnect)
    assert disconnect.reason_code == reasons.TOPIC_ALIAS_INVALID
    assert await client.closed()


async def test_outgoing_topic_aliases_up_to_the_clients_maximum(hub, service, raw):
    client = raw(hub.engine.port)
    await client.connect("receiver", *service, properties={"topic_alias_maximum": 1})
    client.send(codec.Subscribe(1, [codec.Subscription("out/#", 0)]))
    assert (await client.read_type(codec.Suback)).reason_codes == [0]
    for topic in ("out/a", "out/a", "out/b"):
        await hub.engine.publish(topic, b"x", qos=0)
    first, second, third = [await client.read_type(codec.Publish) for _ in range(3)]
    assert (first.topic, first.properties["topic_alias"]) == ("out/a", 1)  # defines alias 1
    assert (second.topic, second.properties["topic_alias"]) == ("", 1)  # uses it
    assert third.topic == "out/b" and "topic_alias" not in third.properties  # no room for a second alias


async def test_the_clients_receive_maximum_limits_unacknowledged_deliveries(hub, service, raw):
    client = raw(hub.engine.port)
    await client.connect("slow", *service, properties={"receive_maximum": 1})
    client.send(codec.Subscribe(1, [codec.Subscription("rm/#", 1)]))
    await client.read_type(codec.Suback)
    for n in range(3):
        await hub.engine.publish("rm/x", str(n).encode(), qos=1)
    first = await client.read_type(codec.Publish)
    assert first.payload == b"0"
    assert await client.silent(0.5), "a second PUBLISH before the first PUBACK [MQTT-3.3.4-9]"
    client.send(codec.Puback(first.packet_id))
    assert (await client.read_type(codec.Publish)).payload == b"1"


async def test_shared_subscriptions_deliver_each_message_to_one_member_of_the_group(hub, service, v5, clients):
    members = [v5(hub.engine.port, f"worker-{n}", *service) for n in range(2)]
    old = clients(hub.engine.port, "worker-311", *service)
    for member in members:
        await member.connect()
        assert await member.subscribe("$share/workers/jobs/#", qos=1) == 1
    await old.connect()
    assert await old.subscribe("$share/workers/jobs/#", qos=1) == 1  # a 3.1.1 client may share too
    watcher = v5(hub.engine.port, "watcher", *service)
    await watcher.connect()
    await watcher.subscribe("jobs/#", qos=1)
    for n in range(9):
        await hub.engine.publish(f"jobs/{n}", str(n).encode(), qos=1)
    await watcher.wait_messages(9)  # an ordinary subscription still gets every message
    everyone = [*members, old]
    await until(lambda: sum(len(c.messages) for c in everyone) >= 9, message="9 shared deliveries")
    await asyncio.sleep(0.2)
    payloads = sorted(m.payload for c in everyone for m in c.messages)
    assert payloads == sorted(str(n).encode() for n in range(9))  # each exactly once
    assert all(c.messages for c in everyone)  # spread over the group


async def test_no_local_and_retain_options(hub, service, v5):
    client = v5(hub.engine.port, "self", *service)
    await client.connect()
    await client.subscribe("loop/#", qos=1, noLocal=True)
    other = v5(hub.engine.port, "other", *service)
    await other.connect()
    await client.publish("loop/mine", b"not for me")
    await other.publish("loop/theirs", b"for me")
    (message,) = await client.wait_messages(1)
    assert message.payload == b"for me"  # [MQTT-3.8.3-3]
    await other.publish("kept/a", b"retained", retain=True)
    keeper = v5(hub.engine.port, "keeper", *service)
    await keeper.connect()
    await keeper.subscribe("kept/#", qos=1, retainAsPublished=True)
    (retained,) = await keeper.wait_messages(1)
    assert retained.retain is True
    await other.publish("kept/a", b"live", retain=True)
    live = (await keeper.wait_messages(2))[1]
    assert (live.payload, live.retain) == (b"live", True)  # Retain As Published [MQTT-3.3.1-12]
    never = v5(hub.engine.port, "never", *service)
    await never.connect()
    await never.subscribe("kept/#", qos=1, retainHandling=2)
    await other.publish("kept/b", b"later", retain=False)
    (only,) = await never.wait_messages(1)
    assert only.payload == b"later"  # Retain Handling 2: no retained message on subscribing


async def test_a_take_over_is_told_session_taken_over(hub, service, v5):
    first = v5(hub.engine.port, "twin", *service)
    await first.connect()
    second = v5(hub.engine.port, "twin", *service)
    await second.connect()
    await first.wait_disconnected()
    assert first.disconnect_reason == reasons.SESSION_TAKEN_OVER


@pytest.mark.slow  # waits out a keepalive
async def test_a_silent_client_is_told_keep_alive_timeout(hub, service, raw):
    client = raw(hub.engine.port)
    await client.connect("silent", *service, keepalive=1)
    disconnect = await client.read_type(codec.Disconnect, timeout=5)
    assert disconnect.reason_code == reasons.KEEP_ALIVE_TIMEOUT


@pytest.mark.slow  # waits out a keepalive
@pytest.mark.parametrize("hub_settings_override", [{"MAX_KEEPALIVE": 3}], indirect=True)
async def test_max_keepalive_is_told_as_server_keep_alive_and_held_to(hub, service, raw, v5):
    follower = v5(hub.engine.port, "paho-keepalive", *service, keepalive=60)
    await follower.connect()
    assert follower.connack_properties.ServerKeepAlive == 3  # asked for more: told MAX_KEEPALIVE
    silent = raw(hub.engine.port)
    connack = await silent.connect("no-keepalive", *service, keepalive=0)
    assert connack.properties["server_keep_alive"] == 3  # asked for none: told MAX_KEEPALIVE [MQTT-3.2.2-21]
    modest = raw(hub.engine.port)
    assert "server_keep_alive" not in (await modest.connect("modest", *service, keepalive=2)).properties
    modest.close()
    disconnect = await silent.read_type(codec.Disconnect, timeout=15)  # silent for 1.5 x 3 s
    assert disconnect.reason_code == reasons.KEEP_ALIVE_TIMEOUT
    # paho connected first and uses the 3 s it was told rather than its 60 s: its PINGREQs kept it.
    assert follower.connected and follower.disconnects == 0


async def test_revoked_credentials_are_told_not_authorized(hub, v5):
    from hubserver.access.provisioning import provision

    device, _ = await device5(hub, v5)
    model = (await database_sync_to_async(lambda: __import__("hubserver").registry.get_models("thermometer"))())[0]
    row = await database_sync_to_async(model.objects.get)(device_id="t-1")
    await database_sync_to_async(provision)(row)  # new secrets: the live session goes
    await device.wait_disconnected()
    assert device.disconnect_reason == reasons.NOT_AUTHORIZED


@pytest.mark.slow  # waits out a Will Delay
async def test_the_will_waits_for_its_delay_and_a_quick_return_cancels_it(hub, service, v5, raw):
    watcher = v5(hub.engine.port, "watcher", *service)
    await watcher.connect()
    await watcher.subscribe("wills/#", qos=1)
    will = codec.Will("wills/a", b"gone", 1, False, {"will_delay_interval": 1, "content_type": "text/plain"})
    client = raw(hub.engine.port)
    await client.connect("mortal", *service, will=will, properties={"session_expiry_interval": 60})
    client.close()
    await asyncio.sleep(0.3)
    assert watcher.messages == []  # delayed [MQTT-3.1.3-9]
    (message,) = await watcher.wait_messages(1, timeout=5)
    assert (message.payload, message.prop("ContentType")) == (b"gone", "text/plain")
    back = raw(hub.engine.port)
    await back.connect(
        "phoenix",
        *service,
        will=codec.Will("wills/b", b"no", 1, False, {"will_delay_interval": 2}),
        properties={"session_expiry_interval": 60},
    )
    back.close()
    again = raw(hub.engine.port)
    await again.connect("phoenix", *service, clean_start=False, properties={"session_expiry_interval": 60})
    await asyncio.sleep(2.5)
    assert [m.payload for m in watcher.messages] == [b"gone"]  # the return within the delay cancelled it


async def test_disconnect_with_will_message_publishes_the_will(hub, service, v5):
    watcher = v5(hub.engine.port, "watcher", *service)
    await watcher.connect()
    await watcher.subscribe("wills/#", qos=1)
    client = v5(hub.engine.port, "leaver", *service, will=("wills/leaver", b"bye", 1))
    await client.connect()
    await client.disconnect(reason_code=reasons.DISCONNECT_WITH_WILL)
    (message,) = await watcher.wait_messages(1)
    assert message.payload == b"bye"


async def test_a_level_the_hub_does_not_speak_gets_connack_0x01_and_is_closed(hub, service):
    client = RawClient(hub.engine.port)
    client.reader, client.writer = await asyncio.open_connection("127.0.0.1", hub.engine.port)
    body = b"\x00\x04MQTT\x06\x02\x00\x3c\x00\x00\x00\x01x"
    client.writer.write(bytes([0x10, len(body)]) + body)
    packet_type, data = await client.read_packet()
    assert (packet_type, data[1]) == (2, 0x01)
    assert await client.closed()
    client.close()


async def test_a_malformed_packet_closes_only_that_connection_with_0x81(hub, service, v5, raw):
    bystander = v5(hub.engine.port, "bystander", *service)
    await bystander.connect()
    client = raw(hub.engine.port)
    await client.connect("clumsy", *service)
    client.send(b"\x30\x04\x00\x02\xff\xfe\x00")  # PUBLISH, topic not UTF-8 (one byte short of a body too)
    client.send(b"\x00")
    disconnect = await client.read_type(codec.Disconnect)
    assert disconnect.reason_code == reasons.MALFORMED_PACKET
    assert await client.closed()
    await bystander.subscribe("still/here", qos=0)
    assert bystander.connected
