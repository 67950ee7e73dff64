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
- the keepalive is one timer per connection, re-armed lazily.

The short path is used only while no amqtt plugin listens to per-packet or per-message events (ours
don't), since it builds no packet objects to give them.
"""

import asyncio
import collections
import logging

from amqtt.adapters import BufferReader, StreamWriterAdapter
from amqtt.errors import MQTTError, NoDataError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBSCRIBE,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

from hubserver.access.principals import DevicePrincipal

from .session import principal_of

logger = logging.getLogger("hubserver.mqtt")

# Packet types a broker receives, and the upstream handler method for each (CONNECT is awaited in place).
_HANDLERS = {
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    PUBACK: "handle_puback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    PINGREQ: "handle_pingreq",
    PUBLISH: "handle_publish",
    DISCONNECT: "handle_disconnect",
}
# amqtt events that need packet or message objects: while any plugin listens to them, no short path.
_OBJECT_EVENTS = (MQTTEvents.PACKET_RECEIVED, BrokerEvents.MESSAGE_RECEIVED, BrokerEvents.MESSAGE_BROADCAST)
_PUBACK = bytes((PUBACK << 4, 2))


class FastReaderHandler(BrokerProtocolHandler):
    """amqtt's broker-side handler with the hub's reader loop; ``HubProtocolHandler`` builds on it.

    One line of inheritance (no mixin) so that HubBroker can turn amqtt's handler into ours in place."""

    bridge = None

    async def _reader_loop(self):
        loop = asyncio.get_running_loop()
        self._acks = None  # deque of (packet id or None, router future, topic, payload, qos), made on first use
        self._tasks = None  # amqtt handler tasks still running, made on first use (idle devices have none)
        self._client = self.session  # outlives a detach: messages committed after a disconnect are still its own
        self._fast = self._short_path_allowed()
        self._last_read = loop.time()
        self._watchdog = None
        self._start_watchdog(loop)
        read = self.reader.read
        self._reader_ready.set()
        try:
            while True:
                try:
                    head = await read(2)
                    length, shift, byte = head[1] & 0x7F, 7, head[1]
                    while byte & 0x80:
                        if shift > 21:
                            raise MQTTError(f"invalid remaining length in a packet of type {head[0] >> 4}")
                        byte = (await read(1))[0]
                        length |= (byte & 0x7F) << shift
                        shift += 7
                    body = await read(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError, NoDataError, IndexError):
                    break  # end of stream
                self._last_read = loop.time()
                packet_type, flags = head[0] >> 4, head[0] & 0x0F
                if packet_type == PUBLISH and self._short_path(flags):
                    if not await self._publish(flags, body):
                        break
                    continue
                try:
                    task = await self._dispatch_packet(packet_type, flags, length, body)
                except MQTTError as exc:
                    logger.debug("%s: packet discarded: %s", self.session.client_id, exc)
                    continue
                if task is not None:
                    if self._tasks is None:
                        self._tasks = set()
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            logger.warning("%s: reader stopped by an unexpected error: %r", self.session.client_id, exc)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
        for task in list(self._tasks or ()):
            task.cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

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

    # --- everything but device PUBLISHes: amqtt's own packets and handlers ------------------------------

    async def _dispatch_packet(self, packet_type, flags, length, body):
        """Decode with amqtt's packet class and hand to its handler; a task, None, or False to stop reading."""
        if packet_type in (RESERVED_0, RESERVED_15):
            logger.warning("%s sent a reserved packet type, which is forbidden: closing", self.session.client_id)
            await self.handle_connection_closed()
            return None
        fixed = MQTTFixedHeader(packet_type, flags, length)
        packet = await packet_class(fixed).from_stream(BufferReader(body), fixed_header=fixed)
        await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=self.session)
        if packet_type == CONNECT:
            await self.handle_connect(packet)
            return None
        name = _HANDLERS.get(packet_type)
        if name is None:
            logger.warning("%s: unexpected packet type %d", self.session.client_id, packet_type)
            return None
        return asyncio.create_task(getattr(self, name)(packet))

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
        """Submit one device PUBLISH; False when the connection must close without acknowledging it."""
        qos = (flags >> 1) & 0x03
        end = 2 + ((body[0] << 8) | body[1])
        try:
            topic = body[2:end].decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("%s: PUBLISH topic is not UTF-8; closing the connection", self.session.client_id)
            return False
        packet_id = None
        if qos:
            packet_id = (body[end] << 8) | body[end + 1]
            end += 2
        payload = body[end:]
        try:
            future = await self.bridge.submit(self.session, topic, payload, qos)
        except Exception as exc:
            logger.warning(
                "%s: message on %r not stored (%s); closing the connection unacknowledged",
                self.session.client_id,
                topic,
                exc,
            )
            return False
        if self._acks is None:
            self._acks = collections.deque()
        self._acks.append((packet_id, future, topic, payload, qos))
        if future is None:  # refused by the ACL: acknowledged, neither stored nor delivered
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
            packet_id, future, topic, payload, qos = acks[0]
            if future is not None:
                if not future.done():
                    break
                error = "cancelled" if future.cancelled() else future.exception()
                if error is None and future.result().stored:
                    self.bridge.deliver(session, topic, payload, qos)
                elif error is not None and qos:
                    logger.warning(
                        "%s: message on %r not stored (%s); closing the connection unacknowledged",
                        session.client_id,
                        topic,
                        error,
                    )
                    acks.clear()
                    if self._reader_task is not None:
                        self._reader_task.cancel()
                    break
                elif error is not None:
                    logger.warning("%s: a QoS 0 message on %r was lost: %s", session.client_id, topic, error)
            acks.popleft()
            if packet_id is not None:
                out.append(_PUBACK + packet_id.to_bytes(2, "big"))
        if out and self.writer is not None:
            self._write_now(b"".join(out))

    def _write_now(self, data):
        """Write without awaiting: a TCP stream sends at once; a buffering writer (MQTT over WebSocket) sends
        on drain, so that runs as a task (kept referenced until done)."""
        writer = self.writer
        try:
            writer.write(data)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("%s: PUBACKs not sent: %s", self._client.client_id, exc)
            return
        if type(writer) is not StreamWriterAdapter:
            task = asyncio.ensure_future(writer.drain())
            _draining.add(task)
            task.add_done_callback(_drained)


_draining = set()


def _drained(task):
    _draining.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.debug("PUBACKs not sent: %s", task.exception())
