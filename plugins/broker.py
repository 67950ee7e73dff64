"""``HubBroker``: amqtt 0.12.1's Broker with the corrections the hub needs (listed in docs/architecture.md).

Each override is small and names the upstream behaviour it corrects; each is covered by a test in
``tests/test_broker_behaviour.py`` (or ``tests/test_broker_memory.py``) that fails on the stock broker.
amqtt is pinned to 0.12.1 for this reason.
"""

import asyncio
import contextvars
import logging
import math
import types
from collections import Counter
from functools import partial

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.utils import gen_client_id

from .acl import check
from .handler import HubProtocolHandler
from .session import HubSession, LeanQueue, principal_of
from .topic_index import FilterIndex

logger = logging.getLogger("hubserver.mqtt")

# The QoS of the PUBLISH being delivered, for _broadcast_message (set per client loop task).
_publish_qos = contextvars.ContextVar("hubserver_publish_qos", default=None)
_AUTHENTICATED = "hubserver.authenticated"
_CONNECTING = "hubserver.connecting"


def _read_connect_with_hub_session():
    """Upstream (BrokerProtocolHandler.init_from_connect): reads the CONNECT into an amqtt ``Session``, whose
    ``transitions.Machine`` costs ~16 KB per connection. The same function, unchanged, building a ``HubSession``
    (plugins/session.py) instead: only the module global ``Session`` it looks up differs."""
    upstream = BrokerProtocolHandler.init_from_connect.__func__
    return types.FunctionType(
        upstream.__code__,
        {**upstream.__globals__, "Session": HubSession},
        upstream.__name__,
        upstream.__defaults__,
        upstream.__closure__,
    )


_init_from_connect = _read_connect_with_hub_session()


class HubBroker(Broker):
    """The embedded broker. ``bridge`` (a RouterBridge) receives device PUBLISHes; ``lifecycle`` (optional)
    gets ``connected(principal)`` / ``disconnected(principal, reason)`` coroutine calls."""

    def __init__(self, config, *, bridge=None, lifecycle=None, max_connections=0, **kwargs):
        super().__init__(config, **kwargs)
        self.bridge = bridge
        self.lifecycle = lifecycle
        self.max_connections = max_connections
        self.refused = Counter()
        self._index = FilterIndex()
        self._filters_by_client = {}
        self._live = {}  # client_id -> number of open connections (a take-over briefly makes it 2)

    # --- connections -------------------------------------------------------------------------------

    # Upstream (_create_server_instance): TCP listeners use asyncio's default backlog of 100, so when 1,000
    # devices reconnect at once the kernel drops most SYNs and the clients wait seconds to retry.
    LISTEN_BACKLOG = 4096

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        if listener_type != ListenerType.TCP:
            return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)
        return await asyncio.start_server(
            partial(self.stream_connected, listener_name=listener_name),
            address,
            port,
            reuse_address=True,
            ssl=ssl_context,
            backlog=self.LISTEN_BACKLOG,
        )

    # Upstream (_client_connected): max_connections makes extra clients wait on a semaphore, silently.
    # Here the connection over the limit is refused at once, logged and counted. Checked where connections
    # arrive (upstream's stream_connected and external_connected, one line each), so that no extra
    # coroutine stays on the stack of every connection.
    async def stream_connected(self, reader, writer, listener_name):
        reader, writer = StreamReaderAdapter(reader), StreamWriterAdapter(writer)
        if not await self._refused_over_the_limit(listener_name, writer):
            await self._client_connected(listener_name, reader, writer)

    async def external_connected(self, reader, writer, listener_name):
        if not await self._refused_over_the_limit(listener_name, writer):
            await self._client_connected(listener_name, reader, writer)

    async def _refused_over_the_limit(self, listener_name, writer):
        if not self.max_connections or sum(self._live.values()) < self.max_connections:
            return False
        self.refused["max_connections"] += 1
        logger.warning("refusing a connection on %r: %d connections is the limit", listener_name, self.max_connections)
        await writer.close()
        return True

    # Upstream (_initialize_client_session): an existing session with the same client id is deleted or
    # taken over *before* authentication, so a CONNECT with a wrong password could wipe a live device's
    # session; sessions that failed to authenticate also stayed in memory forever. Here authentication
    # comes first, and a refused client gets its CONNACK and is gone before any session state is touched.
    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        try:
            handler, session = await _init_from_connect(HubProtocolHandler, reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        # Upstream (BrokerProtocolHandler.__init__): two asyncio.Queues per connection (~3.2 KB each) for
        # SUBSCRIBE and UNSUBSCRIBE requests, which _client_message_loop below reads without a task each.
        # Replaced before authentication, which connections of a reconnect storm wait for in their thousands.
        handler._pending_subscriptions = LeanQueue()
        handler._pending_unsubscriptions = LeanQueue()
        if not session.client_id:
            session.client_id = gen_client_id()
        if not await super()._authenticate(session, None):
            self.refused["not_authorized"] += 1
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"{session.client_id}: not authorized")
        session.attributes[_AUTHENTICATED] = True

        existing, existing_handler = self._sessions.get(session.client_id, (None, None))
        if existing is not None and existing.transitions.is_connected() and existing_handler is not None:
            # [MQTT-3.1.4-2]: a second connection with the same client id replaces the first.
            logger.info("%s connected again; closing its previous connection", session.client_id)
            if existing_handler.writer is not None:
                await existing_handler.writer.close()
            # Upstream (_handle_client_session, take-over): the new connection goes ahead while the old one's
            # client loop is still ending, and that loop then marks the shared session "disconnected": the new
            # connection got no live messages (they went to the offline queue). Here the old connection ends
            # first (its Last Will included); upstream's take-over remains the fallback after TAKE_OVER_WAIT.
            await self._until_disconnected(existing)
            existing, existing_handler = self._sessions.get(session.client_id, (None, None))
        if existing is not None and principal_of(existing) != principal_of(session):
            await self._delete_session(session.client_id)  # never resume another principal's session
            existing = None
        if session.clean_session:
            await self._delete_session(session.client_id)
            session.parent = 0
        elif existing is not None:
            for name in (
                "will_flag",
                "will_message",
                "will_topic",
                "will_qos",
                "will_retain",
                "keep_alive",
                "username",
                "password",
            ):
                setattr(existing, name, getattr(session, name))
            existing.attributes.update(session.attributes)
            existing.is_anonymous = session.is_anonymous
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        # Upstream: keepalive is never enforced. MQTT 3.1.1 §3.1.2.10: disconnect after 1.5x keepalive.
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        handler.bridge = self.bridge
        return handler, session

    # Upstream (create_offline_session): an amqtt Session with its transitions Machine.
    def create_offline_session(self, client_id):
        session = HubSession()
        session.client_id = client_id
        handler = HubProtocolHandler(self.plugins_manager, session)
        handler._pending_subscriptions = LeanQueue()
        handler._pending_unsubscriptions = LeanQueue()
        session.transitions.disconnect()
        return handler, session

    TAKE_OVER_WAIT = 2.0  # seconds

    async def _until_disconnected(self, session):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.TAKE_OVER_WAIT
        while session.transitions.is_connected() and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def _authenticate(self, session, listener):
        """Authentication already happened in _initialize_client_session (before any session was touched)."""
        return bool(session.attributes.get(_AUTHENTICATED))

    async def _handle_client_session(self, reader, writer, session, handler, server, listener_name):
        principal = principal_of(session)
        key = principal  # lifecycle is per device: two connections of one device keep it online
        self._live[key] = self._live.get(key, 0) + 1
        session.attributes[_CONNECTING] = True
        if self.lifecycle is not None and self._live[key] == 1:
            await self._notify("connected", principal)
        try:
            await super()._handle_client_session(reader, writer, session, handler, server, listener_name)
        finally:
            self._live[key] -= 1
            if not self._live[key]:
                del self._live[key]
                if self.lifecycle is not None:
                    await self._notify("disconnected", principal)

    # Upstream (_client_message_loop): for the whole connection, four tasks wait on the disconnect future and
    # on three queues (SUBSCRIBE, UNSUBSCRIBE, PUBLISHes to broadcast), under an asyncio.wait. Here the loop
    # awaits one future that the queues (LeanQueue.notify) and the disconnect future complete. The handling
    # is upstream's, in its order: a subscription, an unsubscription, then a message per round; upstream
    # ends the loop when it sees the disconnection, here once what was queued before it is handled.
    async def _client_message_loop(self, client_session, handler):
        client_session.attributes.pop(_CONNECTING, None)  # CONNECT-time retained delivery is over
        loop = asyncio.get_running_loop()
        disconnect = handler._disconnect_waiter
        if disconnect is None:  # upstream's wait_disconnect() returns None at once
            disconnect = loop.create_future()
            disconnect.set_result(None)
        subscriptions, unsubscriptions = handler._pending_subscriptions, handler._pending_unsubscriptions
        messages = client_session.delivered_message_queue
        queues = (subscriptions, unsubscriptions, messages)
        wake = None

        def poke(_=None):
            if wake is not None and not wake.done():
                wake.set_result(None)

        for queue in queues:
            queue.notify = poke
        disconnect.add_done_callback(poke)
        try:
            while True:
                if subscriptions.empty() and unsubscriptions.empty() and messages.empty():
                    if disconnect.done():
                        await self._handle_disconnect(client_session, handler, disconnect)
                        break
                    wake = loop.create_future()
                    await wake
                    continue
                if not subscriptions.empty():
                    await self._handle_subscription(client_session, handler, _next(loop, subscriptions))
                if not unsubscriptions.empty():
                    await self._handle_unsubscription(client_session, handler, _next(loop, unsubscriptions))
                if not messages.empty() and not await self._handle_message_delivery(
                    client_session, handler, _next(loop, messages)
                ):
                    break
        except asyncio.CancelledError:
            logger.debug("%s: client loop cancelled", client_session.client_id)  # upstream ends the loop too
        finally:
            for queue in queues:
                if queue.notify is poke:
                    queue.notify = None
            disconnect.remove_done_callback(poke)

    async def _notify(self, event, principal):
        try:
            await getattr(self.lifecycle, event)(principal)
        except Exception:
            logger.exception("the %s callback failed for %s", event, principal)

    async def kick(self, client_id, *, forget=False):
        """Close a client's live connection now (no Last Will); ``forget`` also drops its persistent session."""
        session, handler = self._sessions.get(client_id, (None, None))
        if session is not None:
            session.will_flag = False
        if handler is not None and handler.writer is not None:
            await handler.writer.close()
        if forget:
            await self._delete_session(client_id)

    def connected_principals(self):
        return list(self._live)

    # --- access checks ---------------------------------------------------------------------------------

    # Upstream (_topic_filtering): every check fans out to the plugins through tasks and gather; the hub's
    # ACL is a synchronous in-memory rule, so it is called directly (same plugin code, no tasks).
    async def _topic_filtering(self, session, topic, action):
        return check(session, topic, action)

    # --- subscriptions, indexed --------------------------------------------------------------------------

    # Upstream (add_subscription): a repeated SUBSCRIBE keeps the old QoS; [MQTT-3.8.4-3] says replace it.
    async def add_subscription(self, subscription, session):
        topic_filter, qos = subscription
        existing = self._subscriptions.get(topic_filter)
        if existing and any(s.client_id == session.client_id for s, _ in existing):
            if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
                return 0x80
            existing[:] = [(s, qos if s.client_id == session.client_id else q) for s, q in existing]
            return qos
        granted = await super().add_subscription(subscription, session)
        if granted != 0x80:
            self._index.add(topic_filter)
            self._filters_by_client.setdefault(session.client_id, set()).add(topic_filter)
            if self.lifecycle is not None:
                await self._notify("subscribed", principal_of(session))
        return granted

    def subscribed(self, client_id, topic):
        """Whether the client holds a subscription whose filter matches ``topic``."""
        return any(self._matches(topic, f) for f in self._filters_by_client.get(client_id, ()))

    def _del_subscription(self, a_filter, session):
        deleted = super()._del_subscription(a_filter, session)
        if deleted:
            self._filters_by_client.get(session.client_id, set()).discard(a_filter)
            if not self._subscriptions.get(a_filter):
                self._subscriptions.pop(a_filter, None)
                self._index.discard(a_filter)
        return deleted

    # Upstream (_del_all_subscriptions): scans every filter of every client.
    async def _del_all_subscriptions(self, session):
        for topic_filter in self._filters_by_client.pop(session.client_id, set()):
            self._del_subscription(topic_filter, session)

    # --- delivery ---------------------------------------------------------------------------------------

    async def _handle_message_delivery(self, client_session, handler, wait_deliver):
        message = wait_deliver.result()
        _publish_qos.set(message.qos if message is not None else None)
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    async def _broadcast_message(self, session, topic, data, force_qos=None):
        qos = force_qos if force_qos is not None else _publish_qos.get()
        await self._broadcast_queue.put(
            {"session": session, "topic": topic, "data": data, "qos": QOS_0 if qos is None else qos}
        )

    def has_subscribers(self, topic):
        """Whether any subscription filter matches ``topic`` (an index lookup; no ACL check)."""
        return bool(self._index.match(topic))

    def deliver_nowait(self, session, topic, data, qos):
        """Queue a message from ``session`` for delivery at ``qos`` (what _broadcast_message does, without
        awaiting: the broadcast queue is unbounded)."""
        self._broadcast_queue.put_nowait({"session": session, "topic": topic, "data": data, "qos": qos})

    async def publish(self, topic, data, qos=QOS_1, retain=False):
        """Publish as the hub itself (commands); delivery obeys each recipient's ACL like any message."""
        await self._broadcast_message(None, topic, data, force_qos=qos)
        if retain:
            await self.retain_message(None, topic, data, qos)

    # Upstream (_run_broadcast): every publish is matched against every filter, a subscriber whose filters
    # overlap gets one copy per filter, and delivery uses the subscription's QoS even when the PUBLISH had
    # a lower one. Here: indexed matching, one copy per client at its highest matching QoS, and
    # min(publish QoS, subscription QoS) [MQTT-3.8.4-6].
    async def _run_broadcast(self, running_tasks):
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        recipients = {}
        for topic_filter in self._index.match(topic):
            for session, sub_qos in self._subscriptions.get(topic_filter, ()):
                known = recipients.get(session.client_id)
                if known is None or sub_qos > known[1]:
                    recipients[session.client_id] = (session, sub_qos)
        publish_qos = broadcast.get("qos", QOS_0)
        for session, sub_qos in recipients.values():
            if not check(session, topic, Action.RECEIVE):
                continue
            qos = min(publish_qos, sub_qos)
            state = session.transitions.state
            if state != "connected":
                if not session.clean_session and qos in (QOS_1, QOS_2) and not session.is_anonymous:
                    await self._retain_broadcast_message(broadcast, qos, session)
                continue
            handler = self._get_handler(session)
            if handler is not None:
                running_tasks.append(
                    asyncio.ensure_future(handler.mqtt_publish(topic, broadcast["data"], qos, retain=False))
                )

    # Upstream (_handle_client_session): on CONNECT, retained messages matching *every* client's filters are
    # sent to the new client, and none of them is checked against its receive ACL. Here retained messages
    # go out only for the client's own new subscriptions, if it may receive them, at the lower QoS.
    async def _publish_retained_messages_for_subscription(self, subscription, session):
        if session.attributes.get(_CONNECTING):
            return
        topic_filter, sub_qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = [
            asyncio.ensure_future(
                handler.mqtt_publish(
                    retained.topic,
                    retained.data,
                    min(sub_qos, retained.qos if retained.qos is not None else sub_qos),
                    retain=True,
                )
            )
            for topic, retained in list(self._retained_messages.items())
            if self._matches(topic, topic_filter) and check(session, topic, Action.RECEIVE)
        ]
        if tasks:
            await asyncio.wait(tasks)

    # Upstream (_publish_session_retained_messages): messages queued while a persistent session was offline
    # are sent with RETAIN=1, as if they were retained messages; [MQTT-3.3.1-9] says RETAIN=0.
    async def _publish_session_retained_messages(self, session):
        handler = self._get_handler(session)
        tasks = []
        while handler is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            tasks.append(
                asyncio.ensure_future(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
            )
        if tasks:
            await asyncio.wait(tasks)


def _next(loop, queue):
    """The queue's next item in a completed future: upstream's _handle_* methods take the waiter of a request."""
    future = loop.create_future()
    future.set_result(queue.get_nowait())
    return future
