"""``MQTT5Handler``: the hub's protocol handler for clients that CONNECT with protocol level 5.

It is ``HubProtocolHandler`` (and so the hub's reader loop, sessions, subscriptions and delivery) with
an MQTT 5 packet layer: packets are decoded and encoded by ``plugins/mqtt5/codec.py``, acknowledgements
carry reason codes, deliveries carry the message's properties, and every protocol violation is answered
with a DISCONNECT naming it before the connection closes. A device's QoS 0/1 PUBLISH still takes the
reader's short path: no packet object, no task, acknowledged after its commit (with 0x00, or the reason
it was refused).
"""

import asyncio
import logging

from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import Subscription, UnSubscription
from amqtt.session import IncomingApplicationMessage, OutgoingApplicationMessage

from hubserver.access.principals import DevicePrincipal
from hubserver.conf import hub_settings
from hubserver.routing.results import Refusal
from hubserver.vocabulary import Kind, device_topic

from ..bridge import Outcome
from ..handler import HubProtocolHandler
from ..session import principal_of
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

# Router refusals (``RouteResult.reason``) as PUBACK reason codes; "acl" is the bridge's own.
REFUSAL_CODES = {
    Refusal.PAYLOAD_TOO_LARGE: reasons.QUOTA_EXCEEDED,
    Refusal.UNKNOWN_DEVICE: reasons.NOT_AUTHORIZED,
    Refusal.INACTIVE_DEVICE: reasons.NOT_AUTHORIZED,
    Refusal.UNKNOWN_TYPE: reasons.TOPIC_NAME_INVALID,
    Refusal.BAD_TOPIC: reasons.TOPIC_NAME_INVALID,
    "acl": reasons.NOT_AUTHORIZED,
}
# The reason string of a refusal that has none of its own.
REFUSAL_REASONS = {
    reasons.NOT_AUTHORIZED: "not authorized to publish to this topic",
    reasons.PAYLOAD_FORMAT_INVALID: "the payload is not UTF-8, as its Payload Format Indicator says",
    reasons.QUOTA_EXCEEDED: "over a limit of the hub",
}
# CONNACK properties left out when the client's Maximum Packet Size is too small for them: their
# absence means the same ("available"), or the client did not need them.
OPTIONAL_CONNACK = (
    "retain_available",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
    "response_information",
)
# Why the reader closed a connection (``plugins/limits.CLOSE_REASONS``) as the DISCONNECT's reason code.
CLOSE_CODES = {
    "packet_too_large": reasons.PACKET_TOO_LARGE,
    "protocol_violation": reasons.MALFORMED_PACKET,
    "payload_too_large": reasons.QUOTA_EXCEEDED,
    "awaiting_rel": reasons.QUOTA_EXCEEDED,
    "not_stored": reasons.UNSPECIFIED_ERROR,
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

    __slots__ = ("properties", "refusal", "refused")

    def __init__(self, packet_id, topic, qos, data, retain, properties):
        super().__init__(packet_id, topic, qos, data, retain)
        self.properties = properties
        self.refusal = None  # the reason code to acknowledge with, when the hub refuses it
        self.refused = None  # (reason, detail) the bridge refused it for ("acl", or a router Refusal)


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
    assigned_client_id = None  # the client id the hub chose for a CONNECT without one
    server_keep_alive = None  # the keepalive the hub holds the client to, when not the one it asked for

    def _init_session(self, session):
        super()._init_session(session)
        self._aliases_in = {}  # alias -> topic the client defined on this connection [MQTT-3.3.2-7]
        self._aliases_out = {}  # topic -> alias the hub defined on this connection
        self._inflight_in = 0  # QoS 1/2 PUBLISHes on amqtt's path not acknowledged yet
        self._closing = False  # a DISCONNECT was sent or received: send nothing more
        self._goodbye = None  # (reason code, reason string) of the DISCONNECT the reader closes with

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
        try:
            self._write(self._disconnect_packet(code, reason))
            await self.writer.close()
        except (ConnectionError, RuntimeError, OSError) as exc:
            logger.debug("%s: DISCONNECT not sent: %s", self._who(), exc)

    def _disconnect_packet(self, code, reason=""):
        """A DISCONNECT with ``code`` (and a reason string when the client wants them), counted by reason."""
        counter = getattr(self, "violations", None)
        if counter is not None:
            counter[reasons.label(code)] += 1
        if reason and self._problem_info():
            packet = codec.encode(codec.Disconnect(code, {"reason_string": reason[:200]}))
            if self._fits(packet):
                return packet
        return codec.encode(codec.Disconnect(code))

    def _close_for(self, reason, detail):
        """The reader closes the connection (counted and logged there); the client is told why in a
        DISCONNECT once what was stored before is acknowledged (``_closed_for``)."""
        super()._close_for(reason, detail)
        if self._goodbye is None:
            code = CLOSE_CODES.get(reason, reasons.UNSPECIFIED_ERROR)
            if isinstance(detail, ProtocolError):
                code = detail.code
            self._goodbye = (code, str(detail).split(" (")[0])

    async def _closed_for(self):
        if self._goodbye is not None:
            await self.send_disconnect(*self._goodbye)

    def handle_read_timeout(self):
        if self.writer is not None and not self._closing:
            self._closing = True
            self._write(self._disconnect_packet(reasons.KEEP_ALIVE_TIMEOUT))
        super().handle_read_timeout()

    async def mqtt_connack_authorize(self, authorize):
        """CONNACK, with every limit the hub holds this client to that MQTT 5 can advertise:
        what it may send at once (Receive Maximum), how large a packet may be (Maximum Packet Size, the
        hub's MAX_PACKET_SIZE), how many topic aliases it may define, and (explicitly, although their
        absence means the same) that retained messages, wildcard, shared subscriptions and subscription
        identifiers are available; QoS 2 is, so Maximum QoS is not sent."""
        session = self.session
        v5 = session.v5
        code = reasons.SUCCESS if authorize else reasons.NOT_AUTHORIZED
        properties = self._connack_properties(v5) if authorize else _EMPTY
        connack = codec.encode(codec.Connack(code, bool(session.parent) and authorize, properties))
        if not self._fits(connack):  # what is only informative gives way [MQTT-3.2.2-19] [MQTT-3.2.2-20]
            for name in OPTIONAL_CONNACK:
                properties.pop(name, None)
            connack = codec.encode(codec.Connack(code, bool(session.parent) and authorize, properties))
        await self._send_packet(RawPacket(connack))

    def _connack_properties(self, v5):
        properties = {
            "receive_maximum": RECEIVE_MAXIMUM,
            "topic_alias_maximum": TOPIC_ALIAS_MAXIMUM,
            "retain_available": 1,
            "wildcard_subscription_available": 1,
            "subscription_identifier_available": 1,
            "shared_subscription_available": 1,
        }
        limits = self.limits
        if limits is not None and limits.max_packet_size:
            properties["maximum_packet_size"] = limits.max_packet_size
        if self.assigned_client_id:
            properties["assigned_client_identifier"] = self.assigned_client_id  # [MQTT-3.2.2-16]
        if self.server_keep_alive is not None:
            properties["server_keep_alive"] = self.server_keep_alive  # [MQTT-3.2.2-21]
        if v5.request_response_information:
            principal = principal_of(self.session)
            if isinstance(principal, DevicePrincipal):
                # A device's responses go to its reply topic: the one topic the hub reads them on.
                properties["response_information"] = device_topic(
                    hub_settings.TOPIC_PREFIX, principal.type_name, principal.device_id, Kind.REPLY
                )
        return properties

    async def mqtt_acknowledge_subscription(self, packet_id, return_codes):
        await self._send_packet(RawPacket(codec.encode(codec.Suback(packet_id, list(return_codes)))))

    async def mqtt_acknowledge_unsubscription(self, packet_id, reason_codes=None):
        codes = list(reason_codes) if reason_codes else [reasons.SUCCESS]
        await self._send_packet(RawPacket(codec.encode(codec.Unsuback(packet_id, codes))))

    async def mqtt_publish(self, topic, data, qos, retain, ack_timeout=None, properties=None):
        """Deliver a message: its properties travel with it, an expired one is dropped [MQTT-3.3.2-5], one
        larger than the client's Maximum Packet Size too [MQTT-3.1.2-25]; then the hub's outgoing window
        (``HubProtocolHandler.mqtt_publish``), here at most the client's Receive Maximum [MQTT-3.3.4-9]."""
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
        return await super().mqtt_publish(topic, data, qos, retain, ack_timeout, out)

    def _window_size(self):
        receive_maximum = self.session.v5.receive_maximum if self.session is not None else 65535
        return min(super()._window_size(), receive_maximum)

    async def _send_publish(self, topic, data, qos, retain, ack_timeout, properties):
        return await self._publish_now(topic, data, qos, retain, properties)

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
            await self._send_packet(self._ack_of(PUBACK, app_message, code))
            app_message.puback_packet = True
            return None
        return await super()._handle_qos1_message_flow(app_message)

    async def _receive_qos2(self, app_message):
        """PUBREC after the message is stored (with a reason code when refused), PUBCOMP on PUBREL; the
        message goes to subscribers once, on PUBREL [MQTT-4.3.3-10] (method B of the specification)."""
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
            await self._send_packet(self._ack_of(PUBREC, app_message, code))
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
            self._close_for("protocol_violation", exc)
            return False

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
            if waiter is None:  # [MQTT-4.3.3-11] [MQTT-3.7.2-1]: answer a PUBREL we hold nothing for (0x92)
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
            if self._unacked + self._inflight_in >= RECEIVE_MAXIMUM:
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
        elif (
            packet.qos == 2
            and packet.packet_id not in self._pubrel_waiters
            and len(self._pubrel_waiters) >= self._max_awaiting_rel
        ):
            # MAX_AWAITING_REL: MQTT 3.1.1 can only close the connection; MQTT 5 refuses this one message.
            message.refusal = reasons.QUOTA_EXCEEDED
        return asyncio.create_task(self._handle_message_flow(message))

    async def _accept_inbound(self, app_message):
        """The bridge's Outcome; a message it does not deliver gets the reason code of its refusal."""
        if app_message.refusal:
            return Outcome.DROP
        outcome = await super()._accept_inbound(app_message)
        if outcome is not Outcome.DELIVER and app_message.refused is not None:
            app_message.refusal = REFUSAL_CODES.get(app_message.refused[0], reasons.UNSPECIFIED_ERROR)
        return outcome

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
        """Parse a device's QoS 0/1 PUBLISH and hand it to the reader's ``_submit``. The common case (a
        topic, no properties) is read inline, as the 3.1.1 reader does; anything else (properties, a
        topic alias, a fault) goes through ``_parse_publish``, which names what is wrong."""
        qos = (flags >> 1) & 0x03
        try:
            end = 2 + ((body[0] << 8) | body[1])
            topic = str(body[2:end], "utf-8")
            packet_id = None
            if qos:
                packet_id = (body[end] << 8) | body[end + 1]
                end += 2
            simple = not body[end] and packet_id != 0 and topic
        except (IndexError, UnicodeDecodeError):
            simple = False
        if simple and "+" not in topic and "#" not in topic and "\0" not in topic:
            if qos and self._unacked + self._inflight_in >= RECEIVE_MAXIMUM:
                error = ProtocolError(reasons.RECEIVE_MAXIMUM_EXCEEDED, "more unacknowledged PUBLISHes than allowed")
                self._close_for("protocol_violation", error)
                return False
            return await self._submit(topic, packet_id, body[end + 1 :], qos)
        try:
            topic, packet_id, pos, properties = self._parse_publish(qos, body)
        except ProtocolError as exc:
            self._close_for("protocol_violation", exc)
            return False
        payload = body[pos:]
        refusal = None
        if properties is not None and properties.get("payload_format_indicator") == 1 and not _is_utf8(payload):
            refusal = reasons.PAYLOAD_FORMAT_INVALID  # refused (section 3.3.2.3.2), and the client is told why
        return await self._submit(topic, packet_id, payload, qos, properties, refusal)

    def _parse_publish(self, qos, body):
        """``(topic, packet id, payload offset, message properties or None)`` of a PUBLISH with properties
        (or a faulty one: ProtocolError with its reason code)."""
        end = len(body)
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
        raw, pos = read_properties(body, pos, end, PUBLISH)
        topic = self._resolve_topic(topic, raw)
        if "subscription_identifier" in raw:
            raise reasons.protocol_error("a client PUBLISH with a subscription identifier")  # [MQTT-3.3.4-6]
        if qos and self._unacked + self._inflight_in >= RECEIVE_MAXIMUM:
            raise ProtocolError(reasons.RECEIVE_MAXIMUM_EXCEEDED, "more unacknowledged PUBLISHes than allowed")
        return topic, packet_id, pos, message_properties(raw) if raw else None

    # Refusals as PUBACK reason codes (the reader's hooks; MQTT 3.1.1 acknowledges them as stored).
    acl_refusal = reasons.NOT_AUTHORIZED
    refusal_codes = REFUSAL_CODES
    unspecified_refusal = reasons.UNSPECIFIED_ERROR

    def _refused_ack(self, packet_id, refusal, reason, packet_type=PUBACK):
        """A PUBACK (or PUBREC) with the reason code of a refusal and, if the client wants them, a reason
        string saying what was wrong [MQTT-3.1.2-29]."""
        reason = reason or REFUSAL_REASONS.get(refusal, "")
        if reason and self._problem_info():
            packet = codec.encode_ack(packet_type, packet_id, refusal, {"reason_string": reason[:200]})
            if self._fits(packet):
                return packet
        return codec.encode_ack(packet_type, packet_id, refusal)

    def _fits(self, packet):
        """Whether ``packet`` is within the client's Maximum Packet Size: a Reason String (or optional
        property) that would not fit is left out [MQTT-3.1.2-24] [MQTT-3.4.2-2]."""
        limit = self.session.v5.maximum_packet_size if self.session is not None else 0
        return not limit or len(packet) <= limit

    def _ack_of(self, packet_type, app_message, code):
        """The acknowledgement of a message on amqtt's path: plain, or with its refusal's reason."""
        if not code:
            return RawPacket(codec.encode_ack(packet_type, app_message.packet_id))
        reason = app_message.refused[1] if app_message.refused is not None else ""
        return RawPacket(self._refused_ack(app_message.packet_id, code, reason, packet_type))


INCOMING_DIRECTION = IncomingApplicationMessage(None, "", 0, b"", False).direction


def _is_utf8(payload):
    try:
        str(payload, "utf-8")
    except UnicodeDecodeError:
        return False
    return True
