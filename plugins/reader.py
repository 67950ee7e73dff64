"""The hub's MQTT reader loop: device PUBLISHes take a short path, every other packet goes to amqtt.

Upstream (``ProtocolHandler._reader_loop``): every packet is decoded byte by byte through awaits, a PUBLISH
becomes a packet object, an application message, a task and a chain of coroutines, its PUBACK is one write
per message, and the keepalive is a ``wait_for`` (one more task) per packet. On a busy hub that was most of
the event loop's time. Here:

- a packet is read as its fixed header and one body read;
- a QoS 0 or QoS 1 PUBLISH from a device (no RETAIN) is checked against the ACL and submitted to the
  router in the reader itself: no packet object, no task. Its PUBACK is queued in arrival order and sent
  when its batch has committed; the PUBACKs one commit releases for a connection go out in one write.
  If a message is not stored the connection is closed without acknowledging it (and nothing after it),
  so the client sends it again, as with ``HubProtocolHandler``'s slower path;
- everything else (CONNECT, SUBSCRIBE, PING, QoS 2, RETAIN, service clients...) is decoded by amqtt's own
  packet classes and handled exactly as upstream;
- the keepalive is one timer per connection, re-armed lazily;
- the limits of docs/limits.md are enforced here, from the fixed header on: a packet over MAX_PACKET_SIZE
  is never read, a packet that breaks MQTT 3.1.1 (plugins/strict.py) closes the connection, the client's
  quotas (PUBLISHes, and the PINGREQs, SUBSCRIBEs and UNSUBSCRIBEs it asks the hub to answer) pause
  reading its socket (no task per message), and so do a full share of the writer queue, a
  full write buffer (a client that does not read what it is sent) and MAX_INFLIGHT_MESSAGES packets being
  handled; control packets are handled in the loop, and only a PUBLISH on amqtt's path becomes a task.

The short path is used only while no amqtt plugin listens to per-packet or per-message events (ours
don't), since it builds no packet objects to give them.
"""

import asyncio
import collections
import logging
import math

from amqtt.adapters import BufferReader, StreamWriterAdapter
from amqtt.errors import MQTTError, NoDataError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import (
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from hubserver.access.principals import DevicePrincipal
from hubserver.routing.throttle import clip

from .limits import CLOSE_TIMEOUT, WRITE_BUFFER_HIGH, LimitCounters, Limits, abort, transport_of
from .session import principal_of
from .strict import ProtocolViolation, check_header, check_subscription, check_topic, parse_publish

logger = logging.getLogger("hubserver.mqtt")

# Packet types a broker receives after CONNECT, and the upstream handler method for each.
_HANDLERS = {
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    PUBACK: "handle_puback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    DISCONNECT: "handle_disconnect",
}
# amqtt events that need packet or message objects: while any plugin listens to them, no short path.
_OBJECT_EVENTS = (MQTTEvents.PACKET_RECEIVED, BrokerEvents.MESSAGE_RECEIVED, BrokerEvents.MESSAGE_BROADCAST)
_PUBACK = bytes((PUBACK << 4, 2))
_PINGRESP = bytes((0xD0, 0))
_UNLIMITED = math.inf
# Packets a client sends of its own accord that the hub answers (PUBLISHes aside): they count against the
# client's message quota like PUBLISHes, or a client sending them as fast as it can (and reading nothing)
# would have the loop, and the GIL the database writer needs, to itself.
_REQUESTS = frozenset((PINGREQ, SUBSCRIBE, UNSUBSCRIBE))
# The acknowledgements a client sends for what the hub sent it, and amqtt's waiters for each. One that
# nothing waits for answers nothing: it counts as a request, and is ignored with a line a minute.
_ACK_WAITERS = {
    PUBACK: "_puback_waiters",
    PUBREC: "_pubrec_waiters",
    PUBREL: "_pubrel_waiters",
    PUBCOMP: "_pubcomp_waiters",
}
# Packets read from one connection's buffer before the reader lets the other connections have the loop.
_TURN = 64


class FastReaderHandler(BrokerProtocolHandler):
    """amqtt's broker-side handler with the hub's reader loop; ``HubProtocolHandler`` builds on it.

    One line of inheritance (no mixin) so that HubBroker can turn amqtt's handler into ours in place."""

    bridge = None
    limits = None  # plugins.limits.Limits, set by HubBroker
    counters = None  # plugins.limits.LimitCounters, set by HubBroker

    async def _reader_loop(self):
        loop = asyncio.get_running_loop()
        self._acks = None  # deque of (packet id, router future, topic, payload, qos, properties, refusal): lazily
        self._tasks = None  # amqtt handler tasks still running, made on first use (idle devices have none)
        self._client = self.session  # outlives a detach: messages committed after a disconnect are still its own
        self._fast = self._short_path_allowed()
        self._last_read = loop.time()
        self._watchdog = None
        self._behind = False  # the client is not reading what it is sent
        self._flush = False  # closing for a violation: acknowledge what was stored before it
        self._closing = False  # the connection is being closed: no more acknowledgements
        self._unacked = 0  # QoS 1 PUBLISHes of the short path not acknowledged yet
        self._transport = transport_of(self.writer)
        limits = self.limits or Limits.from_settings()
        if self.counters is None:
            self.counters = LimitCounters()
        principal = principal_of(self.session)
        self._device = isinstance(principal, DevicePrincipal)
        quota = self._quota = limits.quota_for(principal)
        self._share = quota.queue_share or _UNLIMITED
        self._messages_left = quota.message_burst if quota.message_rate else _UNLIMITED
        self._bytes_left = quota.byte_burst if quota.byte_rate else _UNLIMITED
        self._refilled = self._last_read
        self._max_payload = limits.max_payload_size
        self._max_inflight = limits.max_inflight
        self._max_awaiting_rel = limits.max_awaiting_rel
        max_packet = limits.max_packet_size
        self._start_watchdog(loop)
        established = getattr(self.reader, "established", None)  # MQTT over WebSocket: whole packets now
        if established is not None:
            established(max_packet)
        read = self.reader.read
        turn = _TURN
        self._reader_ready.set()
        try:
            while True:
                try:
                    head = await read(2)
                    length, shift, byte = head[1] & 0x7F, 7, head[1]
                    while byte & 0x80:
                        if shift > 21:
                            raise ProtocolViolation("MQTT-4.8.0-1", "a remaining length of more than four bytes")
                        byte = (await read(1))[0]
                        length |= (byte & 0x7F) << shift
                        shift += 7
                    if shift > 7 and not byte:
                        raise ProtocolViolation("MQTT-1.5.5-1", "a remaining length not in its fewest bytes")
                    if length > max_packet:
                        self._close_for("packet_too_large", f"a packet of {length} bytes (limit {max_packet})")
                        break
                    body = await read(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError, NoDataError, IndexError):
                    break  # end of stream
                self._last_read = loop.time()
                turn -= 1
                if not turn:  # a client with a full buffer would otherwise keep the loop from everyone else
                    turn = _TURN
                    await asyncio.sleep(0)
                packet_type, flags = head[0] >> 4, head[0] & 0x0F
                publish = packet_type == PUBLISH
                if (
                    publish
                    or packet_type in _REQUESTS
                    or (packet_type in _ACK_WAITERS and self._unexpected(packet_type, body))
                ):
                    self._messages_left -= 1
                    self._bytes_left -= length
                    if self._messages_left <= 0 or self._bytes_left <= 0:
                        await self._over_quota(loop)
                    if publish and self._short_path(flags):
                        if not await self._publish(flags, body):
                            break
                        if self._behind or (self._acks is not None and len(self._acks) >= self._share):
                            await self._catch_up()
                        continue
                task = await self._dispatch_packet(packet_type, flags, length, body)
                if task is False:
                    break
                if task is not None:
                    await self._track(task)
                if self._behind:
                    await self._drain()
        except ProtocolViolation as exc:
            self._close_for("protocol_violation", exc)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self.counters._log.warning(
                "reader_error", type(exc).__name__, "%s: reader stopped by an unexpected error: %r", self._who(), exc
            )
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
        if self._flush:
            await self._acknowledge_what_was_stored()
            await self._closed_for()
        for task in list(self._tasks or ()):
            task.cancel()
        if self._behind:
            abort(self.writer)  # it reads nothing: closing would wait for it forever
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def _who(self):
        return clip(self._client.client_id if self._client is not None else None)

    async def _acknowledge_what_was_stored(self):
        """Before closing for a violation, let the messages before it commit and their PUBACKs go out (for a
        little while): the client would otherwise send again what the hub has already stored."""
        pending = [item[1] for item in self._acks or () if item[1] is not None and not item[1].done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT)

    def _close_for(self, reason, detail):
        """Count and log (once a minute per reason) a connection the hub closes because of what it sent.
        (The protocol's hook: MQTT 5 also tells the client why, see ``_closed_for``.)"""
        self._flush = True
        self.counters.close(
            self._client.client_id if self._client is not None else None,
            reason,
            "closed the connection of %s: %s",
            self._who(),
            detail,
        )

    async def _closed_for(self):
        """Called once what was stored before the violation is acknowledged, before the connection closes:
        MQTT 3.1.1 has nothing to say; MQTT 5 sends its DISCONNECT here."""

    # --- quotas and back-pressure: the reader stops reading this client's socket for a while -------------

    async def _over_quota(self, loop):
        """Token buckets refilled lazily: only when the client has used its burst is the time looked at."""
        quota = self._quota
        now = loop.time()
        elapsed, self._refilled = now - self._refilled, now
        wait = 0.0
        reason = None
        if quota.message_rate:
            self._messages_left = min(quota.message_burst, self._messages_left + elapsed * quota.message_rate)
            if self._messages_left < 0:
                wait, reason = -self._messages_left / quota.message_rate, "messages"
        if quota.byte_rate:
            self._bytes_left = min(quota.byte_burst, self._bytes_left + elapsed * quota.byte_rate)
            if self._bytes_left < 0 and -self._bytes_left / quota.byte_rate > wait:
                wait, reason = -self._bytes_left / quota.byte_rate, "bytes"
        if wait > 0:
            self.counters.throttle(
                self._client.client_id, reason, wait, "%s is over its %s quota: reading paused", self._who(), reason
            )
            await asyncio.sleep(wait)

    async def _catch_up(self):
        """Wait while this client's messages fill its share of the writer queue, or it does not read."""
        acks = self._acks
        if acks is not None and len(acks) >= self._share:
            self.counters.throttle(
                self._client.client_id,
                "queue_share",
                0.0,
                "%s has %s messages waiting for the database: reading paused",
                self._who(),
                self._quota.queue_share,
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                while len(acks) >= self._share:
                    # The oldest message not yet committed: its commit releases it (and those after it).
                    head = next((item[1] for item in acks if item[1] is not None and not item[1].done()), None)
                    if head is None:
                        self._release()
                        break
                    await asyncio.wait([head])
            finally:
                self.counters.throttled_seconds += loop.time() - started
        if self._behind:
            await self._drain()

    async def _drain(self):
        """Wait until the client has read what it was sent (its write buffer is below the mark)."""
        loop = asyncio.get_running_loop()
        self.counters.throttle(
            self._client.client_id, "write_buffer", 0.0, "%s does not read what it is sent: reading paused", self._who()
        )
        started = loop.time()
        try:
            await self.writer.drain()
        finally:
            self.counters.throttled_seconds += loop.time() - started
        self._behind = False

    # --- everything but device PUBLISHes: checked, then amqtt's own packets and handlers ----------------

    async def _dispatch_packet(self, packet_type, flags, length, body):
        """Check and handle one packet that is not a short-path PUBLISH: a task still handling it, None, or
        False when the connection must close. (The protocol's hook: MQTT 5's handler has its own.)"""
        try:
            if packet_type == PUBLISH:
                return await self._slow_publish(flags, length, body)
            check_header(packet_type, flags, length)
            if packet_type == PINGREQ:
                self._write_now(_PINGRESP)
                return None
            if packet_type in _ACK_WAITERS and self._unexpected(packet_type, body):
                # amqtt would log a warning for each one: a client sending them in a loop would flood the log.
                self.counters._log.warning(
                    "unexpected_ack",
                    self._client.client_id if self._client is not None else None,
                    "%s sent acknowledgements (packet type %s, id %s) for nothing the hub sent it: ignored",
                    self._who(),
                    packet_type,
                    (body[0] << 8) | body[1],
                )
                return None
            if packet_type in (SUBSCRIBE, UNSUBSCRIBE):
                check_subscription(packet_type, body)
                await self._until_subscriptions_handled()
            packet = await self._decode(packet_type, flags, length, body)
            await getattr(self, _HANDLERS[packet_type])(packet)
            return None
        except ProtocolViolation as exc:
            self._close_for("protocol_violation", exc)
            return False

    def _unexpected(self, packet_type, body):
        """Whether an acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP) carries a packet id nothing waits for
        (a malformed one is not: the packet's checks close the connection)."""
        return len(body) >= 2 and ((body[0] << 8) | body[1]) not in getattr(self, _ACK_WAITERS[packet_type])

    async def _track(self, task):
        """Keep a handler task until it ends, its exception retrieved; at most MAX_INFLIGHT_MESSAGES busy ones
        (QoS 2 flows parked until their PUBREL do not count: they wait for this very reader)."""
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(self._task_done)
        while len(tasks) - len(self._pubrel_waiters) >= self._max_inflight:
            # A flow that parks (sends PUBREC, waits for PUBREL) does not end: look again shortly, or a
            # burst of QoS 2 PUBLISHes would wait here for PUBRELs this very reader has to read.
            await asyncio.wait(list(tasks), timeout=0.01, return_when=asyncio.FIRST_COMPLETED)

    async def _decode(self, packet_type, flags, length, body):
        fixed = MQTTFixedHeader(packet_type, flags, length)
        try:
            packet = await packet_class(fixed).from_stream(BufferReader(body), fixed_header=fixed)
        except (MQTTError, NoDataError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ProtocolViolation("MQTT-4.8.0-1", f"malformed packet of type {packet_type}: {exc}") from None
        await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=self.session)
        return packet

    async def _until_subscriptions_handled(self):
        """At most MAX_INFLIGHT_MESSAGES (UN)SUBSCRIBEs wait for the client loop; the reader waits beyond."""
        pending = self._pending_subscriptions.qsize() + self._pending_unsubscriptions.qsize()
        while pending >= self._max_inflight:
            await asyncio.sleep(0.01)
            pending = self._pending_subscriptions.qsize() + self._pending_unsubscriptions.qsize()

    async def _slow_publish(self, flags, length, body):
        """A PUBLISH amqtt's flows handle (QoS 2, RETAIN, service clients): checked, then a task."""
        qos, _, packet_id, end = parse_publish(flags, body)
        if self._device and len(body) - end > self._max_payload:
            self._close_for("payload_too_large", f"a payload of {len(body) - end} bytes (MAX_PAYLOAD_SIZE)")
            return False
        if qos == 2 and packet_id not in self._pubrel_waiters and len(self._pubrel_waiters) >= self._max_awaiting_rel:
            self._close_for("awaiting_rel", f"more than {self._max_awaiting_rel} QoS 2 messages without PUBREL")
            return False
        packet = await self._decode(PUBLISH, flags, length, body)
        return asyncio.create_task(self.handle_publish(packet))

    def _task_done(self, task):
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.counters._log.warning(
                "task_error", type(error).__name__, "%s: handling a PUBLISH failed: %r", self._who(), error
            )

    # --- keepalive -------------------------------------------------------------------------------------

    def _start_watchdog(self, loop):
        """Call ``handle_read_timeout`` once nothing was read for the session's keepalive (already 1.5x)."""
        timeout = self.session.keep_alive
        if not timeout or timeout <= 0:
            return

        def check():
            due = self._last_read + timeout
            if loop.time() >= due:
                self._watchdog = None
                self.handle_read_timeout()
            else:
                self._watchdog = loop.call_at(due, check)

        self._watchdog = loop.call_later(timeout, check)

    # --- device PUBLISHes ----------------------------------------------------------------------------

    def _short_path_allowed(self):
        """A device's connection to a running bridge, and no amqtt plugin waiting for packet objects."""
        callbacks = getattr(self.plugins_manager, "_event_plugin_callbacks", None)  # amqtt 0.12.1 internals
        return (
            self.bridge is not None
            and isinstance(principal_of(self.session), DevicePrincipal)
            and callbacks is not None
            and not any(event in callbacks for event in _OBJECT_EVENTS)
        )

    def _short_path(self, flags):
        """QoS 0 or 1, no RETAIN, no DUP on QoS 0 (a protocol error amqtt reports), on an allowed connection."""
        qos = (flags >> 1) & 0x03
        return self._fast and not flags & 0x01 and (qos == 1 or (qos == 0 and not flags & 0x08))

    async def _publish(self, flags, body):
        """Parse one device PUBLISH (MQTT 3.1.1) and submit it; False when the connection must close without
        acknowledging it. (The protocol's hook: MQTT 5's handler parses its own, then calls ``_submit``.)"""
        qos = (flags >> 1) & 0x03
        size = len(body)
        try:
            end = 2 + ((body[0] << 8) | body[1])
            topic = body[2:end].decode("utf-8")
            packet_id = None
            if qos:
                packet_id = (body[end] << 8) | body[end + 1]
                end += 2
                if not packet_id:
                    raise IndexError
            if end > size:
                raise IndexError
        except (IndexError, UnicodeDecodeError):
            parse_publish(flags, body)  # raises the ProtocolViolation that says what is wrong
            raise
        if size - end > self._max_payload:
            self._close_for("payload_too_large", f"a payload of {size - end} bytes (MAX_PAYLOAD_SIZE)")
            return False
        return await self._submit(topic, packet_id, body[end:], qos)

    async def _submit(self, topic, packet_id, payload, qos, properties=None, refusal=None):
        """Hand a parsed device PUBLISH to the bridge and queue its acknowledgement in arrival order; False
        when it cannot be queued (the connection closes without acknowledging it). ``refusal``: the reason
        code (MQTT 5) it is refused with before it reaches the bridge; ``properties``: its MQTT 5 message
        properties, stored with it and passed on to subscribers."""
        future = None
        if refusal is None:
            try:
                future = await self.bridge.submit(self.session, topic, payload, qos, properties)
            except Exception as exc:
                self.counters._log.warning(
                    "not_stored",
                    type(exc).__name__,
                    "%s: message on %s not stored (%s); closing the connection unacknowledged",
                    self._who(),
                    clip(topic),
                    exc,
                )
                return False
            if future is None:  # refused by the ACL: acknowledged (MQTT 5: as not authorized), not stored
                refusal = self.acl_refusal
        acks = self._acks
        if acks is None:
            acks = self._acks = collections.deque()
        acks.append((packet_id, future, topic, payload, qos, properties, refusal))
        if packet_id is not None:
            self._unacked += 1
        if future is None:
            if not topic or "+" in topic or "#" in topic or "\0" in topic:
                check_topic(topic or "+")  # no broker may accept it: ACL-permitted topics are valid
            self._release()
        else:
            future.add_done_callback(self._release)
        return True

    def _release(self, _=None):
        """Send the PUBACKs (and deliver the messages) whose turn has come: in arrival order, one write."""
        acks = self._acks
        session = self._client
        out = []
        while acks:
            packet_id, future, topic, payload, qos, properties, refusal = acks[0]
            reason = ""
            if future is not None:
                if not future.done():
                    break
                error = "cancelled" if future.cancelled() else future.exception()
                if error is None:
                    result = future.result()
                    if result.stored:
                        self.bridge.deliver(session, topic, payload, qos, properties)
                    elif self.refusal_codes is not None:
                        refusal = self.refusal_codes.get(result.reason, self.unspecified_refusal)
                        reason = result.error
                elif qos:
                    self._close_for("not_stored", f"a message on {clip(topic)} was not stored: {error}")
                    for item in acks:  # nobody waits for the rest: their errors must not go unretrieved
                        if item[1] is not None:
                            item[1].add_done_callback(_retrieved)
                    acks.clear()
                    if self._reader_task is not None:
                        self._reader_task.cancel()
                    break
                else:
                    self.counters._log.warning(
                        "qos0_lost", type(error).__name__, "%s: a QoS 0 message was lost: %s", self._who(), error
                    )
            acks.popleft()
            if packet_id is not None:
                self._unacked -= 1
                if refusal is None:
                    out.append(_PUBACK + packet_id.to_bytes(2, "big"))
                else:
                    out.append(self._refused_ack(packet_id, refusal, reason))
        if out and self.writer is not None and not self._closing:
            self._write_now(b"".join(out))

    # MQTT 3.1.1 has no negative acknowledgement: a refused message is acknowledged like a stored one.
    acl_refusal = None  # what a PUBLISH the ACL refuses is acknowledged with (None: a plain PUBACK)
    refusal_codes = None  # router refusal reason -> reason code (None: a plain PUBACK)
    unspecified_refusal = None

    def _refused_ack(self, packet_id, refusal, reason):
        """The PUBACK of a refused message (MQTT 5 carries the reason code and a reason string)."""
        return _PUBACK + packet_id.to_bytes(2, "big")

    def _write_now(self, data):
        """Write without awaiting: a TCP stream sends at once; a buffering writer (MQTT over WebSocket) sends
        on drain, so that runs as a task (kept referenced until done; one at a time, which sends all that
        was written meanwhile)."""
        writer = self.writer
        try:
            writer.write(data)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("%s: not sent: %s", self._who(), exc)
            return
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size() > WRITE_BUFFER_HIGH:
                self._behind = True  # the reader stops reading until the client has read this
        elif type(writer) is not StreamWriterAdapter:
            if writer not in _draining:
                task = asyncio.ensure_future(writer.drain())
                _draining[writer] = task
                task.add_done_callback(lambda done: _drained(writer, done))
            buffered = getattr(writer, "get_write_buffer_size", None)
            if buffered is not None and buffered() > WRITE_BUFFER_HIGH:
                self._behind = True  # over WebSocket: its sends are waiting for the client to read


_draining = {}  # writer -> its drain task (MQTT over WebSocket)


def _drained(writer, task):
    _draining.pop(writer, None)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("not sent: %s", task.exception())


def _retrieved(future):
    """Retrieve a future's outcome that nobody else will look at."""
    if not future.cancelled():
        future.exception()
