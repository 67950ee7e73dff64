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

from amqtt.adapters import BufferReader, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action, ListenerType
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.utils import gen_client_id

from hubserver.access import namespaces
from hubserver.access.principals import DevicePrincipal
from hubserver.routing.throttle import clip

from .acl import check
from .connect import ConnectRefused, connect_body, empty_client_id, protocol_level, read_connect
from .handler import HubProtocolHandler
from .limits import CLOSE_TIMEOUT, LimitCounters, Limits, abort
from .mqtt5 import connect as mqtt5_connect
from .mqtt5 import reasons
from .mqtt5.handler import MQTT5Handler
from .mqtt5.session import NEVER, outgoing_properties
from .session import BAD_CLIENT_ID, BAD_CREDENTIALS, HubSession, LeanQueue, principal_of
from .topic_index import FilterIndex

logger = logging.getLogger("hubserver.mqtt")

# The QoS of the PUBLISH being delivered, for _broadcast_message (set per client loop task).
_publish_qos = contextvars.ContextVar("hubserver_publish_qos", default=None)
# The MQTT 5 properties and RETAIN flag of the message being delivered (for _broadcast_message and
# retain_message, which upstream calls without them).
_publish_props = contextvars.ContextVar("hubserver_publish_props", default=None)
_publish_retain = contextvars.ContextVar("hubserver_publish_retain", default=False)
SHARE_PREFIX = "$share/"
# The session whose Last Will is being published (set around upstream's _handle_disconnect).
_will_of = contextvars.ContextVar("hubserver_will_of", default=None)
_ENDING = "hubserver.ending"  # the connection's session handling is running (its end not yet recorded)
_WILL = "hubserver.will"  # a device's Will waiting for the end of its connection to be recorded
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
        # Shared subscriptions: "$share/<group>/<filter>" subscriptions live in _subscriptions under that key;
        # _shared_index holds their filters, _share_groups each filter's keys, _share_turn the round robin.
        self._shared_index = FilterIndex()
        self._share_groups = {}
        self._share_turn = Counter()
        self._retained_props = {}  # topic -> MQTT 5 properties of its retained message
        # DISCONNECTs the hub sent MQTT 5 clients, by reason (every one the hub sends present from the start).
        self.disconnects = Counter({reasons.label(code): 0 for code in reasons.SERVER_DISCONNECTS})
        self._live = {}  # principal -> number of open connections (a take-over briefly makes it 2)
        self._sockets = 0  # accepted connections, whether or not they completed their CONNECT
        self.limits = Limits.from_settings()
        self.limit_counters = LimitCounters()
        self._deliveries = set()  # delivery tasks still running (see _run_broadcast)

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

    # Upstream (_client_connected): (a) max_connections makes extra clients wait on a semaphore, silently, and
    # counts only connections that got that far; (b) when the CONNECT phase fails in any way but one (an
    # MQTTError), the socket is never closed and stays in CLOSE_WAIT until garbage collection; (c) every
    # failure is logged with the client's own text, however long. Here every accepted socket counts against
    # MAX_CONNECTIONS from its first byte, the one over the limit is closed at once, every socket is closed
    # when its connection ends (whatever ended it), and refusals are counted and logged once a minute.
    async def stream_connected(self, reader, writer, listener_name):
        await self._client_connected(listener_name, StreamReaderAdapter(reader), StreamWriterAdapter(writer))

    async def _client_connected(self, listener_name, reader, writer):
        if self.max_connections and self._sockets >= self.max_connections:
            self.refused["max_connections"] += 1
            self.limit_counters._log.warning(
                "max_connections",
                None,
                "refusing a connection on %r: %d connections is the limit",
                listener_name,
                self.max_connections,
            )
            await _close_socket(writer)
            return
        self._sockets += 1
        session = None
        try:
            peer = writer.get_peer_info() or ("?", 0)
            try:
                handler, session = await self._initialize_client_session(reader, writer, *peer)
            except (AMQTTError, MQTTError, NoDataError, ConnectionError, asyncio.IncompleteReadError) as exc:
                logger.debug("connection from %s ended before it was established: %s", peer[0], exc)
                return
            try:
                await self._handle_client_session(reader, writer, session, handler, None, listener_name)
            except (AMQTTError, MQTTError, NoDataError) as exc:
                logger.warning("%s: connection ended with an error: %s", clip(session.client_id), exc)
        finally:
            self._sockets -= 1
            await _close_socket(writer)

    # Upstream (_initialize_client_session): an existing session with the same client id is deleted or
    # taken over *before* authentication, so a CONNECT with a wrong password could wipe a live device's
    # session; sessions that failed to authenticate also stayed in memory forever. Here the CONNECT is read
    # within CONNECT_TIMEOUT and MAX_CONNECT_SIZE (plugins/connect.py), authentication comes first, and a
    # refused client gets its CONNACK and is gone before any session state is touched.
    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        limits = self.limits
        try:
            async with asyncio.timeout(limits.connect_timeout):
                packet = await read_connect(reader, limits.max_connect_size)
        except TimeoutError:
            self.limit_counters.close(
                None,
                "connect_timeout",
                "closed a connection from %s: no CONNECT within %s s",
                remote_address,
                limits.connect_timeout,
            )
            raise AMQTTError("no CONNECT within the connect timeout") from None
        except ConnectRefused as exc:
            if exc.connack is not None:
                self.refused[exc.reason] += 1
                writer.write(bytes((0x20, 2, 0, exc.connack)))
            else:
                self.limit_counters.closed[exc.reason] += 1
            self.limit_counters._log.warning(
                exc.reason, None, "closed a connection from %s before CONNECT: %s", remote_address, exc
            )
            raise AMQTTError(str(exc)) from None
        try:
            # The protocol level (which plugins/connect.py accepted) picks the handler: MQTT 5's, or amqtt's.
            if protocol_level(packet) == 5:
                handler, session = await mqtt5_connect.accept(
                    packet[0], connect_body(packet), writer, self.plugins_manager
                )
                handler.violations = self.disconnects
            else:
                handler, session = await _init_from_connect(
                    HubProtocolHandler, BufferReader(packet), writer, self.plugins_manager
                )
        except MQTTError as exc:  # answered (a CONNACK) where MQTT says to
            raise AMQTTError(exc) from exc
        except (AMQTTError, NoDataError, ValueError, IndexError, UnicodeDecodeError) as exc:
            self.limit_counters.close(
                None, "malformed_connect", "closed a connection from %s: malformed CONNECT", remote_address
            )
            raise AMQTTError(f"malformed CONNECT: {exc}") from exc
        # Upstream (BrokerProtocolHandler.__init__): two asyncio.Queues per connection (~3.2 KB each) for
        # SUBSCRIBE and UNSUBSCRIBE requests, which _client_message_loop below reads without a task each.
        # Replaced before authentication, which connections of a reconnect storm wait for in their thousands.
        handler._pending_subscriptions = LeanQueue()
        handler._pending_unsubscriptions = LeanQueue()
        # Upstream (ConnectPayload): an empty client id is replaced by a random one before authentication, so a
        # device (which may use only its own username as client id) was refused. The auth plugin sees the
        # empty id; a device then gets its username as client id, any other client a generated one.
        if handler.assigned_client_id if session.v5 is not None else empty_client_id(packet):
            session.client_id = ""
        if not await super()._authenticate(session, None):
            self.refused["not_authorized"] += 1
            bad_client_id = session.attributes.get(BAD_CLIENT_ID)
            if session.v5 is not None:
                if bad_client_id:
                    reason = reasons.CLIENT_IDENTIFIER_NOT_VALID
                elif session.attributes.get(BAD_CREDENTIALS):
                    reason = reasons.BAD_USER_NAME_OR_PASSWORD
                else:
                    reason = reasons.NOT_AUTHORIZED
                await mqtt5_connect.refuse(writer, reason)
            else:
                code = IDENTIFIER_REJECTED if bad_client_id else NOT_AUTHORIZED
                await ConnackPacket.build(0, code).to_stream(writer)
            raise AMQTTError(f"{clip(session.client_id)}: not authorized")
        if not session.client_id:
            principal = principal_of(session)
            session.client_id = principal.mqtt_username if isinstance(principal, DevicePrincipal) else gen_client_id()
            if session.v5 is not None:
                handler.assigned_client_id = session.client_id  # [MQTT-3.2.2-16]: told in the CONNACK
        session.attributes[_AUTHENTICATED] = True

        existing, existing_handler = self._sessions.get(session.client_id, (None, None))
        if existing is not None and existing.transitions.is_connected() and existing_handler is not None:
            # [MQTT-3.1.4-2]: a second connection with the same client id replaces the first.
            logger.info("%s connected again; closing its previous connection", session.client_id)
            await _close(existing_handler, reasons.SESSION_TAKEN_OVER)
            # Upstream (_handle_client_session, take-over): the new connection goes ahead while the old one's
            # client loop is still ending, and that loop then marks the shared session "disconnected": the new
            # connection got no live messages (they went to the offline queue). Here the old connection ends
            # first (its Last Will included); upstream's take-over remains the fallback after TAKE_OVER_WAIT.
            await self._until_disconnected(existing)
            existing, existing_handler = self._sessions.get(session.client_id, (None, None))
        if existing is not None and (
            principal_of(existing) != principal_of(session)
            or (existing.v5 is None) != (session.v5 is None)
            or (existing.clean_session and not existing.transitions.is_connected())
        ):
            # Never resume another principal's session; a client that changed protocol starts afresh; a
            # session that ended with its connection (clean session, or Session Expiry Interval 0) is gone
            # even while amqtt's session monitor has not removed it yet [MQTT-3.1.2-6] [MQTT-3.1.2-23].
            await self._end_session(existing)
            existing = None
        if session.clean_session:
            if existing is not None:
                await self._end_session(existing)
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
            if session.v5 is not None:
                existing.v5.take_over(session.v5)
            session = existing
            session.parent = 1
        else:
            session.parent = 0
        if session.v5 is not None:
            # MQTT 5: Clean Start only decided what happened to an old session; from now on the session
            # lives on after the connection unless its Session Expiry Interval is 0.
            session.clean_session = session.v5.session_expiry == 0
        cap = self.limits.max_keepalive
        if cap and session.v5 is not None and not 0 < session.keep_alive <= cap:
            # MAX_KEEPALIVE: an MQTT 5 client asking for none (0) or more is told the hub's in CONNACK
            # (Server Keep Alive) and must use it [MQTT-3.2.2-21]; 3.1.1 has no way to say so.
            session.keep_alive = handler.server_keep_alive = cap
        # Upstream: keepalive is never enforced. MQTT 3.1.1 §3.1.2.10: disconnect after 1.5x keepalive.
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        handler.bridge = self.bridge
        handler.limits = self.limits
        handler.counters = self.limit_counters
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
        session.attributes[_ENDING] = True
        try:
            await super()._handle_client_session(reader, writer, session, handler, server, listener_name)
        finally:
            self._live[key] -= 1
            if not self._live[key]:
                del self._live[key]
                if self.lifecycle is not None:
                    await self._notify("disconnected", principal)
            session.attributes.pop(_ENDING, None)
            will = session.attributes.pop(_WILL, None)
            if will is not None:
                await self._route_will(session, *will)

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

    async def kick(self, client_id, *, forget=False, reason=reasons.NOT_AUTHORIZED):
        """Close a client's live connection now (no Last Will); ``forget`` also drops its persistent session.
        An MQTT 5 client is told ``reason`` in a DISCONNECT first (by default: its access was revoked)."""
        session, handler = self._sessions.get(client_id, (None, None))
        if session is not None:
            session.will_flag = False
        if handler is not None:
            await _close(handler, reason)
        if forget:
            await self._delete_session(client_id)

    async def _end_session(self, session):
        """Drop a session a new connection does not resume; a Will it was still delaying goes out now."""
        v5 = session.v5
        if v5 is not None and v5.will_timer is not None:
            v5.cancel_timers()
            await self._send_will(session)
        elif v5 is not None:
            v5.cancel_timers()
        await self._delete_session(session.client_id)

    async def shutdown(self):
        """MQTT 5 clients are told the server is shutting down (0x8B) before their connections close."""
        for _, handler in list(self._sessions.values()):
            if isinstance(handler, MQTT5Handler):
                await handler.send_disconnect(reasons.SERVER_SHUTTING_DOWN)
        for session, _ in list(self._sessions.values()):
            if session.v5 is not None:
                session.v5.cancel_timers()
        await super().shutdown()

    # --- MQTT 5: Will Delay Interval and Session Expiry Interval -----------------------------------

    async def _handle_disconnect(self, client_session, handler, disconnect_waiter):
        """Upstream's, plus for MQTT 5: the Will goes out with its properties, after its Will Delay Interval
        unless the session is resumed first [MQTT-3.1.3-9], and the session ends after its Session Expiry
        Interval [MQTT-3.1.2-23]. (A normal DISCONNECT discards the Will [MQTT-3.14.4-3].) A device's Will is
        stored like any of its messages (see _broadcast_message)."""
        token = _will_of.set(client_session)
        try:
            return await self._handle_disconnect_and_will(client_session, handler, disconnect_waiter)
        finally:
            _will_of.reset(token)

    async def _handle_disconnect_and_will(self, client_session, handler, disconnect_waiter):
        v5 = client_session.v5
        if v5 is None:
            return await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        result = disconnect_waiter.result()
        abnormal = not isinstance(result, DisconnectPacket)
        delay = v5.will_delay if v5.session_expiry else 0
        delayed = abnormal and client_session.will_flag and delay > 0
        token = _publish_props.set(v5.will_properties)
        if delayed:
            client_session.will_flag = False
        try:
            await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        finally:
            _publish_props.reset(token)
            if delayed:
                client_session.will_flag = True
        loop = asyncio.get_running_loop()
        if delayed:
            v5.will_timer = loop.call_later(min(delay, v5.session_expiry), self._will_due, client_session)
        if not client_session.clean_session and v5.session_expiry != NEVER:
            v5.expiry_timer = loop.call_later(v5.session_expiry, self._expiry_due, client_session)

    def _will_due(self, session):
        session.v5.will_timer = None
        if session.transitions.is_connected():
            return
        _spawn(self._send_will(session))

    async def _send_will(self, session):
        token = _publish_props.set(session.v5.will_properties)
        will = _will_of.set(session)
        try:
            await self._broadcast_message(session, session.will_topic, session.will_message, session.will_qos)
            if session.will_retain:
                await self.retain_message(session, session.will_topic, session.will_message, session.will_qos)
        finally:
            _will_of.reset(will)
            _publish_props.reset(token)

    def _expiry_due(self, session):
        session.v5.expiry_timer = None
        current, _ = self._sessions.get(session.client_id, (None, None))
        if current is session and not session.transitions.is_connected():
            logger.info("%s: session expired", session.client_id)
            _spawn(self._end_session(session))

    def connected_principals(self):
        return list(self._live)

    @property
    def open_sockets(self):
        """Accepted MQTT connections, whether or not they completed their CONNECT."""
        return self._sockets

    # --- what the embedded engine (hubserver/brokers/embedded.py) uses: nothing else of amqtt -----------------

    async def close_listeners(self):
        """Stop accepting connections on every listener (the connections already open stay)."""
        for server in self._servers.values():
            await server.close_instance()

    def _live_handler(self, client_id):
        session, handler = self._sessions.get(client_id, (None, None))
        if handler is None or not session.transitions.is_connected():
            return None
        return handler

    def is_connected(self, client_id, topic=None):
        """Connected, and (given a topic) subscribed to a filter that matches it."""
        if self._live_handler(client_id) is None:
            return False
        return topic is None or self.subscribed(client_id, topic)

    async def publish_to(
        self, client_id, topic, data, qos, *, correlation_id="", response_topic="", user_properties=None
    ):
        """Send to one client's live session; returns once it acknowledged (QoS >= 1) or it was written.
        An MQTT 5 client gets ``correlation_id`` as Correlation Data, ``response_topic`` and
        ``user_properties`` as properties, and a JSON content type; MQTT 3.1.1 has no room for them."""
        handler = self._live_handler(client_id)
        if handler is None:
            raise ConnectionError(f"{client_id} is not connected")
        if not isinstance(handler, MQTT5Handler):
            await handler.mqtt_publish(topic, data, qos, retain=False)
            return
        properties = {"content_type": "application/json"}
        if correlation_id:
            properties["correlation_data"] = correlation_id.encode()
        if response_topic:
            properties["response_topic"] = response_topic
        if user_properties:
            properties["user_property"] = [(str(name), str(value)) for name, value in user_properties.items()]
        await handler.mqtt_publish(topic, data, qos, retain=False, properties=properties)

    async def kick_username(self, username):
        """Close and forget every session authenticated as ``username``; returns their client ids."""
        kicked = [client_id for client_id, (session, _) in list(self._sessions.items()) if session.username == username]
        for client_id in kicked:
            await self.kick(client_id, forget=True)
        return kicked

    def connection_count(self):
        """Open client connections (a take-over briefly counts twice)."""
        return sum(self._live.values())

    # --- access checks ---------------------------------------------------------------------------------

    # Upstream (_topic_filtering): every check fans out to the plugins through tasks and gather; the hub's
    # ACL is a synchronous in-memory rule, so it is called directly (same plugin code, no tasks).
    async def _topic_filtering(self, session, topic, action):
        if action == Action.SUBSCRIBE and topic.startswith(SHARE_PREFIX):
            topic = shared_filter(topic)
            if topic is None:
                return False
        return check(session, topic, action)

    # --- subscriptions, indexed --------------------------------------------------------------------------

    # Upstream (add_subscription): a repeated SUBSCRIBE keeps the old QoS; [MQTT-3.8.4-3] says replace it.
    # Refusals carry their MQTT 5 reason (topic filter invalid, not authorized); a 3.1.1 client gets 0x80.
    # "$share/<group>/<filter>" is a shared subscription: checked on <filter>, indexed apart.
    async def add_subscription(self, subscription, session):
        topic_filter, qos = subscription
        shared = topic_filter.startswith(SHARE_PREFIX)
        inner = shared_filter(topic_filter) if shared else topic_filter
        if inner is None or not _valid_filter(inner):
            return reasons.TOPIC_FILTER_INVALID
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            application = namespaces.owner(inner)
            # An application's topic (DASF): before refusing, a grant made elsewhere a moment ago counts.
            if application is None:
                return reasons.NOT_AUTHORIZED
            if not (
                await application.recheck() and await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE)
            ):
                application.subscription_refused(principal_of(session), inner)
                return reasons.NOT_AUTHORIZED
        existing = self._subscriptions.get(topic_filter)
        if existing and any(s.client_id == session.client_id for s, _ in existing):
            existing[:] = [(s, qos if s.client_id == session.client_id else q) for s, q in existing]
            return qos
        granted = await super().add_subscription(subscription, session)
        if granted < 0x80:
            if shared:
                self._shared_index.add(inner)
                self._share_groups.setdefault(inner, set()).add(topic_filter)
            else:
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
            if session.v5 is not None:
                session.v5.options.pop(a_filter, None)
            if not self._subscriptions.get(a_filter):
                self._subscriptions.pop(a_filter, None)
                if a_filter.startswith(SHARE_PREFIX):
                    inner = shared_filter(a_filter)
                    keys = self._share_groups.get(inner)
                    if keys is not None:
                        keys.discard(a_filter)
                        if not keys:
                            del self._share_groups[inner]
                            self._shared_index.discard(inner)
                    self._share_turn.pop(a_filter, None)
                else:
                    self._index.discard(a_filter)
        return deleted

    # Upstream (_del_all_subscriptions): scans every filter of every client.
    async def _del_all_subscriptions(self, session):
        for topic_filter in self._filters_by_client.pop(session.client_id, set()):
            self._del_subscription(topic_filter, session)

    # Upstream (_handle_subscription): return codes are 3.1.1's, and retained messages go to every new
    # subscription. MQTT 5 adds the subscription's options and identifier, reason codes per filter, and
    # Retain Handling [MQTT-3.3.1-9..11]; no shared subscription gets retained messages (section 4.8.2).
    async def _handle_subscription(self, client_session, handler, subscribe_waiter):
        subscriptions = subscribe_waiter.result()
        v5 = client_session.v5
        options = getattr(subscriptions, "options", None)
        codes = []
        retained = []
        for index, (topic_filter, qos) in enumerate(subscriptions.topics):
            existed = topic_filter in self._filters_by_client.get(client_session.client_id, ())
            code = await self.add_subscription((topic_filter, qos), client_session)
            if code < 0x80:
                handling = 0
                if v5 is not None and options is not None:
                    v5.options[topic_filter] = options[index]
                    handling = options[index].retain_handling
                if not topic_filter.startswith(SHARE_PREFIX) and (handling == 0 or (handling == 1 and not existed)):
                    retained.append((topic_filter, code))
            codes.append(code if v5 is not None or code < 0x80 else 0x80)
        await handler.mqtt_acknowledge_subscription(subscriptions.packet_id, codes)
        for (topic_filter, qos), code in zip(subscriptions.topics, codes, strict=True):
            if code < 0x80:
                await self.plugins_manager.fire_event(
                    BrokerEvents.CLIENT_SUBSCRIBED, client_id=client_session.client_id, topic=topic_filter, qos=qos
                )
        for subscription in retained:
            await self._publish_retained_messages_for_subscription(subscription, client_session)

    # Upstream (_handle_unsubscription): MQTT 5 answers each filter: 0x00, or 0x11 when there was none.
    async def _handle_unsubscription(self, client_session, handler, unsubscribe_waiter):
        unsubscription = unsubscribe_waiter.result()
        codes = []
        for topic_filter in unsubscription.topics:
            deleted = self._del_subscription(topic_filter, client_session)
            codes.append(reasons.SUCCESS if deleted else reasons.NO_SUBSCRIPTION_EXISTED)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_UNSUBSCRIBED, client_id=client_session.client_id, topic=topic_filter
            )
        if client_session.v5 is not None:
            await handler.mqtt_acknowledge_unsubscription(unsubscription.packet_id, codes)
        else:
            await handler.mqtt_acknowledge_unsubscription(unsubscription.packet_id)

    # --- delivery ---------------------------------------------------------------------------------------

    async def _handle_message_delivery(self, client_session, handler, wait_deliver):
        message = wait_deliver.result()
        _publish_qos.set(message.qos if message is not None else None)
        _publish_props.set(getattr(message, "properties", None))
        _publish_retain.set(bool(message.retain) if message is not None else False)
        return await super()._handle_message_delivery(client_session, handler, wait_deliver)

    # Upstream (_handle_disconnect): a Last Will is only delivered to subscribers, so a device's Will on its own
    # status or data topic was never stored (and a {"status": "error"} Will did not change its status). Here
    # a device's Will is routed like its other messages: stored, then delivered. While its connection is
    # still ending, the Will waits until the device's disconnection is recorded (so that what the Will says
    # is the device's last word), then goes to the router (_route_will).
    async def _broadcast_message(self, session, topic, data, force_qos=None):
        if session is not None and _will_of.get() is session and self._stores_will(session):
            qos = force_qos if force_qos is not None else session.will_qos
            if session.attributes.get(_ENDING):
                session.attributes[_WILL] = (topic, data, qos, _publish_props.get())
            else:
                await self._route_will(session, topic, data, qos, _publish_props.get())
            return
        if session is not None and _will_of.get() is session and self.bridge is not None:
            taken = self.bridge.application_will(session, topic, data)
            if taken is not None:  # a Will on an application's topic (DASF) goes to the application
                _spawn(taken)
                return
        qos = force_qos if force_qos is not None else _publish_qos.get()
        await self._broadcast_queue.put(
            {
                "session": session,
                "topic": topic,
                "data": data,
                "qos": QOS_0 if qos is None else qos,
                "properties": _publish_props.get(),
                "retain": _publish_retain.get(),
            }
        )

    def _stores_will(self, session):
        return self.bridge is not None and isinstance(principal_of(session), DevicePrincipal)

    async def _route_will(self, session, topic, data, qos, properties=None):
        """Store a device's Will through the router, then deliver it (a Will cannot be sent again: it is
        delivered even if it could not be stored)."""
        payload = bytes(data or b"")
        try:
            future = await self.bridge.submit(session, topic, payload, qos or 0, properties)
            if future is None:  # the ACL refused it (its topic was checked at CONNECT): nobody gets it
                return
            stored = (await future).stored
        except Exception as exc:
            logger.warning("%s: its Last Will on %s was not stored: %s", clip(session.client_id), clip(topic), exc)
            stored = True
        if stored:
            self.deliver_nowait(session, topic, payload, qos or 0, properties)

    def has_subscribers(self, topic):
        """Whether any subscription filter matches ``topic`` (an index lookup; no ACL check)."""
        return bool(self._index.match(topic)) or bool(self._share_groups and self._shared_index.match(topic))

    def deliver_nowait(self, session, topic, data, qos, properties=None):
        """Queue a message from ``session`` for delivery at ``qos`` (what _broadcast_message does, without
        awaiting: the broadcast queue is unbounded). ``properties``: its MQTT 5 properties, if any."""
        self._broadcast_queue.put_nowait(
            {"session": session, "topic": topic, "data": data, "qos": qos, "properties": properties, "retain": False}
        )

    async def publish(self, topic, data, qos=QOS_1, retain=False, properties=None):
        """Publish as the hub itself (commands); delivery obeys each recipient's ACL like any message.
        ``properties`` (MQTT 5: correlation data, response topic...) reach MQTT 5 subscribers."""
        token = _publish_props.set(properties)
        try:
            await self._broadcast_message(None, topic, data, force_qos=qos)
            if retain:
                await self.retain_message(None, topic, data, qos)
        finally:
            _publish_props.reset(token)

    async def retain_message(self, source_session, topic_name, data, qos=None):
        if source_session is not None and namespaces.owner(topic_name) is not None:
            return  # an application's topic (DASF) keeps nothing retained: its messages are the application's
        await super().retain_message(source_session, topic_name, data, qos)
        properties = _publish_props.get()
        if properties and topic_name in self._retained_messages:
            self._retained_props[topic_name] = properties
        else:
            self._retained_props.pop(topic_name, None)

    # Upstream (_run_broadcast): every publish is matched against every filter, a subscriber whose filters
    # overlap gets one copy per filter, and delivery uses the subscription's QoS even when the PUBLISH had
    # a lower one. Here: indexed matching, one copy per client at its highest matching QoS, and
    # min(publish QoS, subscription QoS) [MQTT-3.8.4-6]. MQTT 5: No Local [MQTT-3.8.3-3], Retain As
    # Published [MQTT-3.3.1-12/13], every matching Subscription Identifier [MQTT-3.3.4-3], an expired
    # message is dropped [MQTT-3.3.2-5]; each shared subscription group gets one copy, for one member.
    # Upstream keeps every delivery task in a queue that its loop empties from the front only as far as the
    # tasks there are done: one delivery that never ends (a client that reads nothing, or never acknowledges)
    # kept every later delivery to everyone, finished, with its message, for as long as it lasted (25 MB
    # for 400 messages of 64 KiB). Here each delivery task is forgotten when it ends, and its outcome retrieved.
    async def _run_broadcast(self, running_tasks):
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        properties = broadcast.get("properties")
        if properties and outgoing_properties(properties) is False:
            return  # expired before it could be delivered
        source = broadcast.get("session")
        source_id = source.client_id if source is not None else None
        recipients = {}
        for topic_filter in self._index.match(topic):
            for session, sub_qos in self._subscriptions.get(topic_filter, ()):
                v5 = session.v5
                if v5 is not None:
                    options = v5.options.get(topic_filter)
                    if options is not None and options.no_local and session.client_id == source_id:
                        continue
                known = recipients.get(session.client_id)
                if known is None:
                    recipients[session.client_id] = known = [session, sub_qos, []]
                elif sub_qos > known[1]:
                    known[1] = sub_qos
                known[2].append(topic_filter)
        deliveries = list(recipients.values())
        if self._share_groups:
            for inner in self._shared_index.match(topic):
                for key in self._share_groups.get(inner, ()):
                    member = self._share_member(key, topic)
                    if member is not None:
                        deliveries.append([member[0], member[1], [key]])
        publish_qos = broadcast.get("qos", QOS_0)
        for session, sub_qos, filters in deliveries:
            if not check(session, topic, Action.RECEIVE):
                continue
            qos = min(publish_qos, sub_qos)
            state = session.transitions.state
            if state != "connected":
                if not session.clean_session and qos in (QOS_1, QOS_2):
                    await self._retain_broadcast_message(broadcast, qos, session, filters)
                continue
            handler = self._get_handler(session)
            if handler is None:
                continue
            if session.v5 is None:
                publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
            else:
                retain, out = _for_subscriber(session.v5, filters, broadcast.get("retain"), properties)
                publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=retain, properties=out)
            task = asyncio.ensure_future(publish)
            self._deliveries.add(task)
            task.add_done_callback(self._delivered)

    def _delivered(self, task):
        self._deliveries.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.limit_counters._log.warning(
                "delivery_error", type(error).__name__, "a delivery failed and was skipped: %r", error
            )

    async def _shutdown_broadcast_loop(self):
        for task in list(self._deliveries):
            task.cancel()
        await super()._shutdown_broadcast_loop()

    def _share_member(self, key, topic):
        """The member of shared subscription ``key`` that gets this message: the next connected one that may
        receive it, round robin; else a persistent offline one (it is queued for it); else None."""
        members = self._subscriptions.get(key)
        if not members:
            return None
        turn = self._share_turn[key]
        count = len(members)
        offline = None
        for step in range(count):
            session, qos = members[(turn + step) % count]
            if not check(session, topic, Action.RECEIVE):
                continue
            if session.transitions.is_connected():
                self._share_turn[key] = (turn + step + 1) % count
                return session, qos
            if offline is None and not session.clean_session:
                offline = (session, qos)
        return offline

    async def _retain_broadcast_message(self, broadcast, qos, target_session, filters=()):
        """Queue a message for an offline persistent session, with what an MQTT 5 delivery needs later."""
        message = QueuedMessage(broadcast["session"], broadcast["topic"], broadcast["data"], qos)
        if target_session.v5 is not None:
            message.retain, message.properties = _for_subscriber(
                target_session.v5, filters, broadcast.get("retain"), broadcast.get("properties")
            )
        await target_session.retained_messages.put(message)

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
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter) or not check(session, topic, Action.RECEIVE):
                continue
            qos = min(sub_qos, retained.qos if retained.qos is not None else sub_qos)
            if session.v5 is None:
                publish = handler.mqtt_publish(retained.topic, retained.data, qos, retain=True)
            else:
                _, out = _for_subscriber(session.v5, (topic_filter,), True, self._retained_props.get(topic))
                publish = handler.mqtt_publish(retained.topic, retained.data, qos, retain=True, properties=out)
            tasks.append(asyncio.ensure_future(publish))
        if tasks:
            await asyncio.wait(tasks)

    # Upstream (_publish_session_retained_messages): messages queued while a persistent session was offline
    # are sent with RETAIN=1, as if they were retained messages; [MQTT-3.3.1-9] says RETAIN=0.
    async def _publish_session_retained_messages(self, session):
        handler = self._get_handler(session)
        tasks = []
        while handler is not None and not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            if session.v5 is not None and isinstance(queued, QueuedMessage):
                publish = handler.mqtt_publish(
                    queued.topic, queued.data, queued.qos, retain=queued.retain, properties=queued.properties
                )
            else:
                publish = handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False)
            tasks.append(asyncio.ensure_future(publish))
        if tasks:
            await asyncio.wait(tasks)


class QueuedMessage(RetainedApplicationMessage):
    """A message waiting for an offline persistent session, with its MQTT 5 RETAIN flag and properties."""

    __slots__ = ("properties",)

    def __init__(self, source_session, topic, data, qos):
        super().__init__(source_session, topic, data, qos)
        self.retain = False
        self.properties = None


def _for_subscriber(v5, filters, retain, properties):
    """``(RETAIN flag, properties)`` of a delivery to an MQTT 5 subscriber through ``filters``: RETAIN as
    published if one of them asks for it (else 0), and every Subscription Identifier they carry."""
    keep_retain = False
    ids = []
    for topic_filter in filters:
        options = v5.options.get(topic_filter)
        if options is not None:
            keep_retain = keep_retain or options.retain_as_published
            if options.subscription_id is not None:
                ids.append(options.subscription_id)
    if ids:
        properties = {**(properties or {}), "subscription_identifier": ids}
    return bool(retain) and keep_retain, properties


def shared_filter(topic_filter):
    """The filter of a "$share/<group>/<filter>" subscription, or None if it is not a valid one: the group
    is at least one character without "/", "+" or "#", and a filter follows [MQTT-4.8.2-1] [MQTT-4.8.2-2]."""
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or not slash or not inner or "+" in group or "#" in group:
        return None
    return inner


def _valid_filter(topic_filter):
    """A non-empty filter whose "#" is alone and last and whose "+" occupy whole levels [MQTT-4.7.1-1..3]."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


_background = set()


def _spawn(coroutine):
    """Run ``coroutine`` from a timer callback, keeping a reference until it is done."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _close(handler, reason):
    """Close a handler's connection; an MQTT 5 client is told ``reason`` in a DISCONNECT first."""
    if isinstance(handler, MQTT5Handler):
        await handler.send_disconnect(reason)
    elif handler.writer is not None:
        await handler.writer.close()


async def _close_socket(writer):
    """Close a connection's writer, whatever state it is in: what it still has to send gets a moment, then
    the connection is aborted (a client that reads nothing must not keep its socket open)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.close()
    except TimeoutError:
        abort(writer)
    except Exception as exc:  # an already broken connection
        logger.debug("closing a connection: %r", exc)


def _next(loop, queue):
    """The queue's next item in a completed future: upstream's _handle_* methods take the waiter of a request."""
    future = loop.create_future()
    future.set_result(queue.get_nowait())
    return future
