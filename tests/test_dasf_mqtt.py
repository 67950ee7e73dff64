"""DASF topics over the hub's MQTT broker (``dasf/<slug>``), both ways, with real paho clients against the
in-process hub: service clients act as their Django users and need the topic's permissions; devices never
reach DASF topics."""

import json

import pytest
from channels.db import database_sync_to_async

from hubserver.dasf import signals
from hubserver.metrics import render
from tests.conftest import device_client, make_service_user
from tests.dasf import (
    eventually,
    make_topic,
    make_user,
    new_id,
    next_message,
    nothing_but_broker_requests,
    open_ws,
    produce,
    request,
    send,
    stored,
)
from tests.mqtt import until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def dasf(hub):
    from hubserver.dasf.service import get_service

    service = get_service()
    assert service is not None and service.mqtt is not None  # the hub runs the broker and its MQTT side
    return service


@database_sync_to_async
def _token(user):
    from rest_framework.authtoken.models import Token

    user.token = Token.objects.create(user=user).key
    return user


async def service_client(hub, clients, username, topic=None, **perms):
    """A connected MQTT service client whose Django user holds ``perms`` (``consume=True``...) on ``topic``."""
    user = await _token(await make_service_user(username))
    if topic is not None:
        await _grant(user, topic, perms)
    client = clients(hub.engine.port, username, username, "s3cret-pass")
    await client.connect()
    return user, client


@database_sync_to_async
def _grant(user, topic, perms):
    from guardian.shortcuts import assign_perm

    for name, wanted in perms.items():
        if wanted:
            assign_perm(f"can_{name}", user, topic)


def _dasf_messages(client, slug):
    return [json.loads(m.payload) for m in client.messages if m.topic == f"dasf/{slug}"]


async def test_a_websocket_producers_message_reaches_mqtt_subscribers_with_can_consume(hub, dasf, clients):
    alice = await make_user("alice")
    topic = await make_topic("calc", producers=[alice])
    _, reader = await service_client(hub, clients, "reader", topic, consume=True)
    _, outsider = await service_client(hub, clients, "outsider")
    assert await reader.subscribe("dasf/calc") == 1
    assert await outsider.subscribe("dasf/#") == 1  # accepted; what it receives is decided per message

    producer = await open_ws("/ws/calc/", alice)
    message_id = new_id()
    assert (await produce(producer, request("2+3", messageId=message_id)))["result"] == "ok"
    await until(lambda: _dasf_messages(reader, "calc"), message="the message on dasf/calc")
    (got,) = _dasf_messages(reader, "calc")
    assert got["messageId"] == message_id and got["payload"] == request("2+3")["payload"]
    assert [m.qos for m in reader.messages] == [1]  # stored and committed: delivered at QoS 1
    await dasf.writer.join()
    assert _dasf_messages(outsider, "calc") == []  # no can_consume: nothing
    assert await stored("calc") == [message_id]  # MQTT subscribers do not acknowledge in DASF's sense
    await producer.disconnect()


async def test_an_mqtt_publish_reaches_websocket_consumers_after_its_commit(hub, dasf, clients):
    backend = await make_user("backend")
    topic = await make_topic("calc", consumers=[backend])
    _, writer = await service_client(hub, clients, "writer", topic, produce=True)
    consumer = await open_ws("/ws/calc/backend/", backend)

    message_id = new_id()
    await writer.publish("dasf/calc", json.dumps(request("from mqtt", messageId=message_id)), qos=1)
    assert await stored("calc") == [message_id]  # acknowledged (PUBACK) after its commit
    got = await next_message(consumer)
    assert got["messageId"] == message_id and "publishTime" in got
    await send(consumer, {"messageId": message_id})
    await eventually(lambda: _empty("calc"), message="the acknowledged message to be deleted")
    await consumer.disconnect()


async def _empty(slug):
    return not await stored(slug)


async def test_mqtt_clients_without_the_topics_permissions_are_kept_out(hub, dasf, clients, caplog):
    backend = await make_user("backend")
    await make_topic("calc", consumers=[backend])
    _, stranger = await service_client(hub, clients, "stranger")
    consumer = await open_ws("/ws/calc/backend/", backend)
    await stranger.publish("dasf/calc", json.dumps(request("sneaky")), qos=1)  # 3.1.1: acknowledged, dropped
    await dasf.writer.join()
    assert await stored("calc") == []
    assert await nothing_but_broker_requests(consumer)
    assert dasf.mqtt.counts["dropped"] == 1
    assert await stranger.subscribe("dasf/calc") == 0x80  # no can_consume: refused, counted, logged
    assert dasf.mqtt.counts["subscriptions_refused"] == 1
    assert "stranger may not subscribe to 'dasf/calc': it needs the can_consume permission" in caplog.text
    metrics = render()
    assert b'hubserver_dasf_mqtt_messages_total{outcome="dropped"} 1.0' in metrics
    assert b"hubserver_dasf_mqtt_subscriptions_refused_total 1.0" in metrics

    device, _ = await device_client(hub, clients)
    for topic_filter in ("dasf/calc", "dasf/#", "#"):
        assert await device.subscribe(topic_filter) == 0x80  # devices never reach DASF topics
    await device.publish("dasf/calc", json.dumps(request("from a device")), qos=1)
    await dasf.writer.join()
    assert await stored("calc") == []
    assert dasf.mqtt.counts["dropped"] == 2
    assert await nothing_but_broker_requests(consumer)
    await consumer.disconnect()


async def test_a_service_clients_last_will_on_a_dasf_topic_is_a_dasf_message(hub, dasf, clients):
    backend = await make_user("backend")
    topic = await make_topic("calc", consumers=[backend])
    user = await _token(await make_service_user("dying"))
    await _grant(user, topic, {"produce": True})
    will = json.dumps(request("the backend is gone", messageId=new_id()))
    dying = clients(hub.engine.port, "dying", "dying", "s3cret-pass", will=("dasf/calc", will, 1, True))
    await dying.connect()
    _, reader = await service_client(hub, clients, "reader", topic, consume=True)
    assert await reader.subscribe("dasf/calc") == 1
    consumer = await open_ws("/ws/calc/backend/", backend)
    dying.stop()  # no DISCONNECT: the Will goes out
    got = await next_message(consumer, timeout=15)
    assert got["payload"] == request("the backend is gone")["payload"] and "publishTime" in got
    assert await stored("calc") == [got["messageId"]]
    assert "dasf/calc" not in hub.engine.broker._retained_messages  # the Will asked to be retained: not here
    await until(lambda: _dasf_messages(reader, "calc"), message="the Will over MQTT")
    await consumer.disconnect()


async def test_a_request_over_mqtt_gets_its_answer_on_the_response_topic(hub, dasf, clients):
    backend = await make_user("backend")
    topic = await make_topic("calc", consumers=[backend])
    _, caller = await service_client(hub, clients, "caller", topic, produce=True)
    worker = await open_ws("/ws/calc/backend/", backend)
    assert await caller.subscribe("dasf/calc_mqtt1") == 1  # before the response topic exists

    await caller.publish("dasf/calc", json.dumps(request("2+3", response_topic="calc_mqtt1")), qos=1)
    got = await next_message(worker)
    assert got["properties"]["response_topic"] == "calc_mqtt1"
    responder = await open_ws("/ws/calc_mqtt1/", backend)  # the backend may answer on it
    answer = request("5", message_type="response")
    assert (await produce(responder, answer))["result"] == "ok"
    await until(lambda: _dasf_messages(caller, "calc_mqtt1"), message="the answer over MQTT")
    assert _dasf_messages(caller, "calc_mqtt1")[0]["payload"] == answer["payload"]
    await worker.disconnect()
    await responder.disconnect()


async def test_a_payload_that_is_not_a_dasf_message_is_dropped(hub, dasf, clients, caplog):
    topic = await make_topic("calc")
    _, writer = await service_client(hub, clients, "writer", topic, produce=True)
    await writer.publish("dasf/calc", b"not json", qos=1)
    await until(lambda: dasf.mqtt.counts["dropped"] == 1, message="the drop to be counted")
    assert "not a DASF message" in caplog.text
    assert b'hubserver_dasf_mqtt_messages_total{outcome="dropped"} 1.0' in render()
    assert await stored("calc") == []


@pytest.mark.parametrize("hub_settings_override", [{"ALLOW_ANONYMOUS": True}], indirect=True)
async def test_anonymous_mqtt_clients_get_what_the_anonymous_user_may_consume(hub, dasf, clients):
    alice = await make_user("alice")
    await make_topic("open", anonymous=True)
    await make_topic("private", producers=[alice])
    anonymous = clients(hub.engine.port)
    await anonymous.connect()
    assert await anonymous.subscribe("dasf/#") == 1
    for slug in ("private", "open"):
        producer = await open_ws(f"/ws/{slug}/", alice)
        assert (await produce(producer, request(slug)))["result"] == "ok"
        await producer.disconnect()
    await until(lambda: _dasf_messages(anonymous, "open"), message="the open topic's message")
    assert _dasf_messages(anonymous, "private") == []


async def test_grants_made_by_another_process_count_at_once_over_mqtt(hub, dasf, clients):
    backend = await make_user("backend")
    topic = await make_topic("calc", consumers=[backend])
    user, client = await service_client(hub, clients, "late")

    @database_sync_to_async
    def grant_without_signals(codename):  # what another process's writes look like to this one
        from django.contrib.auth.models import Permission
        from django.contrib.contenttypes.models import ContentType
        from guardian.models import UserObjectPermission

        content_type = ContentType.objects.get_for_model(topic)
        permission = Permission.objects.get(content_type=content_type, codename=codename)
        with signals.suppressed():
            UserObjectPermission.objects.create(
                user=user, permission=permission, content_type=content_type, object_pk=str(topic.pk)
            )

    await dasf.recheck()  # nothing left to read: only a check before refusing can see what comes next
    await grant_without_signals("can_consume")
    await grant_without_signals("can_produce")
    dasf._last_recheck = 0
    assert await client.subscribe("dasf/calc") == 1
    dasf._last_recheck = 0
    await client.publish("dasf/calc", json.dumps(request("just granted")), qos=1)
    assert len(await stored("calc")) == 1
    assert dasf.mqtt.counts["dropped"] == 0 and dasf.mqtt.counts["subscriptions_refused"] == 0


def test_the_mqtt_prefix_may_not_overlap_the_device_namespace():
    from hubserver.dasf.mqtt import DasfNamespace
    from hubserver.exceptions import ConfigurationError

    for prefix in ("things", "things/dasf"):
        with pytest.raises(ConfigurationError, match="overlaps the device namespace"):
            DasfNamespace(service=None, prefix=prefix)
    assert DasfNamespace(service=None, prefix="apps/dasf").owns("apps/dasf/calc")


async def test_mqtt5_publishers_learn_why_a_dasf_publish_was_dropped(hub, dasf):
    from tests.mqtt import Client5

    backend = await make_user("backend")
    topic = await make_topic("calc", consumers=[backend])
    user = await make_service_user("writer5")
    await _grant(user, topic, {"produce": True})
    client = Client5(hub.engine.port, "writer5", "writer5", "s3cret-pass")
    await client.connect()
    try:
        code, _ = await client.publish("dasf/calc", b"not json", qos=1)
        assert code == 0x99  # payload format invalid
        code, _ = await client.publish("dasf/calc", json.dumps(request("fine")), qos=1)
        assert code == 0
        code, _ = await client.publish("dasf/other", json.dumps(request("no permission")), qos=1)
        assert code == 0x87  # not authorized
        assert len(await stored("calc")) == 1
    finally:
        client.stop()
