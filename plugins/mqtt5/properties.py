"""MQTT 5 properties: the table of every property (identifier, name, data type, packets that may carry
it) and the encoder and decoder of a property block.

A decoded block is a plain dict keyed by the property's name (``"content_type"``, ``"topic_alias"``...).
``user_property`` is a list of ``(name, value)`` pairs in the order received (it may repeat, and its order
is meaningful); ``subscription_identifier`` is a list of ints (a PUBLISH to a client may carry several).
Every other property appears at most once: a repeat is a Protocol Error.
"""

from .reasons import (
    AUTH,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    malformed,
    protocol_error,
)

WILL = 16  # the Will Properties of a CONNECT, validated like a packet of their own

# Data types.
BYTE, TWO, FOUR, VBI, UTF8, BINARY, PAIR = range(7)

_ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)
_ALL = (CONNECT, CONNACK, PUBLISH, *_ACKS, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH, WILL)

# identifier: (name, data type, packets that may carry it)
TABLE = {
    0x01: ("payload_format_indicator", BYTE, (PUBLISH, WILL)),
    0x02: ("message_expiry_interval", FOUR, (PUBLISH, WILL)),
    0x03: ("content_type", UTF8, (PUBLISH, WILL)),
    0x08: ("response_topic", UTF8, (PUBLISH, WILL)),
    0x09: ("correlation_data", BINARY, (PUBLISH, WILL)),
    0x0B: ("subscription_identifier", VBI, (PUBLISH, SUBSCRIBE)),
    0x11: ("session_expiry_interval", FOUR, (CONNECT, CONNACK, DISCONNECT)),
    0x12: ("assigned_client_identifier", UTF8, (CONNACK,)),
    0x13: ("server_keep_alive", TWO, (CONNACK,)),
    0x15: ("authentication_method", UTF8, (CONNECT, CONNACK, AUTH)),
    0x16: ("authentication_data", BINARY, (CONNECT, CONNACK, AUTH)),
    0x17: ("request_problem_information", BYTE, (CONNECT,)),
    0x18: ("will_delay_interval", FOUR, (WILL,)),
    0x19: ("request_response_information", BYTE, (CONNECT,)),
    0x1A: ("response_information", UTF8, (CONNACK,)),
    0x1C: ("server_reference", UTF8, (CONNACK, DISCONNECT)),
    0x1F: ("reason_string", UTF8, (CONNACK, *_ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH)),
    0x21: ("receive_maximum", TWO, (CONNECT, CONNACK)),
    0x22: ("topic_alias_maximum", TWO, (CONNECT, CONNACK)),
    0x23: ("topic_alias", TWO, (PUBLISH,)),
    0x24: ("maximum_qos", BYTE, (CONNACK,)),
    0x25: ("retain_available", BYTE, (CONNACK,)),
    0x26: ("user_property", PAIR, _ALL),
    0x27: ("maximum_packet_size", FOUR, (CONNECT, CONNACK)),
    0x28: ("wildcard_subscription_available", BYTE, (CONNACK,)),
    0x29: ("subscription_identifier_available", BYTE, (CONNACK,)),
    0x2A: ("shared_subscription_available", BYTE, (CONNACK,)),
}
BY_NAME = {name: (identifier, kind) for identifier, (name, kind, _) in TABLE.items()}
REPEATABLE = frozenset({"user_property", "subscription_identifier"})
# Per packet: identifier -> (name, data type), for the properties it may carry.
ALLOWED = {packet: {i: (n, k) for i, (n, k, packets) in TABLE.items() if packet in packets} for packet in _ALL}
# Single-byte properties whose only values are 0 and 1.
_BOOLEAN = frozenset(
    {
        "payload_format_indicator",
        "request_problem_information",
        "request_response_information",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)
# Properties whose value 0 is a Protocol Error.
_NONZERO = frozenset({"receive_maximum", "maximum_packet_size", "topic_alias", "subscription_identifier"})


def read_vbi(data, pos, end):
    """A Variable Byte Integer at ``pos``: ``(value, next position)``; at most 4 bytes, minimally encoded."""
    value = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise malformed("variable byte integer runs past the end of the packet")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise malformed("variable byte integer longer than 4 bytes")
    if byte == 0 and pos - start > 1:
        raise malformed("variable byte integer not in its shortest form")
    return value, pos


def vbi(value):
    """The Variable Byte Integer encoding of ``value`` (0 .. 268,435,455)."""
    if value < 0x80:
        return bytes((value,))
    if value > 268_435_455:
        raise ValueError(f"{value} does not fit in a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def read_utf8(data, pos, end):
    """A UTF-8 Encoded String at ``pos``: ``(str, next position)``."""
    if pos + 2 > end:
        raise malformed("string length runs past the end of the packet")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise malformed("string runs past the end of the packet")
    try:
        text = str(data[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise malformed("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise malformed("string contains U+0000")
    return text, stop


def read_binary(data, pos, end):
    """Binary Data at ``pos``: ``(bytes, next position)``."""
    if pos + 2 > end:
        raise malformed("binary data length runs past the end of the packet")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise malformed("binary data runs past the end of the packet")
    return bytes(data[pos + 2 : stop]), stop


def utf8(text):
    data = text.encode("utf-8")
    if len(data) > 65535:
        raise ValueError("a string is at most 65,535 bytes of UTF-8")
    return len(data).to_bytes(2, "big") + data


def binary(data):
    if len(data) > 65535:
        raise ValueError("binary data is at most 65,535 bytes")
    return len(data).to_bytes(2, "big") + bytes(data)


def read_properties(data, pos, end, packet):
    """The property block at ``pos`` of a ``packet`` (type number, or WILL): ``(dict, next position)``."""
    length, pos = read_vbi(data, pos, end)
    if not length:
        return {}, pos
    stop = pos + length
    if stop > end:
        raise malformed("properties run past the end of the packet")
    allowed = ALLOWED[packet]
    props = {}
    while pos < stop:
        identifier = data[pos]
        pos += 1
        spec = allowed.get(identifier)
        if spec is None:
            if identifier in TABLE:
                raise protocol_error(f"property {TABLE[identifier][0]} is not allowed in this packet")
            raise malformed(f"unknown property identifier 0x{identifier:02X}")
        name, kind = spec
        if kind == UTF8:
            value, pos = read_utf8(data, pos, stop)
        elif kind == BYTE:
            if pos >= stop:
                raise malformed(f"property {name} runs past the end of the properties")
            value = data[pos]
            pos += 1
            if value > 1 and name in _BOOLEAN:
                raise protocol_error(f"property {name} must be 0 or 1, not {value}")
            if name == "maximum_qos" and value > 1:
                raise protocol_error(f"maximum_qos must be 0 or 1, not {value}")
        elif kind == FOUR:
            if pos + 4 > stop:
                raise malformed(f"property {name} runs past the end of the properties")
            value = int.from_bytes(data[pos : pos + 4], "big")
            pos += 4
        elif kind == TWO:
            if pos + 2 > stop:
                raise malformed(f"property {name} runs past the end of the properties")
            value = (data[pos] << 8) | data[pos + 1]
            pos += 2
        elif kind == BINARY:
            value, pos = read_binary(data, pos, stop)
        elif kind == VBI:
            value, pos = read_vbi(data, pos, stop)
        else:  # PAIR
            key, pos = read_utf8(data, pos, stop)
            text, pos = read_utf8(data, pos, stop)
            value = (key, text)
        if not value and name in _NONZERO:
            raise protocol_error(f"property {name} must not be 0")
        if name in REPEATABLE:
            if name in props:
                if name == "subscription_identifier" and packet != PUBLISH:
                    raise protocol_error("subscription_identifier given more than once")
                props[name].append(value)
            else:
                props[name] = [value]
        elif name in props:
            raise protocol_error(f"property {name} given more than once")
        else:
            props[name] = value
    if pos != stop:
        raise malformed("a property runs past the end of the properties")
    if "authentication_data" in props and "authentication_method" not in props:
        raise protocol_error("authentication_data without authentication_method")
    topic = props.get("response_topic")
    if topic is not None and ("+" in topic or "#" in topic or not topic):
        raise protocol_error("a Response Topic must be a topic name: no wildcards")  # [MQTT-3.3.2-14]
    return props, pos


def encode_properties(props, packet):
    """The property block (length included) of ``props`` for a ``packet``; ValueError names a bad one."""
    if not props:
        return b"\x00"
    out = bytearray()
    allowed = ALLOWED[packet]
    for name, value in props.items():
        if value is None:
            continue
        spec = BY_NAME.get(name)
        if spec is None or spec[0] not in allowed:
            raise ValueError(f"property {name!r} is not allowed in this packet")
        identifier, kind = spec
        values = value if name in REPEATABLE else (value,)
        for item in values:
            out.append(identifier)
            if kind == UTF8:
                out += utf8(item)
            elif kind == BYTE:
                out.append(int(item))
            elif kind == FOUR:
                out += int(item).to_bytes(4, "big")
            elif kind == TWO:
                out += int(item).to_bytes(2, "big")
            elif kind == BINARY:
                out += binary(item)
            elif kind == VBI:
                out += vbi(item)
            else:
                out += utf8(item[0]) + utf8(item[1])
    return vbi(len(out)) + bytes(out)
