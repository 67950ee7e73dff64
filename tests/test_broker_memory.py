"""The lean per-connection objects of HubBroker (DESIGN §8: memory per idle connection).

``HubSession`` replaces amqtt's per-session ``transitions.Machine`` with ``SessionState``, ``LeanQueue``
replaces the per-session and per-handler ``asyncio.Queue``s, and the client loop waits on one future instead
of four tasks. These tests pin the behaviour that must survive: the state moves amqtt relies on (take-over,
persistent-session resume, offline queueing), the queue semantics, and the client loop's handling.
"""

import asyncio
import itertools
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
    client = clients(hub.port, "lean", *service)
    await client.connect()
    await client.subscribe("lab/lean", qos=1)
    session, handler = hub.broker._sessions["lean"]
    assert type(session) is HubSession and isinstance(session.transitions, SessionState)
    assert isinstance(session.delivered_message_queue, LeanQueue)
    assert isinstance(handler._pending_subscriptions, LeanQueue)
    assert isinstance(handler._pending_unsubscriptions, LeanQueue)
    assert _waiting_loop_tasks() == [], "the client loop waits without a task per queue"


async def test_the_client_loop_handles_subscribe_unsubscribe_messages_then_the_disconnection(hub, service, clients):
    listener = clients(hub.port, "listener", *service)
    await listener.connect()
    await listener.subscribe("lab/loop/#", qos=1)

    raw = RawClient(hub.port)
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
    await until(lambda: hub.broker._sessions.get("talker", (None,))[0] is None or not hub.is_connected("talker"))
    assert not hub.broker.subscribed("talker", "lab/loop/echo")
