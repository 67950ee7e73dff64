"""The lean per-connection objects of HubBroker (the goal: a small, bounded memory per idle connection).

``HubSession`` replaces amqtt's per-session ``transitions.Machine`` with ``SessionState``, ``LeanQueue``
replaces the per-session and per-handler ``asyncio.Queue``s, and the client loop waits on one future instead
of four tasks. These tests pin the behaviour that must survive: the state moves amqtt relies on (take-over,
persistent-session resume, offline queueing), the queue semantics, and the client loop's handling.
"""

import asyncio
import itertools
import logging
import struct

import pytest
from amqtt.session import Session
from hubserver.plugins.session import HubSession, LeanQueue, SessionState
from transitions import Machine, MachineError

from tests.conftest import make_service_user
from tests.mqtt import RawClient, until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def service(transactional_db):
    await make_service_user("svc", "svc-pass")
    return ("svc", "svc-pass")


def _run(session, triggers):
    """Apply triggers to a session's state; the states seen and which triggers raised MachineError."""
    seen = []
    for trigger in triggers:
        try:
            getattr(session.transitions, trigger)()
            seen.append(session.transitions.state)
        except MachineError:
            seen.append(("refused", session.transitions.state))
    connected = session.transitions.is_connected()
    return seen, connected, session.last_connect_time is not None, session.last_disconnect_time is not None


def test_session_state_moves_like_upstreams_state_machine():
    for length in range(1, 5):
        for triggers in itertools.product(("connect", "disconnect"), repeat=length):
            assert _run(HubSession(), triggers) == _run(Session(), triggers), triggers


def test_hub_sessions_hold_no_state_machine_and_no_asyncio_queue():
    session = HubSession()
    assert isinstance(session.transitions, SessionState)
    assert not any(isinstance(value, (Machine, asyncio.Queue)) for value in vars(session).values())
    restored = HubSession.__new__(HubSession)
    restored.__setstate__(session.__getstate__())  # amqtt's pickling support keeps working
    assert isinstance(restored.delivered_message_queue, LeanQueue) and restored.transitions.is_new()


async def test_lean_queue_is_a_fifo_whose_get_waits_for_a_put():
    queue = LeanQueue()
    assert queue.empty() and queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put("a")
    queue.put_nowait("b")
    assert await getter == "a"
    assert queue.qsize() == 1 and await queue.get() == "b" and queue.empty()


async def test_lean_queue_passes_an_item_on_when_its_woken_getter_is_cancelled():
    queue = LeanQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("only")
    first.cancel()  # woken, but cancelled before it ran
    assert await asyncio.wait_for(second, 1) == "only"
    assert first.cancelled()


def _publish_packet(topic, payload, packet_id):
    body = struct.pack("!H", len(topic)) + topic.encode() + struct.pack("!H", packet_id) + payload
    return bytes([0x32, len(body)]) + body


def _waiting_loop_tasks():
    names = {"wait_disconnect", "get_next_pending_subscription", "get_next_pending_unsubscription"}
    names.add("mqtt_deliver_next_message")
    return [task for task in asyncio.all_tasks() if task.get_coro().__name__ in names]


async def test_a_connection_runs_on_lean_objects(hub, service, clients):
    client = clients(hub.engine.port, "lean", *service)
    await client.connect()
    await client.subscribe("lab/lean", qos=1)
    session, handler = hub.engine.broker._sessions["lean"]
    assert type(session) is HubSession and isinstance(session.transitions, SessionState)
    assert isinstance(session.delivered_message_queue, LeanQueue)
    assert isinstance(handler._pending_subscriptions, LeanQueue)
    assert isinstance(handler._pending_unsubscriptions, LeanQueue)
    assert _waiting_loop_tasks() == [], "the client loop waits without a task per queue"
    assert handler._keepalive_task is None, "no write-keepalive timer (its callback does nothing in a broker)"
    assert not isinstance(handler.logger, logging.LoggerAdapter)


async def test_take_over_and_persistent_resume_move_the_session_state(broker, service, clients):
    """Upstream, the taken-over connection's loop marks the shared session disconnected after the new
    connection took it: the new connection then gets no live messages (the stock run fails here)."""
    engine, broker = broker, broker.broker
    watcher = clients(engine.port, "watcher", *service)
    await watcher.connect()
    await watcher.subscribe("lab/will", qos=0)

    first = clients(engine.port, "roamer", *service, clean_session=False, will=("lab/will", b"first gone"))
    await first.connect()
    await first.subscribe("lab/roam", qos=1)
    session, first_handler = broker._sessions["roamer"]
    assert session.transitions.state == "connected" and session.last_connect_time is not None

    # A second connection with the same client id takes the session over [MQTT-3.1.4-2].
    second = clients(engine.port, "roamer", *service, clean_session=False)
    await second.connect()
    await first.wait_disconnected()
    assert second.session_present
    resumed, second_handler = broker._sessions["roamer"]
    assert resumed is session and second_handler is not first_handler
    await asyncio.sleep(0.2)  # the old connection's loop has ended
    assert session.transitions.is_connected()
    await engine.publish("lab/roam", b"to the new connection", qos=1)
    assert [m.payload for m in await second.wait_messages(1)] == [b"to the new connection"]
    assert first.messages == []

    # A clean DISCONNECT: the session is kept, disconnected, and queues QoS 1 messages while offline.
    await second.disconnect()
    await until(lambda: session.transitions.state == "disconnected", message="session disconnected")
    assert session.last_disconnect_time is not None
    await engine.publish("lab/roam", b"while offline", qos=1)
    await until(lambda: session.retained_messages.qsize() == 1, message="the offline queue")

    third = clients(engine.port, "roamer", *service, clean_session=False)
    await third.connect()
    assert third.session_present
    assert [(m.payload, m.qos, m.retain) for m in await third.wait_messages(1)] == [(b"while offline", 1, False)]
    assert session.transitions.is_connected() and session.last_disconnect_time is None
    assert session.retained_messages.empty()
    await asyncio.sleep(0.2)
    will_messages = [m.payload for m in watcher.messages]
    assert b"first gone" in will_messages, "the taken-over connection ended abnormally: its will is published"


async def test_the_client_loop_handles_subscribe_unsubscribe_messages_then_the_disconnection(hub, service, clients):
    listener = clients(hub.engine.port, "listener", *service)
    await listener.connect()
    await listener.subscribe("lab/loop/#", qos=1)

    raw = RawClient(hub.engine.port)
    code, _ = await raw.connect("talker", *service, will=("lab/loop/will", b"talker gone", 1))
    assert code == 0
    assert await raw.subscribe("lab/loop/echo", qos=1) == 1
    raw.writer.write(_publish_packet("lab/loop/echo", b"one", 1))
    topic, payload, _, _, packet_id = await raw.read_publish()  # its own subscription delivers it back
    assert (topic, payload) == ("lab/loop/echo", b"one")
    await raw.puback(packet_id)
    raw.writer.write(bytes([0xA2, 2 + 2 + len("lab/loop/echo")]) + struct.pack("!H", 2))
    raw.writer.write(struct.pack("!H", len("lab/loop/echo")) + b"lab/loop/echo")
    while (await raw.read_packet())[0] != 11:  # UNSUBACK
        pass
    raw.writer.write(_publish_packet("lab/loop/data", b"two", 3))
    while (await raw.read_packet())[0] != 4:  # PUBACK: the message is with the broker
        pass
    raw.close()  # no DISCONNECT: the will follows the messages already published

    received = await listener.wait_messages(3)
    assert [m.payload for m in received] == [b"one", b"two", b"talker gone"]
    assert await raw.closed(timeout=2)
    await until(
        lambda: hub.engine.broker._sessions.get("talker", (None,))[0] is None or not hub.engine.is_connected("talker")
    )
    assert not hub.engine.broker.subscribed("talker", "lab/loop/echo")
