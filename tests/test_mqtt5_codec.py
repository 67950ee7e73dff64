"""The MQTT 5 packet codec (plugins/mqtt5), fuzzed with hypothesis: every packet type round-trips with
random properties, and any input decodes to a packet or raises ProtocolError with a reason code, never
another exception. Malformed inputs named by the specification get the reason code it prescribes."""

import pytest
from hubserver.plugins.mqtt5 import codec, reasons
from hubserver.plugins.mqtt5.properties import ALLOWED, BINARY, BYTE, FOUR, PAIR, TWO, UTF8, VBI, WILL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
topic = text.filter(lambda t: "+" not in t and "#" not in t)
packet_id = st.integers(1, 65535)

_VALUES = {
    BYTE: st.integers(0, 1),
    TWO: st.integers(1, 65535),
    FOUR: st.integers(0, 2**32 - 1),
    VBI: st.integers(1, 268_435_455),
    UTF8: text,
    BINARY: st.binary(max_size=16),
    PAIR: st.tuples(text, text),
}


def properties(packet):
    optional = {}
    for name, kind in ALLOWED[packet].values():
        value = _VALUES[kind]
        if name == "maximum_packet_size":
            value = st.integers(1, 2**32 - 1)  # 0 is a Protocol Error
        elif name == "response_topic":
            value = topic.filter(bool)  # a topic name: not empty, no wildcards [MQTT-3.3.2-14]
        elif name == "user_property":
            value = st.lists(value, min_size=1, max_size=3)
        elif name == "subscription_identifier":
            value = st.lists(value, min_size=1, max_size=3 if packet == reasons.PUBLISH else 1)
        optional[name] = value
    return st.fixed_dictionaries({}, optional=optional).filter(
        lambda p: "authentication_data" not in p or "authentication_method" in p
    )


def codes(packet):
    return st.sampled_from(sorted(reasons.ALLOWED[packet]))


@st.composite
def publishes(draw):
    qos = draw(st.integers(0, 2))
    return codec.Publish(
        draw(topic),
        draw(st.binary(max_size=64)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_id) if qos else None,
        draw(properties(reasons.PUBLISH)),
    )


wills = st.builds(
    codec.Will,
    topic,
    st.binary(max_size=16),
    st.integers(0, 2),
    st.booleans(),
    properties(WILL),
)
connects = st.builds(
    codec.Connect,
    text,
    st.booleans(),
    st.integers(0, 65535),
    properties(reasons.CONNECT),
    st.none() | wills,
    st.none() | text,
    st.none() | st.binary(max_size=16),
)
subscriptions = st.builds(codec.Subscription, text, st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2))


def acks(cls):
    return st.builds(cls, packet_id, codes(cls.packet_type), properties(cls.packet_type))


PACKETS = {
    "CONNECT": connects,
    "CONNACK": st.builds(codec.Connack, codes(reasons.CONNACK), st.booleans(), properties(reasons.CONNACK)),
    "PUBLISH": publishes(),
    "PUBACK": acks(codec.Puback),
    "PUBREC": acks(codec.Pubrec),
    "PUBREL": acks(codec.Pubrel),
    "PUBCOMP": acks(codec.Pubcomp),
    "SUBSCRIBE": st.builds(
        codec.Subscribe, packet_id, st.lists(subscriptions, min_size=1, max_size=4), properties(reasons.SUBSCRIBE)
    ),
    "SUBACK": st.builds(
        codec.Suback, packet_id, st.lists(codes(reasons.SUBACK), min_size=1, max_size=4), properties(reasons.SUBACK)
    ),
    "UNSUBSCRIBE": st.builds(
        codec.Unsubscribe, packet_id, st.lists(text, min_size=1, max_size=4), properties(reasons.UNSUBSCRIBE)
    ),
    "UNSUBACK": st.builds(
        codec.Unsuback,
        packet_id,
        st.lists(codes(reasons.UNSUBACK), min_size=1, max_size=4),
        properties(reasons.UNSUBACK),
    ),
    "PINGREQ": st.just(codec.Pingreq()),
    "PINGRESP": st.just(codec.Pingresp()),
    "DISCONNECT": st.builds(codec.Disconnect, codes(reasons.DISCONNECT), properties(reasons.DISCONNECT)),
    "AUTH": st.builds(codec.Auth, codes(reasons.AUTH), properties(reasons.AUTH)),
}


def roundtrip(packet):
    data = codec.encode(packet)
    first, body, used = codec.split(data)
    assert used == len(data)
    return codec.decode(first, body)


@pytest.mark.slow  # fuzzing
@pytest.mark.parametrize("name", sorted(PACKETS))
def test_every_packet_type_round_trips_with_random_properties(name):
    @FUZZ
    @given(PACKETS[name])
    def check(packet):
        assert roundtrip(packet) == packet

    check()


def decodes_or_refuses(first, body):
    """Decode; a refusal must be a ProtocolError with a failure reason code. Returns the packet or None."""
    try:
        packet = codec.decode(first, body)
    except reasons.ProtocolError as exc:
        assert exc.code >= 0x80, exc
        return None
    assert roundtrip(packet) == packet  # whatever decodes re-encodes to the same packet
    return packet


@pytest.mark.slow  # fuzzing
@FUZZ
@given(st.integers(0, 255), st.binary(max_size=80))
def test_random_bytes_decode_or_raise_a_protocol_error_only(first, body):
    decodes_or_refuses(first, body)


@pytest.mark.slow  # fuzzing
@FUZZ
@given(st.sampled_from(sorted(PACKETS)).flatmap(lambda name: PACKETS[name]), st.data())
def test_mutated_packets_decode_or_raise_a_protocol_error_only(packet, data):
    encoded = bytearray(codec.encode(packet))
    first, body, _ = codec.split(bytes(encoded))
    body = bytearray(body)
    if body:
        for _ in range(data.draw(st.integers(1, 3))):
            index = data.draw(st.integers(0, len(body) - 1))
            body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(first, bytes(body))
    decodes_or_refuses(first, bytes(body[:cut]))


@pytest.mark.slow  # fuzzing
@FUZZ
@given(st.binary(max_size=8))
def test_split_never_raises_anything_but_a_protocol_error(data):
    try:
        codec.split(data)
    except reasons.ProtocolError as exc:
        assert exc.code == reasons.MALFORMED_PACKET


def _publish_body(topic=b"a", props=b"\x00", packet_id=b""):
    return len(topic).to_bytes(2, "big") + topic + packet_id + props


def _connect(flags, props=b"\x00", level=5):
    return b"\x00\x04MQTT" + bytes((level, flags)) + b"\x00\x00" + props + b"\x00\x00"


MALFORMED = [
    # (what, first byte, body, reason code)
    ("reserved packet type 0", 0x00, b"", reasons.MALFORMED_PACKET),
    ("PINGREQ with flags [MQTT-2.1.3-1]", 0xC1, b"", reasons.MALFORMED_PACKET),
    ("PUBREL without its 0b0010 flags [MQTT-3.6.1-1]", 0x60, b"\x00\x01", reasons.MALFORMED_PACKET),
    ("SUBSCRIBE without its 0b0010 flags [MQTT-3.8.1-1]", 0x80, b"\x00\x01\x00\x00\x01a\x00", reasons.MALFORMED_PACKET),
    ("UNSUBSCRIBE without its flags [MQTT-3.10.1-1]", 0xA0, b"\x00\x01\x00\x00\x01a", reasons.MALFORMED_PACKET),
    ("PUBLISH QoS 3 [MQTT-3.3.1-4]", 0x36, _publish_body(packet_id=b"\x00\x01"), reasons.MALFORMED_PACKET),
    ("DUP on QoS 0 [MQTT-3.3.1-2]", 0x38, _publish_body(), reasons.PROTOCOL_ERROR),
    ("wildcard in a topic name [MQTT-3.3.2-2]", 0x30, _publish_body(b"a/#"), reasons.TOPIC_NAME_INVALID),
    ("topic not UTF-8 [MQTT-1.5.4-1]", 0x30, _publish_body(b"\xff"), reasons.MALFORMED_PACKET),
    ("UTF-16 surrogate [MQTT-1.5.4-1]", 0x30, _publish_body(b"\xed\xa0\x80"), reasons.MALFORMED_PACKET),
    ("U+0000 in a topic [MQTT-1.5.4-2]", 0x30, _publish_body(b"a\x00"), reasons.MALFORMED_PACKET),
    ("packet identifier 0 [MQTT-2.2.1-3]", 0x32, _publish_body(packet_id=b"\x00\x00"), reasons.PROTOCOL_ERROR),
    ("property repeated", 0x30, _publish_body(props=b"\x04\x01\x00\x01\x00"), reasons.PROTOCOL_ERROR),
    ("unknown property", 0x30, _publish_body(props=b"\x02\x7f\x00"), reasons.MALFORMED_PACKET),
    ("property of another packet", 0x30, _publish_body(props=b"\x03\x21\x00\x01"), reasons.PROTOCOL_ERROR),
    ("Payload Format Indicator 2", 0x30, _publish_body(props=b"\x02\x01\x02"), reasons.PROTOCOL_ERROR),
    ("Topic Alias 0 [MQTT-3.3.2-8]", 0x30, _publish_body(props=b"\x03\x23\x00\x00"), reasons.PROTOCOL_ERROR),
    ("properties longer than the packet", 0x30, _publish_body(props=b"\x09\x01"), reasons.MALFORMED_PACKET),
    (
        "variable byte integer not minimal [MQTT-1.5.5-1]",
        0x30,
        _publish_body(props=b"\x80\x00"),
        reasons.MALFORMED_PACKET,
    ),
    ("PUBACK reason code not allowed", 0x40, b"\x00\x01\x05", reasons.MALFORMED_PACKET),
    ("SUBSCRIBE without a filter [MQTT-3.8.3-2]", 0x82, b"\x00\x01\x00", reasons.PROTOCOL_ERROR),
    ("SUBSCRIBE reserved option bits [MQTT-3.8.3-5]", 0x82, b"\x00\x01\x00\x00\x01a\xc0", reasons.MALFORMED_PACKET),
    ("SUBSCRIBE QoS 3 [MQTT-3-8.3-4]", 0x82, b"\x00\x01\x00\x00\x01a\x03", reasons.MALFORMED_PACKET),
    ("Retain Handling 3", 0x82, b"\x00\x01\x00\x00\x01a\x30", reasons.PROTOCOL_ERROR),
    ("UNSUBSCRIBE without a filter [MQTT-3.10.3-2]", 0xA2, b"\x00\x01\x00", reasons.PROTOCOL_ERROR),
    ("DISCONNECT trailing bytes", 0xE0, b"\x00\x00\x00", reasons.MALFORMED_PACKET),
    ("PINGREQ with a body", 0xC0, b"\x00", reasons.MALFORMED_PACKET),
    (
        "CONNECT reserved flag [MQTT-3.1.2-3]",
        0x10,
        _connect(0x03),
        reasons.MALFORMED_PACKET,
    ),
    ("CONNECT Will QoS 3 [MQTT-3.1.2-12]", 0x10, _connect(0x1E), reasons.MALFORMED_PACKET),
    (
        "Will QoS without Will Flag [MQTT-3.1.2-11]",
        0x10,
        _connect(0x0A),
        reasons.MALFORMED_PACKET,
    ),
    (
        "Will Retain without Will Flag [MQTT-3.1.2-13]",
        0x10,
        _connect(0x22),
        reasons.MALFORMED_PACKET,
    ),
    ("CONNECT protocol level 6 [MQTT-3.1.2-2]", 0x10, _connect(0x02, level=6), 0x84),
    ("Receive Maximum 0", 0x10, _connect(0x02, b"\x03\x21\x00\x00"), reasons.PROTOCOL_ERROR),
    (
        "Authentication Data without Method",
        0x10,
        _connect(0x02, b"\x04\x16\x00\x01x"),
        reasons.PROTOCOL_ERROR,
    ),
]


@pytest.mark.parametrize(("what", "first", "body", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_is_refused_with_the_reason_code_the_specification_gives(what, first, body, code):
    with pytest.raises(reasons.ProtocolError) as refused:
        codec.decode(first, body)
    assert refused.value.code == code, str(refused.value)


def test_short_forms_are_accepted_and_written():
    # [MQTT-3.4.2-1] and 3.14.2.1 / 3.15.2.1: reason code and properties may be omitted when 0 and empty.
    assert codec.decode(0x40, b"\x00\x07") == codec.Puback(7)
    assert codec.decode(0x40, b"\x00\x07\x10") == codec.Puback(7, reasons.NO_MATCHING_SUBSCRIBERS)
    assert codec.decode(0xE0, b"") == codec.Disconnect()
    assert codec.decode(0xF0, b"") == codec.Auth()
    assert codec.encode(codec.Puback(7)) == b"\x40\x02\x00\x07"
    assert codec.encode(codec.Pubrel(7)) == b"\x62\x02\x00\x07"
    assert codec.encode(codec.Disconnect()) == b"\xe0\x00"
    assert codec.encode(codec.Puback(7, reasons.NOT_AUTHORIZED)) == b"\x40\x03\x00\x07\x87"


def test_a_publish_with_properties_is_read_as_a_client_wrote_it():
    body = (
        b"\x00\x03a/b\x00\x05"  # topic, packet id
        + b"\x1e"  # properties: 30 bytes
        + b"\x01\x01"  # payload format indicator: UTF-8
        + b"\x03\x00\x10application/json"  # content type
        + b"\x26\x00\x01k\x00\x01v"  # user property
        + b"\x0b\x07"  # subscription identifier 7
        + b"hi"
    )
    packet = codec.decode(0x32, body)
    assert packet == codec.Publish(
        "a/b",
        b"hi",
        qos=1,
        packet_id=5,
        properties={
            "payload_format_indicator": 1,
            "content_type": "application/json",
            "user_property": [("k", "v")],
            "subscription_identifier": [7],
        },
    )
