"""``MQTT5Handler``: the hub's protocol handler for clients that CONNECT with protocol level 5.

It is ``HubProtocolHandler`` (and so the hub's reader loop, sessions, subscriptions and delivery) with
an MQTT 5 packet layer: packets are decoded and encoded by ``plugins/mqtt5/codec.py``, acknowledgements
carry reason codes, deliveries carry the message's properties, and every protocol violation is answered
with a DISCONNECT naming it before the connection closes. A device's QoS 0/1 PUBLISH still takes the
reader's short path: no packet object, no task, acknowledged after its commit (with 0x00, or the reason
it was refused).
"""

import asyncio
import collections
import logging

from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import Subscription, UnSubscription
from amqtt.session import IncomingApplicationMessage, OutgoingApplicationMessage

from ..bridge import Outcome
from ..handler import HubProtocolHandler
from . import codec, reasons
from .properties import read_properties, read_utf8
from .reasons import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, ProtocolError
from .session import (
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    SubscriptionOptions,
    message_properties,
    outgoing_properties,
)

logger = logging.getLogger("hubserver.mqtt")

_EMPTY = {}
_PINGRESP = codec.encode(codec.Pingresp())

# Router refusals (``RouteResult.reason``) as PUBACK reason codes.
REFUSAL_CODES = {
    "payload_too_large": reasons.QUOTA_EXCEEDED,
    "unknown_device": reasons.NOT_AUTHORIZED,
    "inactive_device": reasons.NOT_AUTHORIZED,
    "unknown_type": reasons.TOPIC_NAME_INVALID,
    "bad_topic": reasons.TOPIC_NAME_INVALID,
    "not_a_device_topic": reasons.TOPIC_NAME_INVALID,
}


class RawPacket:
    """Bytes that amqtt's flows can send like one of its packet objects (``_send_packet`` calls
    ``to_stream``)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    def to_bytes(self):
        return self.data

    async def to_stream(self, writer):
        writer.write(self.data)
        await writer.drain()


class Received:
    """What amqtt's flows read of an incoming PUBLISH packet (``app_message.publish_packet``)."""

    __slots__ = ("dup_flag", "properties", "retain_flag")

    def __init__(self, packet):
        self.dup_flag = packet.dup
        self.retain_flag = packet.retain
        self.properties = packet.properties


class IncomingMessage(IncomingApplicationMessage):
    """An application message from an MQTT 5 client, with its own properties (None: none)."""

    __slots__ = ("properties", "refusal")

    def __init__(self, packet_id, topic, qos, data, retain, properties):
        super().__init__(packet_id, topic, qos, data, retain)
        self.properties = properties
        self.refusal = None  # the reason code to acknowledge with, when the hub refuses it


class OutgoingMessage(OutgoingApplicationMessage):
    """A message to an MQTT 5 client; ``encoder`` (its connection's) writes the PUBLISH with topic aliases."""

    __slots__ = ("encoder", "properties")

    def __init__(self, packet_id, topic, qos, data, retain, properties, encoder):
        super().__init__(packet_id, topic, qos, data, retain)
        self.properties = properties
        self.encoder = encoder

    def build_publish_packet(self, dup=False):
        return self.encoder(self, dup)


class MQTT5Handler(HubProtocolHandler):
    """One MQTT 5 connection. ``session.v5`` holds the session's MQTT 5 state (``session.V5State``)."""

    protocol_level = 5
    max_packet_size = 0  # the hub's Maximum Packet Size for this connection (set by the broker; 0: none)
    assigned_client_id = None  # the client id the hub chose for a CONNECT without one

    def _init_session(self, session):
        super()._init_session(session)
        self._aliases_in = {}  # alias -> topic the client defined on this connection [MQTT-3.3.2-7]
        self._aliases_out = {}  # topic -> alias the hub defined on this connection
        self._inflight_in = 0  # the client's unacknowledged QoS 1/2 PUBLISHes (at most RECEIVE_MAXIMUM)
        self._send_slots = None  # the client's Receive Maximum, as a semaphore on QoS 1/2 deliveries
        self._closing = False  # a DISCONNECT was sent or received: send nothing more

    # --- sending ------------------------------------------------------------------------------------

    def _problem_info(self):
        """Whether reason strings and user properties may go in acknowledgements [MQTT-3.1.2-29]."""
        v5 = self.session.v5 if self.session is not None else None
        return v5 is None or v5.request_problem_information

    def _write(self, data):
        if self.writer is not None:
            self._write_now(data)

    async def send_disconnect(self, code, reason=""):
        """Tell the client why the hub closes its connection, then close it (the reader loop ends)."""
        if self._closing or self.writer is None:
            return
        self._closing = True
        properties = {"reason_string": reason[:200]} if reason else _EMPTY
        try:
            self._write(codec.encode(codec.Disconnect(code, properties)))
            await self.writer.close()
        except (ConnectionError, RuntimeError, OSError) as exc:
            logger.debug("%s: DISCONNECT not sent: %s", self.session.client_id if self.session else "?", exc)

    async def violation(self, exc):
        """A protocol violation by the client: counted, logged, answered with DISCONNECT and closed."""
        client_id = self.session.client_id if self.session else "?"
        counter = getattr(self, "violations", None)
        if counter is not None:
            counter[reasons.name(exc.code)] += 1
        logger.info("%s: closing the connection: %s", client_id, exc)
        await self.send_disconnect(exc.code, str(exc).split(" (")[0])

    def handle_read_timeout(self):
        if self.writer is not None and not self._closing:
            self._closing = True
            self._write(codec.encode(codec.Disconnect(reasons.KEEP_ALIVE_TIMEOUT)))
        super().handle_read_timeout()

    async def mqtt_connack_authorize(self, authorize):
        session = self.session
        v5 = session.v5
        properties = {
            "receive_maximum": RECEIVE_MAXIMUM,
            "topic_alias_maximum": TOPIC_ALIAS_MAXIMUM,
        }
        if self.max_packet_size:
            properties["maximum_packet_size"] = self.max_packet_size
        if self.assigned_client_id:
            properties["assigned_client_identifier"] = self.assigned_client_id
        server_keep_alive = getattr(self, "server_keep_alive", None)
        if server_keep_alive is not None:
            properties["server_keep_alive"] = server_keep_alive
        if v5.request_response_information and getattr(self, "response_information", None):
            properties["response_information"] = self.response_information
        code = reasons.SUCCESS if authorize else reasons.NOT_AUTHORIZED
        connack = codec.Connack(code, bool(session.parent) and authorize, properties if authorize else _EMPTY)
        await self._send_packet(RawPacket(codec.encode(connack)))
        if authorize and v5.receive_maximum < 65535:
            self._send_slots = asyncio.Semaphore(v5.receive_maximum)

    async def mqtt_acknowledge_subscription(self, packet_id, return_codes):
        await self._send_packet(RawPacket(codec.encode(codec.Suback(packet_id, list(return_codes)))))

    async def mqtt_acknowledge_unsubscription(self, packet_id, reason_codes=None):
        codes = list(reason_codes) if reason_codes else [reasons.SUCCESS]
        await self._send_packet(RawPacket(codec.encode(codec.Unsuback(packet_id, codes))))

    async def mqtt_publish(self, topic, data, qos, retain, ack_timeout=None, properties=None):
        """Deliver a message: its properties travel with it, an expired one is dropped [MQTT-3.3.2-5],
        and at most the client's Receive Maximum of QoS 1/2 deliveries are unacknowledged [MQTT-3.3.4-9]."""
        session = self.session
        if session is None:
            return None
        out = outgoing_properties(properties)
        if out is False:
            return None  # expired while it waited
        limit = session.v5.maximum_packet_size
        if limit and len(codec.encode_publish(topic, data, qos, retain, False, 1, out)) > limit:
            logger.info("%s: a message on %r exceeds its Maximum Packet Size; dropped", session.client_id, topic)
            return None  # [MQTT-3.1.2-25]
        if not qos or self._send_slots is None:
            return await self._publish_now(topic, data, qos, retain, out)
        async with self._send_slots:
            return await self._publish_now(topic, data, qos, retain, out)

    async def _publish_now(self, topic, data, qos, retain, properties):
        session = self.session
        if session is None:
            return None
        packet_id = session.next_packet_id if qos else None
        message = OutgoingMessage(packet_id, topic, qos, data, retain, properties, self._encode_publish)
        await self._handle_message_flow(message)
        return message

    def _encode_publish(self, message, dup):
        """The PUBLISH of ``message`` on this connection, with an outgoing topic alias when the client
        accepts them: the first PUBLISH on a topic defines the alias, later ones send it with an empty
        topic [MQTT-3.3.2-12]."""
        topic = message.topic
        properties = message.properties
        limit = self.session.v5.topic_alias_maximum if self.session is not None else 0
        if limit:
            alias = self._aliases_out.get(topic)
            if alias is not None:
                properties = {**properties, "topic_alias": alias}
                topic = ""
            elif len(self._aliases_out) < limit:
                alias = self._aliases_out[topic] = len(self._aliases_out) + 1
                properties = {**properties, "topic_alias": alias}
        data = codec.encode_publish(
            topic, bytes(message.data), message.qos or 0, message.retain, dup, message.packet_id, properties
        )
        return RawPacket(data)

    async def _retry_deliveries(self):
        """Messages in flight when the previous connection ended go out on this one with its aliases."""
        if self.session is not None:
            for message in self.session.inflight_out.values():
                if isinstance(message, OutgoingMessage):
                    message.encoder = self._encode_publish
        await super()._retry_deliveries()

    async def _handle_qos2_message_flow(self, app_message):
        if app_message.direction == INCOMING_DIRECTION:
            return await self._receive_qos2(app_message)
        return await self._send_qos2(app_message)

    async def _send_qos2(self, app_message):
        """PUBLISH, PUBREC, PUBREL, PUBCOMP as long as the connection lives; a PUBREC with a failure
        reason code ends the exchange [MQTT-4.3.3-4]... in the hub's handler, without a 5 s timeout."""
        session = self.session
        loop = asyncio.get_running_loop()
        session.inflight_out[app_message.packet_id] = app_message
        done = False
        try:
            if app_message.pubrec_packet is None:
                packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
                waiter = self._pubrec_waiters[app_message.packet_id] = loop.create_future()
                try:
                    await self._send_packet(packet)
                    app_message.publish_packet = packet
                    app_message.pubrec_packet = await waiter
                finally:
                    self._pubrec_waiters.pop(app_message.packet_id, None)
                if app_message.pubrec_packet.reason_code >= 0x80:
                    done = True
                    return
            waiter = self._pubcomp_waiters[app_message.packet_id] = loop.create_future()
            try:
                await self._send_packet(RawPacket(codec.encode_ack(PUBREL, app_message.packet_id)))
                app_message.pubcomp_packet = await waiter
                done = True
            finally:
                self._pubcomp_waiters.pop(app_message.packet_id, None)
        finally:
            if done or session.clean_session:
                session.inflight_out.pop(app_message.packet_id, None)

    # --- receiving: acknowledgements with reason codes ----------------------------------------------

    async def _handle_qos1_message_flow(self, app_message):
        if app_message.direction == INCOMING_DIRECTION and self.bridge is not None:
            outcome = await self._accept_inbound(app_message)  # raises: no PUBACK
            if outcome is Outcome.DELIVER:
                await self.session.delivered_message_queue.put(app_message)
            code = app_message.refusal if outcome is not Outcome.DELIVER and app_message.refusal else 0
            self._inflight_in -= 1
            await self._send_packet(RawPacket(codec.encode_ack(PUBACK, app_message.packet_id, code)))
            app_message.puback_packet = True
            return None
        return await super()._handle_qos1_message_flow(app_message)

    async def _receive_qos2(self, app_message):
        """PUBREC after the message is stored (with a reason code when refused), PUBCOMP on PUBREL; the
        message goes to subscribers once, on PUBREL [MQTT-4.3.3-?] (method B of the specification)."""
        session = self.session
        loop = asyncio.get_running_loop()
        packet_id = app_message.packet_id
        if packet_id in session.inflight_in:  # a resent PUBLISH (DUP): acknowledge again, store nothing
            await self._send_packet(RawPacket(codec.encode_ack(PUBREC, packet_id)))
            return None
        outcome = Outcome.DELIVER
        if self.bridge is not None:
            outcome = await self._accept_inbound(app_message)  # raises: no PUBREC
        code = app_message.refusal if outcome is not Outcome.DELIVER and app_message.refusal else 0
        if code >= 0x80:
            self._inflight_in -= 1  # a failure PUBREC ends the exchange
            await self._send_packet(RawPacket(codec.encode_ack(PUBREC, packet_id, code)))
            return None
        session.inflight_in[packet_id] = app_message
        waiter = self._pubrel_waiters[packet_id] = loop.create_future()
        try:
            await self._send_packet(RawPacket(codec.encode_ack(PUBREC, packet_id)))
            app_message.pubrec_packet = True
            await waiter
        finally:
            self._pubrel_waiters.pop(packet_id, None)
        session.inflight_in.pop(packet_id, None)
        self._inflight_in -= 1
        if outcome is Outcome.DELIVER:
            await session.delivered_message_queue.put(app_message)
        await self._send_packet(RawPacket(codec.encode_ack(PUBCOMP, packet_id)))
        return None

    # --- receiving: the packets -----------------------------------------------------------------------

    async def _dispatch_packet(self, packet_type, flags, length, body):
        """Decode and handle one packet; a violation is answered with DISCONNECT. Returns a task or None."""
        try:
            packet = codec.decode(packet_type << 4 | flags, body)
            return await self._handle(packet)
        except ProtocolError as exc:
            await self.violation(exc)
            return None

    async def _handle(self, packet):
        kind = packet.packet_type
        if kind == PUBLISH:
            return self._received_publish(packet)
        if kind == PUBACK:
            return self._resolve(self._puback_waiters, packet)
        if kind == PUBREC:
            return self._resolve(self._pubrec_waiters, packet)
        if kind == PUBREL:
            waiter = self._pubrel_waiters.get(packet.packet_id)
            if waiter is None:  # [MQTT-4.3.3-?]: answer a PUBREL we hold nothing for
                self._write(codec.encode_ack(PUBCOMP, packet.packet_id, reasons.PACKET_IDENTIFIER_NOT_FOUND))
            elif not waiter.done():
                waiter.set_result(packet)
            return None
        if kind == PUBCOMP:
            return self._resolve(self._pubcomp_waiters, packet)
        if kind == reasons.PINGREQ:
            self._write(_PINGRESP)
            return None
        if kind == reasons.SUBSCRIBE:
            return await self._received_subscribe(packet)
        if kind == reasons.UNSUBSCRIBE:
            await self._pending_unsubscriptions.put(UnSubscription(packet.packet_id, packet.topic_filters))
            return None
        if kind == reasons.DISCONNECT:
            return await self._received_disconnect(packet)
        if kind == reasons.CONNECT:
            raise reasons.protocol_error("a second CONNECT")  # [MQTT-3.1.0-2]
        if kind == reasons.AUTH:
            raise reasons.protocol_error("AUTH without an authentication method in CONNECT")  # [MQTT-4.12.0-1]
        raise reasons.protocol_error(f"a client does not send packet type {kind}")

    def _resolve(self, waiters, packet):
        waiter = waiters.get(packet.packet_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(packet)
        return None

    def _resolve_topic(self, topic, properties):
        """The topic of a PUBLISH after its Topic Alias [MQTT-3.3.2-7..12]; raises ProtocolError."""
        alias = properties.get("topic_alias")
        if alias is not None:
            if alias > TOPIC_ALIAS_MAXIMUM:
                raise ProtocolError(reasons.TOPIC_ALIAS_INVALID, f"topic alias {alias} above the maximum")
            if topic:
                self._aliases_in[alias] = topic
                return topic
            known = self._aliases_in.get(alias)
            if known is None:
                raise reasons.protocol_error(f"topic alias {alias} was never defined on this connection")
            return known
        if not topic:
            raise reasons.protocol_error("a PUBLISH with neither topic nor topic alias")
        return topic

    def _check_publish(self, qos, properties):
        if "subscription_identifier" in properties:
            raise reasons.protocol_error("a client PUBLISH with a subscription identifier")  # [MQTT-3.3.4-6]
        if qos:
            if self._inflight_in >= RECEIVE_MAXIMUM:
                raise ProtocolError(reasons.RECEIVE_MAXIMUM_EXCEEDED, "more unacknowledged PUBLISHes than allowed")
            self._inflight_in += 1

    def _received_publish(self, packet):
        """amqtt's path (QoS 2, RETAIN, service clients), after the alias is resolved in arrival order."""
        topic = self._resolve_topic(packet.topic, packet.properties)
        if packet.qos == 2 and packet.packet_id in self.session.inflight_in:
            pass  # a resent QoS 2 PUBLISH: not counted twice
        else:
            self._check_publish(packet.qos, packet.properties)
        message = IncomingMessage(
            packet.packet_id,
            topic,
            packet.qos,
            packet.payload,
            packet.retain,
            message_properties(packet.properties) if packet.properties else None,
        )
        message.publish_packet = Received(packet)
        if packet.properties.get("payload_format_indicator") == 1 and not _is_utf8(packet.payload):
            message.refusal = reasons.PAYLOAD_FORMAT_INVALID
        return asyncio.create_task(self._handle_message_flow(message))

    async def _accept_inbound(self, app_message):
        if app_message.refusal:
            return Outcome.DROP
        return await super()._accept_inbound(app_message)

    async def _received_subscribe(self, packet):
        ids = packet.properties.get("subscription_identifier")
        subscription_id = ids[0] if ids else None
        for sub in packet.subscriptions:
            if sub.no_local and sub.topic_filter.startswith("$share/"):
                raise reasons.protocol_error("No Local on a shared subscription")  # [MQTT-3.8.3-4]
        subscription = Subscription(packet.packet_id, [(sub.topic_filter, sub.qos) for sub in packet.subscriptions])
        subscription.options = [
            SubscriptionOptions(sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling, subscription_id)
            for sub in packet.subscriptions
        ]
        await self._pending_subscriptions.put(subscription)
        return None

    async def _received_disconnect(self, packet):
        """DISCONNECT: 0x04 publishes the Will, anything else discards it [MQTT-3.14.4-3]; a Session Expiry
        Interval may change, but not from 0 [MQTT-3.14.2-2]."""
        v5 = self.session.v5
        expiry = packet.properties.get("session_expiry_interval")
        if expiry is not None:
            if v5.session_expiry == 0 and expiry:
                raise reasons.protocol_error("Session Expiry Interval set in DISCONNECT after 0 in CONNECT")
            v5.session_expiry = expiry
            self.session.clean_session = expiry == 0
        self._closing = True
        await self.handle_disconnect(None if packet.reason_code == reasons.DISCONNECT_WITH_WILL else DisconnectPacket())
        if self._reader_task is not None:
            self._reader_task.cancel()
        return None

    # --- the reader's short path: a device's QoS 0/1 PUBLISH ----------------------------------------

    async def _publish(self, flags, body):
        qos = (flags >> 1) & 0x03
        end = len(body)
        try:
            topic, pos = read_utf8(body, 0, end)
            if "+" in topic or "#" in topic:
                raise ProtocolError(reasons.TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")
            packet_id = None
            if qos:
                if pos + 2 > end:
                    raise reasons.malformed("packet identifier runs past the end of the packet")
                packet_id = (body[pos] << 8) | body[pos + 1]
                if not packet_id:
                    raise reasons.protocol_error("packet identifier 0")
                pos += 2
            if pos < end and body[pos] == 0:
                properties = _EMPTY
                pos += 1
            else:
                properties, pos = read_properties(body, pos, end, PUBLISH)
                topic = self._resolve_topic(topic, properties)
            if not topic:
                raise reasons.protocol_error("a PUBLISH with neither topic nor topic alias")
            self._check_publish(qos, properties)
        except ProtocolError as exc:
            await self.violation(exc)
            return False
        payload = body[pos:]
        props = message_properties(properties) if properties else None
        refusal = None
        if properties and properties.get("payload_format_indicator") == 1 and not _is_utf8(payload):
            refusal = reasons.PAYLOAD_FORMAT_INVALID
            future = None
        else:
            try:
                future = await self.bridge.submit(self.session, topic, payload, qos, properties=props)
            except Exception as exc:
                logger.warning(
                    "%s: message on %r not stored (%s); closing the connection unacknowledged",
                    self.session.client_id,
                    topic,
                    exc,
                )
                return False
            if future is None:
                refusal = reasons.NOT_AUTHORIZED
        if self._acks is None:
            self._acks = collections.deque()
        self._acks.append((packet_id, future, topic, payload, qos, props, refusal))
        if future is None:
            self._release()
        else:
            future.add_done_callback(self._release)
        return True

    def _release(self, _=None):
        """PUBACKs in arrival order, one write: 0x00 once stored, or the reason the hub refused it."""
        acks = self._acks
        session = self._client
        out = []
        problem_info = self._problem_info()
        while acks:
            packet_id, future, topic, payload, qos, props, refusal = acks[0]
            reason = ""
            if future is not None:
                if not future.done():
                    break
                error = "cancelled" if future.cancelled() else future.exception()
                if error is None:
                    result = future.result()
                    if result.stored:
                        self.bridge.deliver(session, topic, payload, qos, properties=props)
                    else:
                        refusal = REFUSAL_CODES.get(result.reason, reasons.UNSPECIFIED_ERROR)
                        reason = result.error
                elif qos:
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
                else:
                    logger.warning("%s: a QoS 0 message on %r was lost: %s", session.client_id, topic, error)
            acks.popleft()
            if packet_id is not None:
                self._inflight_in -= 1
                if refusal:
                    properties = {"reason_string": reason[:200]} if reason and problem_info else None
                    out.append(codec.encode_ack(PUBACK, packet_id, refusal, properties))
                else:
                    out.append(codec.encode_ack(PUBACK, packet_id))
        if out and self.writer is not None and not self._closing:
            self._write_now(b"".join(out))


INCOMING_DIRECTION = IncomingApplicationMessage(None, "", 0, b"", False).direction


def _is_utf8(payload):
    try:
        str(payload, "utf-8")
    except UnicodeDecodeError:
        return False
    return True
