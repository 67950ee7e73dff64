"""The DASF topic broker's WebSocket protocol on the hub's own ASGI app: delivery and acknowledgements,
the store rules, response topics, pongs and API info, permissions and every refusal."""

import asyncio
import logging

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from hubserver.metrics import render
from tests.dasf import (
    eventually,
    make_topic,
    make_user,
    new_id,
    next_message,
    nothing_but_broker_requests,
    open_ws,
    produce,
    receive,
    received_results,
    refresh,
    request,
    send,
    stored,
)
from tests.mqtt import until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def dasf():
    from hubserver.dasf.service import start_service, stop_service

    service = await start_service()
    try:
        yield service
    finally:
        await stop_service()


@pytest.fixture
async def people(dasf):
    """alice produces to ``calc``, bob consumes it (a backend), carol has no permission on it."""
    alice = await make_user("alice")
    bob = await make_user("bob")
    carol = await make_user("carol")
    return alice, bob, carol


async def test_a_message_reaches_the_consumer_and_is_acknowledged_after_its_commit(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    consumer = await open_ws("/ws/calc/backend-1/", bob)
    producer = await open_ws("/ws/calc", alice)  # DASF clients leave out the trailing slash

    message_id = new_id()
    ack = await produce(producer, request("2+3", context=7, messageId=message_id))
    assert ack == {"messageId": message_id, "context": 7, "result": "ok"}
    assert await stored("calc") == [message_id]  # committed before the acknowledgement

    got = await next_message(consumer)
    assert got["messageId"] == message_id and got["payload"] == request("2+3")["payload"]
    assert got["properties"]["requestContext"] == 7 and "publishTime" in got

    await send(consumer, {"messageId": message_id})  # the consumer's acknowledgement: cache lets it go
    await eventually(lambda: _empty(stored, "calc"), message="the acknowledged message to be deleted")
    await producer.disconnect()
    await consumer.disconnect()


async def _empty(getter, *args):
    return not await getter(*args)


async def test_a_message_without_messageid_gets_one(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    consumer = await open_ws("/ws/calc/backend-1/", bob)
    producer = await open_ws("/ws/calc/", alice)
    ack = await produce(producer, request())
    assert ack["result"] == "ok" and len(ack["messageId"]) == 36
    assert (await next_message(consumer))["messageId"] == ack["messageId"]
    await producer.disconnect()
    await consumer.disconnect()


async def test_cache_keeps_a_message_until_a_reconnecting_consumer_acknowledges_it(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice], store_messages="cache")
    producer = await open_ws("/ws/calc/", alice)
    first, second = new_id(), new_id()
    for message_id in (first, second):
        assert (await produce(producer, request(messageId=message_id)))["result"] == "ok"  # nobody listens yet

    consumer = await open_ws("/ws/calc/backend-1/", bob)
    assert [(await next_message(consumer))["messageId"] for _ in range(2)] == [first, second]  # in order
    await consumer.disconnect()  # without acknowledging

    consumer = await open_ws("/ws/calc/backend-2/", bob)
    assert [(await next_message(consumer))["messageId"] for _ in range(2)] == [first, second]
    for message_id in (first, second):
        await send(consumer, {"messageId": message_id})
    await eventually(lambda: _empty(stored, "calc"), message="both messages to be deleted")
    await consumer.disconnect()

    consumer = await open_ws("/ws/calc/backend-3/", bob)
    assert await nothing_but_broker_requests(consumer)
    await consumer.disconnect()
    await producer.disconnect()


async def test_cacheall_keeps_a_message_until_every_consumer_acknowledged_it(dasf, people):
    alice, bob, carol = people
    await make_topic("calc", consumers=[bob, carol], producers=[alice], store_messages="cacheall")
    producer = await open_ws("/ws/calc/", alice)
    message_id = new_id()
    assert (await produce(producer, request(messageId=message_id)))["result"] == "ok"

    bob_ws = await open_ws("/ws/calc/bob/", bob)
    assert (await next_message(bob_ws))["messageId"] == message_id
    await send(bob_ws, {"messageId": message_id})
    await eventually(lambda: _delivered_to(message_id, ["bob"]), message="bob's acknowledgement")
    assert await stored("calc") == [message_id]  # carol has not acknowledged it
    await bob_ws.disconnect()

    bob_ws = await open_ws("/ws/calc/bob-again/", bob)
    assert await nothing_but_broker_requests(bob_ws)  # bob has it already
    carol_ws = await open_ws("/ws/calc/carol/", carol)
    assert (await next_message(carol_ws))["messageId"] == message_id
    await send(carol_ws, {"messageId": message_id})
    await eventually(lambda: _empty(stored, "calc"), message="the message everyone acknowledged to be deleted")
    for ws in (bob_ws, carol_ws, producer):
        await ws.disconnect()


async def test_disabled_stores_nothing_and_a_reconnecting_consumer_gets_nothing(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice], store_messages="disabled")
    producer = await open_ws("/ws/calc/", alice)
    assert (await produce(producer, request()))["result"] == "ok"
    assert await stored("calc") == []
    consumer = await open_ws("/ws/calc/backend-1/", bob)
    assert await nothing_but_broker_requests(consumer)
    # live messages still flow
    message_id = new_id()
    assert (await produce(producer, request(messageId=message_id)))["result"] == "ok"
    assert (await next_message(consumer))["messageId"] == message_id
    await consumer.disconnect()
    await producer.disconnect()


async def test_store_keeps_messages_and_records_who_acknowledged_them(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice], store_messages="store")
    producer = await open_ws("/ws/calc/", alice)
    consumer = await open_ws("/ws/calc/backend-1/", bob)
    message_id = new_id()
    await produce(producer, request(messageId=message_id))
    assert (await next_message(consumer))["messageId"] == message_id
    await send(consumer, {"messageId": message_id})
    await eventually(lambda: _delivered_to(message_id, ["bob"]), message="bob's acknowledgement")
    assert await stored("calc") == [message_id]
    await consumer.disconnect()
    consumer = await open_ws("/ws/calc/backend-2/", bob)
    assert await nothing_but_broker_requests(consumer)  # not again to bob
    await consumer.disconnect()
    await producer.disconnect()


async def _delivered_to(message_id, usernames):
    @database_sync_to_async
    def names():
        from hubserver.dasf.models import BrokerMessage

        return [u.username for u in BrokerMessage.objects.get(message_id=message_id).delivered_to.order_by("username")]

    return await names() == usernames


async def test_the_server_defaults_decide_for_topics_without_their_own_rule(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    with override_settings(DASF_STORE_MESSAGES="cache", DASF_STORE_SOURCE_MESSAGES="disabled"):
        producer = await open_ws("/ws/calc/", alice)
        assert (await produce(producer, request()))["result"] == "ok"
        assert await stored("calc") == []
        await producer.disconnect()
    producer = await open_ws("/ws/calc/", alice)
    message_id = new_id()
    assert (await produce(producer, request(messageId=message_id)))["result"] == "ok"
    assert await stored("calc") == [message_id]
    await producer.disconnect()


# Refusals --------------------------------------------------------------------------------------------------


async def test_a_producer_without_can_produce_is_refused_with_a_clear_result(dasf, people):
    alice, bob, carol = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    consumer = await open_ws("/ws/calc/backend-1/", bob)
    producer = await open_ws("/ws/calc/", carol)
    message_id = new_id()
    ack = await produce(producer, request(context=3, messageId=message_id))
    assert ack["messageId"] == message_id and ack["context"] == 3
    assert ack["result"].startswith("error:") and "carol" in ack["result"] and "can_produce" in ack["result"]
    assert await stored("calc") == []
    assert await nothing_but_broker_requests(consumer)
    # the connection stays usable: the next message gets its answer too
    assert (await produce(producer, request(context=4)))["context"] == 4
    await producer.disconnect()
    await consumer.disconnect()


async def test_malformed_messages_are_answered(dasf, people):
    alice, _, _ = people
    await make_topic("calc", producers=[alice])
    producer = await open_ws("/ws/calc/", alice)
    await producer.send_to(text_data="{not json")
    assert (await receive(producer))["result"].startswith("error: the message is not valid JSON")
    await producer.send_to(text_data="[1, 2]")
    assert (await receive(producer))["result"] == "error: a message must be a JSON object"
    ack = await produce(producer, request(messageId="not-a-uuid"))
    assert ack["result"] == "error: messageId must be a UUID, got 'not-a-uuid'"
    ack = await produce(producer, {"properties": "x", "context": 1})
    assert ack["result"] == "error: 'properties' must be a JSON object"
    with override_settings(DASF_MAX_MESSAGE_SIZE=2000):
        small = await open_ws("/ws/calc/", alice)
        ack = await produce(small, request("x" * 3000))
        assert "larger than DASF_MAX_MESSAGE_SIZE (2000)" in ack["result"]
        await small.disconnect()
    assert (await produce(producer, request()))["result"] == "ok"
    await producer.disconnect()


async def test_a_consumer_without_can_consume_is_told_and_closed(dasf, people):
    _, bob, carol = people
    await make_topic("calc", consumers=[bob])
    ws = await open_ws("/ws/calc/sneaky/", carol)
    frames, code = await received_results(ws)
    assert code == 4403
    assert (
        frames[0]["result"] == "error: user 'carol' may not consume topic 'calc' (it needs the can_consume permission)"
    )


async def test_anonymous_clients_need_the_anonymous_users_permissions(dasf, people):
    alice, bob, _ = people
    await make_topic("private", consumers=[bob], producers=[alice])
    ws = await open_ws("/ws/private/anon/")
    frames, code = await received_results(ws)
    assert code == 4403 and "the anonymous user may not consume" in frames[0]["result"]
    producer = await open_ws("/ws/private/")
    assert "the anonymous user may not publish" in (await produce(producer, request()))["result"]
    await producer.disconnect()

    await make_topic("open", anonymous=True)  # public, and the anonymous user may consume
    consumer = await open_ws("/ws/open/anon/")
    producer = await open_ws("/ws/open/")
    ack = await produce(producer, request())
    assert ack["result"] == "ok"
    assert (await next_message(consumer))["messageId"] == ack["messageId"]
    await consumer.disconnect()
    await producer.disconnect()


async def test_an_invalid_token_is_refused_not_treated_as_anonymous(dasf, people):
    await make_topic("open", anonymous=True)
    ws = await open_ws("/ws/open/x/", token="nope")
    frames, code = await received_results(ws)
    assert code == 4401 and frames[0]["result"].startswith("error: the API token is not valid")
    producer = await open_ws("/ws/open/", token="nope")
    ack = await produce(producer, request(context=9))
    assert ack["context"] == 9 and ack["result"].startswith("error: the API token is not valid")
    await producer.disconnect()


async def test_bearer_tokens_and_query_tokens_authenticate_too(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    consumer = await open_ws(f"/ws/calc/b/?token={bob.token}")
    producer = await open_ws("/ws/calc/", headers=[(b"authorization", f"Bearer {alice.token}".encode())])
    ack = await produce(producer, request())
    assert ack["result"] == "ok"
    assert (await next_message(consumer))["messageId"] == ack["messageId"]
    await consumer.disconnect()
    await producer.disconnect()


async def test_the_name_hub_is_reserved_and_ws_hub_keeps_working(dasf, people):
    alice, _, _ = people
    ws = await open_ws("/ws/hub/subscription/", alice)
    frames, code = await received_results(ws)
    assert code == 4403 and "'hub' is reserved" in frames[0]["result"]

    live = await open_ws("/ws/hub/", alice)  # the hub's live stream, not a DASF topic
    await send(live, {"type": "ping", "request_id": 1})
    assert (await receive(live))["type"] == "pong"
    await send(live, request())  # a DASF message sent there is told where it is
    answer = await receive(live)
    assert answer["type"] == "error" and "'hub' is a reserved name" in answer["message"]
    await live.disconnect()

    ws = await open_ws("/ws/bad.name/sub/", alice)
    frames, code = await received_results(ws)
    assert code == 4403 and "is not a topic name" in frames[0]["result"]


async def test_topics_are_created_on_first_message_only_for_users_who_may_add_them(dasf, people):
    _, _, carol = people
    dave = await make_user("dave", "dasf_broker.add_brokertopic")
    producer = await open_ws("/ws/fresh/", carol)
    ack = await produce(producer, request())
    assert "may not create topics" in ack["result"] and "add_brokertopic" in ack["result"]
    await producer.disconnect()

    producer = await open_ws("/ws/fresh/", dave)
    assert (await produce(producer, request()))["result"] == "ok"
    consumer = await open_ws("/ws/fresh/dave/", dave)  # the creator may consume it
    assert (await next_message(consumer))["properties"]["messageType"] == "request"  # cached for them
    await consumer.disconnect()
    await producer.disconnect()

    with override_settings(DASF_CREATE_TOPIC_ON_MESSAGE=False):
        producer = await open_ws("/ws/other/", dave)
        assert (await produce(producer, request()))["result"] == "error: topic 'other' does not exist"
        await producer.disconnect()


# Response topics, pongs, API info ----------------------------------------------------------------------------


async def test_a_request_creates_its_response_topic_with_the_permissions_it_implies(dasf, people):
    alice, bob, carol = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    backend = await open_ws("/ws/calc/backend/", bob)
    answers = await open_ws("/ws/calc_abc/client/", alice)  # clients listen before the topic exists
    client = await open_ws("/ws/calc/", alice)
    assert (await produce(client, request("2+3", response_topic="calc_abc")))["result"] == "ok"
    got = await next_message(backend)
    assert got["properties"]["response_topic"] == "calc_abc"

    @database_sync_to_async
    def response_topic():
        from hubserver.dasf.models import ResponseTopic

        topic = ResponseTopic.objects.get(slug="calc_abc")
        return (
            topic.is_response_for.slug,
            topic.is_response_topic,
            [u.username for u in topic.consumers],
            [u.username for u in topic.producers],
            [str(m.message_id) for m in topic.source_messages.all()],
        )

    assert await response_topic() == ("calc", True, ["alice"], ["bob"], [got["messageId"]])
    await send(backend, {"messageId": got["messageId"]})

    responder = await open_ws("/ws/calc_abc/", bob)  # the backend may answer on it
    answer = request("5", context=got["properties"]["requestContext"], message_type="response")
    answer["properties"]["source_topic"] = "calc"
    assert (await produce(responder, answer))["result"] == "ok"
    assert (await next_message(answers))["payload"] == answer["payload"]

    snoop = await open_ws("/ws/calc_abc/snoop/", carol)  # nobody else may read the answers
    _frames, code = await received_results(snoop)
    assert code == 4403
    for ws in (backend, answers, client, responder):
        await ws.disconnect()


async def test_naming_an_existing_topic_as_response_topic_grants_nothing(dasf, people):
    alice, bob, carol = people
    await make_topic("calc", consumers=[bob], producers=[alice, carol])
    await make_topic("alices", consumers=[alice])
    client = await open_ws("/ws/calc/", carol)
    assert (await produce(client, request(response_topic="alices")))["result"] == "ok"
    snoop = await open_ws("/ws/alices/snoop/", carol)
    _frames, code = await received_results(snoop)
    assert code == 4403
    await client.disconnect()


async def test_pongs_and_api_info_answers_on_status_ping(dasf, people):
    _, bob, carol = people
    topic = await make_topic("calc", consumers=[bob])
    backend = await open_ws("/ws/calc/backend/", bob)
    api_request = await receive(backend)  # a backend with nothing outstanding is asked for its API
    assert api_request["properties"] == {
        "requestContext": 1,
        "messageType": "api_info",
        "response_topic": "status-ping",
    }

    status = await open_ws("/ws/status-ping", bob)
    answer = {
        "properties": {
            "requestContext": "1",
            "messageType": "response",
            "source_topic": "calc",
            "api_info": '{"f": 1}',
        },
        "context": "1",
        "payload": "",
    }
    assert (await produce(status, answer))["result"] == "ok"
    dasf.ping(await dasf.topic("calc"))
    ping = await receive(backend)
    assert ping["properties"]["messageType"] == "ping" and ping["properties"]["response_topic"] == "status-ping"
    pong = {"properties": {"requestContext": "1", "messageType": "pong", "source_topic": "calc"}, "context": "1"}
    assert (await produce(status, pong))["result"] == "ok"
    await dasf.flush_touches()
    await dasf.writer.join()
    topic = await refresh(topic)
    assert topic.api_info == {"f": 1}
    assert topic.availability is True

    other = await open_ws("/ws/status-ping/", carol)  # only a consumer of the topic answers for it
    assert "may not answer for topic 'calc'" in (await produce(other, pong))["result"]
    assert (await produce(other, {"properties": {}}))["result"] == "error: no source_topic in the message's properties"
    for ws in (backend, status, other):
        await ws.disconnect()


async def test_availability_follows_pings_and_pongs(dasf, people):
    _, bob, _ = people
    topic = await make_topic("calc", consumers=[bob])
    assert topic.availability is None  # never pinged
    with override_settings(DASF_PONG_TIMEOUT=0):
        dasf.ping(await dasf.topic("calc"))  # nobody listens
        await dasf.flush_touches()
        await dasf.writer.join()
        assert (await refresh(topic)).availability is False

        backend = await open_ws("/ws/calc/backend/", bob)
        await receive(backend)  # the api_info request
        dasf.ping(await dasf.topic("calc"))
        ping = await receive(backend)
        await send(backend, {"messageId": ping["messageId"]})  # demessaging acknowledges every request
        await eventually(lambda: _available(topic), message="the topic to be online")
        await backend.disconnect()  # leaving pings the topic: nobody answers any more
        await eventually(lambda: _offline(topic), message="the topic to be offline")


async def _available(topic):
    await _flush()
    return (await refresh(topic)).availability is True


async def _offline(topic):
    await _flush()
    return (await refresh(topic)).availability is False


async def _flush():
    from hubserver.dasf.service import get_service

    service = get_service()
    await service.flush_touches()
    await service.writer.join()


async def test_the_periodic_ping_reaches_connected_backends(people):
    from hubserver.dasf.service import start_service, stop_service

    _, bob, _ = people
    await stop_service()
    with override_settings(DASF_PING_INTERVAL=0.2):
        await start_service()
        try:
            await make_topic("calc", consumers=[bob])
            backend = await open_ws("/ws/calc/backend/", bob)
            kinds = set()
            while "ping" not in kinds:
                kinds.add((await receive(backend))["properties"]["messageType"])
            await backend.disconnect()
        finally:
            await stop_service()


async def test_unneeded_response_topics_are_garbage_collected_with_their_permissions(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice])
    answers = await open_ws("/ws/calc_r1/client/", alice)
    client = await open_ws("/ws/calc/", alice)
    with override_settings(DASF_GARBAGE_COLLECT_AFTER=0):
        await produce(client, request(response_topic="calc_r1"))
        await answers.disconnect()  # the client is gone, and nothing waits on its topic
        await eventually(lambda: _marked("calc_r1"), message="the response topic to be marked for deletion")
        await dasf.garbage_collect()

    @database_sync_to_async
    def left():
        from guardian.models import UserObjectPermission

        from hubserver.dasf.models import BrokerTopic

        return BrokerTopic.objects.filter(slug="calc_r1").exists(), UserObjectPermission.objects.filter(
            object_pk__in=[str(t.pk) for t in BrokerTopic.objects.all()]
        ).count()

    exists, _ = await left()
    assert not exists and "calc_r1" not in dasf.grants.topics
    await client.disconnect()


@database_sync_to_async
def _marked(slug):
    from hubserver.dasf.models import BrokerTopic

    return BrokerTopic.objects.filter(slug=slug, garbage_collect_on__isnull=False).exists()


# Permission changes while connected --------------------------------------------------------------------------


async def test_permission_changes_take_effect_without_a_restart(dasf, people):
    alice, bob, carol = people
    topic = await make_topic("calc", consumers=[bob], producers=[alice])
    producer = await open_ws("/ws/calc/", carol)
    assert (await produce(producer, request()))["result"].startswith("error:")

    @database_sync_to_async
    def grant(perm, user):
        from guardian.shortcuts import assign_perm

        assign_perm(perm, user, topic)

    @database_sync_to_async
    def revoke(perm, user):
        from guardian.shortcuts import remove_perm

        remove_perm(perm, user, topic)

    await grant("can_produce", carol)
    assert (await produce(producer, request()))["result"] == "ok"

    consumer = await open_ws("/ws/calc/backend/", bob)
    await revoke("can_consume", bob)
    await until(
        lambda: dasf._stale is False and not dasf.grants.allows(bob.pk, "can_consume", dasf.grants.topics["calc"])
    )
    await produce(producer, request())
    frames, code = await received_results(consumer)
    assert code == 4403 and "may not consume" in frames[-1]["result"]
    await producer.disconnect()


async def test_grants_made_by_another_process_are_picked_up(dasf, people):
    alice, _, carol = people
    topic = await make_topic("calc", producers=[alice])

    @database_sync_to_async
    def grant_without_signals():  # what another process's writes look like to this one
        from django.contrib.auth.models import Permission
        from django.contrib.contenttypes.models import ContentType
        from guardian.models import UserObjectPermission

        content_type = ContentType.objects.get_for_model(topic)
        UserObjectPermission.objects.bulk_create(
            [
                UserObjectPermission(
                    user=carol,
                    permission=Permission.objects.get(content_type=content_type, codename="can_produce"),
                    content_type=content_type,
                    object_pk=str(topic.pk),
                )
            ]
        )

    producer = await open_ws("/ws/calc/", carol)
    await grant_without_signals()
    dasf._last_recheck = 0
    assert (await produce(producer, request()))["result"] == "ok"
    await producer.disconnect()


# Slow consumers -------------------------------------------------------------------------------------------


class StalledConsumer:
    gate = None


def _caught_up(service, slug):
    return sum(1 for connection in service.connections.get(slug, ()) if connection.caught_up)


async def test_a_consumer_gets_a_backlog_larger_than_its_queue_at_its_own_pace(dasf, people):
    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice], supports_dasf=False)
    producer = await open_ws("/ws/calc/", alice)
    ids = [(await produce(producer, request(context=i)))["messageId"] for i in range(12)]
    with override_settings(DASF_CONSUMER_QUEUE_SIZE=3):
        consumer = await open_ws("/ws/calc/late/", bob)
    got = [(await next_message(consumer))["messageId"] for _ in range(6)]
    live = (await produce(producer, request("live")))["messageId"]  # while the backlog is being sent
    got += [(await next_message(consumer))["messageId"] for _ in range(7)]
    assert got == [*ids, live]  # all of them, in order, and not closed as too slow
    assert dasf.counts["too_slow"] == 0
    for ws in (consumer, producer):
        await ws.disconnect()


async def test_a_consumer_that_falls_behind_is_closed_and_gets_stored_messages_again(dasf, people, caplog):
    from channels.routing import URLRouter
    from django.urls import re_path

    from hubserver.dasf.auth import DasfAuthMiddlewareStack
    from hubserver.dasf.consumers import TopicConsumer

    class Stalled(TopicConsumer):
        async def transmit(self, text):
            if StalledConsumer.gate is not None:
                await StalledConsumer.gate.wait()
            await super().transmit(text)

    alice, bob, _ = people
    await make_topic("calc", consumers=[bob], producers=[alice], supports_dasf=False)
    app = DasfAuthMiddlewareStack(
        URLRouter([re_path(r"^ws/(?P<slug>[^/]+)/(?P<subscription>[^/]+)/?$", Stalled.as_asgi())])
    )
    caplog.set_level(logging.WARNING, logger="hubserver.dasf")
    StalledConsumer.gate = asyncio.Event()
    healthy = await open_ws("/ws/calc/healthy/", bob)  # the default queue
    producer = await open_ws("/ws/calc/", alice)
    with override_settings(DASF_CONSUMER_QUEUE_SIZE=3):
        slow = await open_ws("/ws/calc/slow/", bob, app=app)
    # Both consumers connected before anything is produced: what follows reaches them live (a consumer still
    # being sent its stored messages takes its time instead, however slow, and is not closed for that).
    await until(lambda: _caught_up(dasf, "calc") == 2, message="both consumers to be connected")
    try:
        ids = [(await produce(producer, request(context=i)))["messageId"] for i in range(10)]
        assert [(await next_message(healthy))["messageId"] for _ in ids] == ids  # the healthy one got all
        await until(lambda: dasf.counts["too_slow"] == 1, message="the stalled consumer to fall behind")
        assert "fell" in caplog.text
        assert b"hubserver_dasf_slow_consumers_total 1.0" in render()
        StalledConsumer.gate.set()
        frames, code = await received_results(slow)
        assert code == 4429 and frames[-1]["result"].startswith("error: too slow")
    finally:
        StalledConsumer.gate.set()
        StalledConsumer.gate = None
    again = await open_ws("/ws/calc/slow-again/", bob)
    assert [(await next_message(again))["messageId"] for _ in ids] == ids  # stored: nothing is lost
    for ws in (again, healthy, producer):
        await ws.disconnect()
