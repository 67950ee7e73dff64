"""The MQTT 5.0 packet codec: the 15 control packets as small dataclasses, ``decode`` from a packet's first
byte and body, and ``encode`` to bytes.

``decode`` checks everything the bytes alone can tell (fixed-header flags, lengths, UTF-8, property
identifiers, repeats and values, reason codes allowed for the packet, QoS and packet identifiers) and
raises ``ProtocolError`` with the reason code to answer: MALFORMED_PACKET or PROTOCOL_ERROR, TOPIC_NAME_INVALID for
a wildcard in a PUBLISH topic. It never raises anything else for any input. Rules that need the
connection's state (topic aliases, receive maximum, what a client may not send) are the server's.

``encode`` writes the shortest form the specification allows: an acknowledgement with reason code 0 and
no properties is 2 bytes of variable header, as in MQTT 3.1.1.
"""

from dataclasses import dataclass, field

from .properties import (
    WILL,
    encode_properties,
    read_binary,
    read_properties,
    read_utf8,
    utf8,
    vbi,
)
from .properties import binary as encode_binary
from .reasons import (
    ALLOWED,
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    TOPIC_NAME_INVALID,
    UNSUBACK,
    UNSUBSCRIBE,
    ProtocolError,
    malformed,
    protocol_error,
)

PROTOCOL_NAME = "MQTT"
PROTOCOL_LEVEL = 5


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    client_id: str = ""
    clean_start: bool = True
    keep_alive: int = 0
    properties: dict = field(default_factory=dict)
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = PROTOCOL_NAME
    protocol_level: int = PROTOCOL_LEVEL
    packet_type = CONNECT


@dataclass(slots=True)
class Connack:
    reason_code: int = 0
    session_present: bool = False
    properties: dict = field(default_factory=dict)
    packet_type = CONNACK


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)
    packet_type = PUBLISH


@dataclass(slots=True)
class _Ack:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Puback(_Ack):
    packet_type = PUBACK


@dataclass(slots=True)
class Pubrec(_Ack):
    packet_type = PUBREC


@dataclass(slots=True)
class Pubrel(_Ack):
    packet_type = PUBREL


@dataclass(slots=True)
class Pubcomp(_Ack):
    packet_type = PUBCOMP


@dataclass(slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its Subscription Options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def options_byte(self):
        return self.qos | self.no_local << 2 | self.retain_as_published << 3 | self.retain_handling << 4


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list
    properties: dict = field(default_factory=dict)
    packet_type = SUBSCRIBE


@dataclass(slots=True)
class Suback:
    packet_id: int
    reason_codes: list
    properties: dict = field(default_factory=dict)
    packet_type = SUBACK


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list
    properties: dict = field(default_factory=dict)
    packet_type = UNSUBSCRIBE


@dataclass(slots=True)
class Unsuback:
    packet_id: int
    reason_codes: list
    properties: dict = field(default_factory=dict)
    packet_type = UNSUBACK


@dataclass(slots=True)
class Pingreq:
    packet_type = PINGREQ


@dataclass(slots=True)
class Pingresp:
    packet_type = PINGRESP


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = DISCONNECT


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)
    packet_type = AUTH


# --- decoding ---------------------------------------------------------------------------------------

# Fixed-header flags every packet but PUBLISH must carry [MQTT-2.1.3-1].
_FLAGS = {PUBREL: 2, SUBSCRIBE: 2, UNSUBSCRIBE: 2}


def decode(first_byte, body):
    """The packet whose first byte is ``first_byte`` and whose bytes after the Remaining Length are
    ``body`` (bytes, bytearray or memoryview). Raises ProtocolError, and nothing else, on bad input."""
    packet_type, flags = first_byte >> 4, first_byte & 0x0F
    decoder = _DECODERS.get(packet_type)
    if decoder is None:
        raise malformed(f"reserved packet type {packet_type}")
    if packet_type != PUBLISH and flags != _FLAGS.get(packet_type, 0):
        raise malformed(f"packet type {packet_type} with fixed-header flags 0x{flags:X}")
    try:
        return decoder(flags, body, len(body))
    except ProtocolError:
        raise
    except (IndexError, ValueError) as exc:  # a read past the end that a length check did not foresee
        raise malformed(f"packet type {packet_type} cannot be parsed: {exc}") from None


def _packet_id(data, pos, end):
    if pos + 2 > end:
        raise malformed("packet identifier runs past the end of the packet")
    packet_id = (data[pos] << 8) | data[pos + 1]
    if not packet_id:
        raise protocol_error("packet identifier 0")
    return packet_id, pos + 2


def _end(pos, end, what):
    if pos != end:
        raise malformed(f"{end - pos} unexpected byte(s) at the end of {what}")


def _decode_connect(flags, data, end):
    name, pos = read_utf8(data, 0, end)
    if pos + 4 > end:
        raise malformed("CONNECT variable header too short")
    level, connect_flags = data[pos], data[pos + 1]
    keep_alive = (data[pos + 2] << 8) | data[pos + 3]
    pos += 4
    if name != PROTOCOL_NAME:
        raise protocol_error(f"protocol name {name!r}")
    if level != PROTOCOL_LEVEL:
        raise ProtocolError(0x84, f"protocol level {level}")
    if connect_flags & 0x01:
        raise malformed("CONNECT reserved flag set")  # [MQTT-3.1.2-3]
    will_flag = connect_flags & 0x04
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    if will_qos == 3:
        raise malformed("Will QoS 3")  # [MQTT-3.1.2-12]
    if not will_flag and (will_qos or will_retain):
        raise malformed("Will QoS or Will Retain set without the Will Flag")  # [MQTT-3.1.2-11] [MQTT-3.1.2-13]
    properties, pos = read_properties(data, pos, end, CONNECT)
    client_id, pos = read_utf8(data, pos, end)
    will = None
    if will_flag:
        will_properties, pos = read_properties(data, pos, end, WILL)
        will_topic, pos = read_utf8(data, pos, end)
        will_payload, pos = read_binary(data, pos, end)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_properties)
    username = password = None
    if connect_flags & 0x80:
        username, pos = read_utf8(data, pos, end)
    if connect_flags & 0x40:
        password, pos = read_binary(data, pos, end)
    _end(pos, end, "CONNECT")
    return Connect(client_id, bool(connect_flags & 0x02), keep_alive, properties, will, username, password, name, level)


def _reason(packet_type, code):
    if code not in ALLOWED[packet_type]:
        raise malformed(f"reason code 0x{code:02X} is not one packet type {packet_type} may carry")
    return code


def _decode_connack(flags, data, end):
    if end < 2:
        raise malformed("CONNACK too short")
    if data[0] & 0xFE:
        raise malformed("CONNACK acknowledge flags reserved bits set")
    code = _reason(CONNACK, data[1])
    properties, pos = read_properties(data, 2, end, CONNACK)
    _end(pos, end, "CONNACK")
    return Connack(code, bool(data[0] & 1), properties)


def _decode_publish(flags, data, end):
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise malformed("PUBLISH with QoS 3")  # [MQTT-3.3.1-4]
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise protocol_error("DUP set on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    topic, pos = read_utf8(data, 0, end)
    if "+" in topic or "#" in topic:
        raise ProtocolError(TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")  # [MQTT-3.3.2-2]
    packet_id = None
    if qos:
        packet_id, pos = _packet_id(data, pos, end)
    properties, pos = read_properties(data, pos, end, PUBLISH)
    return Publish(topic, bytes(data[pos:end]), qos, bool(flags & 0x01), dup, packet_id, properties)


def _ack_decoder(cls):
    packet_type = cls.packet_type

    def decode_ack(flags, data, end):
        packet_id, pos = _packet_id(data, 0, end)
        if pos == end:
            return cls(packet_id)  # Remaining Length 2: reason code 0, no properties
        code = _reason(packet_type, data[pos])
        properties = {}
        if pos + 1 < end:
            properties, pos = read_properties(data, pos + 1, end, packet_type)
        else:
            pos += 1
        _end(pos, end, cls.__name__.upper())
        return cls(packet_id, code, properties)

    return decode_ack


def _decode_subscribe(flags, data, end):
    packet_id, pos = _packet_id(data, 0, end)
    properties, pos = read_properties(data, pos, end, SUBSCRIBE)
    subscriptions = []
    while pos < end:
        topic_filter, pos = read_utf8(data, pos, end)
        if pos >= end:
            raise malformed("SUBSCRIBE topic filter without subscription options")
        options = data[pos]
        pos += 1
        if options & 0xC0:
            raise malformed("SUBSCRIBE options reserved bits set")  # [MQTT-3.8.3-5]
        qos, retain_handling = options & 0x03, (options >> 4) & 0x03
        if qos == 3:
            raise malformed("SUBSCRIBE with QoS 3")  # [MQTT-3-8.3-4]
        if retain_handling == 3:
            raise protocol_error("Retain Handling 3")
        subscriptions.append(
            Subscription(topic_filter, qos, bool(options & 0x04), bool(options & 0x08), retain_handling)
        )
    if not subscriptions:
        raise protocol_error("SUBSCRIBE without a topic filter")  # [MQTT-3.8.3-2]
    return Subscribe(packet_id, subscriptions, properties)


def _codes(packet_type, data, pos, end):
    codes = [_reason(packet_type, data[i]) for i in range(pos, end)]
    if not codes:
        raise protocol_error(f"packet type {packet_type} without a reason code")
    return codes


def _decode_suback(flags, data, end):
    packet_id, pos = _packet_id(data, 0, end)
    properties, pos = read_properties(data, pos, end, SUBACK)
    return Suback(packet_id, _codes(SUBACK, data, pos, end), properties)


def _decode_unsubscribe(flags, data, end):
    packet_id, pos = _packet_id(data, 0, end)
    properties, pos = read_properties(data, pos, end, UNSUBSCRIBE)
    filters = []
    while pos < end:
        topic_filter, pos = read_utf8(data, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise protocol_error("UNSUBSCRIBE without a topic filter")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, filters, properties)


def _decode_unsuback(flags, data, end):
    packet_id, pos = _packet_id(data, 0, end)
    properties, pos = read_properties(data, pos, end, UNSUBACK)
    return Unsuback(packet_id, _codes(UNSUBACK, data, pos, end), properties)


def _empty(cls):
    def decode_empty(flags, data, end):
        _end(0, end, cls.__name__.upper())
        return cls()

    return decode_empty


def _reason_decoder(cls):
    packet_type = cls.packet_type

    def decode_reason(flags, data, end):
        if not end:
            return cls()  # Remaining Length 0: reason code 0, no properties
        code = _reason(packet_type, data[0])
        properties, pos = read_properties(data, 1, end, packet_type) if end > 1 else ({}, 1)
        _end(pos, end, cls.__name__.upper())
        return cls(code, properties)

    return decode_reason


_DECODERS = {
    CONNECT: _decode_connect,
    CONNACK: _decode_connack,
    PUBLISH: _decode_publish,
    PUBACK: _ack_decoder(Puback),
    PUBREC: _ack_decoder(Pubrec),
    PUBREL: _ack_decoder(Pubrel),
    PUBCOMP: _ack_decoder(Pubcomp),
    SUBSCRIBE: _decode_subscribe,
    SUBACK: _decode_suback,
    UNSUBSCRIBE: _decode_unsubscribe,
    UNSUBACK: _decode_unsuback,
    PINGREQ: _empty(Pingreq),
    PINGRESP: _empty(Pingresp),
    DISCONNECT: _reason_decoder(Disconnect),
    AUTH: _reason_decoder(Auth),
}


# --- encoding ---------------------------------------------------------------------------------------


def _frame(first_byte, body):
    return bytes((first_byte,)) + vbi(len(body)) + body


def encode(packet):
    """The bytes of ``packet`` (fixed header included)."""
    return _ENCODERS[packet.packet_type](packet)


def _encode_connect(p):
    flags = 0x02 if p.clean_start else 0
    will = p.will
    tail = utf8(p.client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        tail += encode_properties(will.properties, WILL) + utf8(will.topic) + encode_binary(will.payload)
    if p.username is not None:
        flags |= 0x80
        tail += utf8(p.username)
    if p.password is not None:
        flags |= 0x40
        tail += encode_binary(p.password)
    head = utf8(p.protocol_name) + bytes((p.protocol_level, flags)) + p.keep_alive.to_bytes(2, "big")
    return _frame(CONNECT << 4, head + encode_properties(p.properties, CONNECT) + tail)


def _encode_connack(p):
    body = bytes((1 if p.session_present else 0, p.reason_code)) + encode_properties(p.properties, CONNACK)
    return _frame(CONNACK << 4, body)


def encode_publish(topic, payload, qos=0, retain=False, dup=False, packet_id=None, properties=None):
    """A PUBLISH's bytes without building a ``Publish`` (the delivery path's encoder)."""
    first = PUBLISH << 4 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
    head = utf8(topic)
    if qos:
        head += packet_id.to_bytes(2, "big")
    head += encode_properties(properties, PUBLISH) if properties else b"\x00"
    return bytes((first,)) + vbi(len(head) + len(payload)) + head + payload


def _encode_publish(p):
    return encode_publish(p.topic, bytes(p.payload), p.qos, p.retain, p.dup, p.packet_id, p.properties)


def encode_ack(packet_type, packet_id, reason_code=0, properties=None):
    """PUBACK, PUBREC, PUBREL or PUBCOMP in its shortest form."""
    first = packet_type << 4 | (2 if packet_type == PUBREL else 0)
    if properties:
        body = packet_id.to_bytes(2, "big") + bytes((reason_code,)) + encode_properties(properties, packet_type)
        return _frame(first, body)
    if reason_code:
        return bytes((first, 3)) + packet_id.to_bytes(2, "big") + bytes((reason_code,))
    return bytes((first, 2)) + packet_id.to_bytes(2, "big")


def _encode_ack(p):
    return encode_ack(p.packet_type, p.packet_id, p.reason_code, p.properties)


def _encode_subscribe(p):
    body = p.packet_id.to_bytes(2, "big") + encode_properties(p.properties, SUBSCRIBE)
    for sub in p.subscriptions:
        body += utf8(sub.topic_filter) + bytes((sub.options_byte(),))
    return _frame(SUBSCRIBE << 4 | 2, body)


def _encode_codes(packet_type, first):
    def encode_codes(p):
        body = p.packet_id.to_bytes(2, "big") + encode_properties(p.properties, packet_type) + bytes(p.reason_codes)
        return _frame(first, body)

    return encode_codes


def _encode_unsubscribe(p):
    body = p.packet_id.to_bytes(2, "big") + encode_properties(p.properties, UNSUBSCRIBE)
    for topic_filter in p.topic_filters:
        body += utf8(topic_filter)
    return _frame(UNSUBSCRIBE << 4 | 2, body)


def _encode_reason(packet_type):
    def encode_reason(p):
        if not p.reason_code and not p.properties:
            return bytes((packet_type << 4, 0))
        return _frame(packet_type << 4, bytes((p.reason_code,)) + encode_properties(p.properties, packet_type))

    return encode_reason


_ENCODERS = {
    CONNECT: _encode_connect,
    CONNACK: _encode_connack,
    PUBLISH: _encode_publish,
    PUBACK: _encode_ack,
    PUBREC: _encode_ack,
    PUBREL: _encode_ack,
    PUBCOMP: _encode_ack,
    SUBSCRIBE: _encode_subscribe,
    SUBACK: _encode_codes(SUBACK, SUBACK << 4),
    UNSUBSCRIBE: _encode_unsubscribe,
    UNSUBACK: _encode_codes(UNSUBACK, UNSUBACK << 4),
    PINGREQ: lambda p: bytes((PINGREQ << 4, 0)),
    PINGRESP: lambda p: bytes((PINGRESP << 4, 0)),
    DISCONNECT: _encode_reason(DISCONNECT),
    AUTH: _encode_reason(AUTH),
}


def split(data):
    """The first complete packet in ``data``: ``(first byte, body, bytes used)``, or None if incomplete."""
    end = len(data)
    if end < 2:
        return None
    length = shift = 0
    pos = 1
    while True:
        if pos >= end:
            return None
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise malformed("remaining length longer than 4 bytes")
    if pos + length > end:
        return None
    return data[0], data[pos : pos + length], pos + length
