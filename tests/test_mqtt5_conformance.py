"""The MQTT 5.0 specification's normative statements a server must honour, one test per statement or
small group, each citing its [MQTT-x.y.z-n], against the in-process hub with a raw MQTT 5 client (the
hub's own codec on a bare socket: a library would refuse to send most of what is tested here).

Statements addressed only to clients (what a client must send) are tested where the server has to
react to a client breaking them. The statements the hub deliberately does not honour, and why, are
listed in docs/mqtt5.md ("Conformance"); ``NOT_HONOURED`` below names them so the list and the tests stay
together.
"""

import asyncio

import pytest
from hubserver.plugins.mqtt5 import codec, reasons

from tests.conftest import provision_device
from tests.mqtt import until
from tests.testapp.models import ThermometerMessage

pytestmark = pytest.mark.django_db(transaction=True)

# Statements about enhanced authentication (AUTH exchanges) that no hub connection can reach: the hub
# refuses every Authentication Method (CONNACK 0x8C, [MQTT-4.12.0-1]), so there is never an AUTH exchange.
NOT_HONOURED = ("MQTT-4.12.0-2", "MQTT-4.12.0-3", "MQTT-4.12.0-4", "MQTT-4.12.0-5", "MQTT-4.12.1-1", "MQTT-4.12.1-2")

Publish, Subscription = codec.Publish, codec.Subscription


# --- helpers -----------------------------------------------------------------------------------------


async def connected(hub, raw, service, client_id="c1", **kwargs):
    """A raw MQTT 5 client of the service user, connected; returns (client, CONNACK)."""
    client = raw(hub.engine.port)
    connack = await client.connect(client_id, *service, **kwargs)
    assert connack.reason_code == reasons.SUCCESS, connack
    return client, connack


async def subscribed(client, *filters, qos=1, packet_id=1, properties=None, **options):
    client.send(codec.Subscribe(packet_id, [Subscription(f, qos, **options) for f in filters], properties or {}))
    suback = await client.read_type(codec.Suback)
    assert suback.packet_id == packet_id
    return suback.reason_codes


async def disconnected_with(client, code):
    """The server's DISCONNECT carries ``code``, and then the connection is closed [MQTT-3.14.4-2]."""
    packet = await client.read_type(codec.Disconnect)
    assert packet is not None, "the connection closed without a DISCONNECT"
    assert packet.reason_code == code, f"DISCONNECT 0x{packet.reason_code:02X}, expected 0x{code:02X}"
    assert await client.closed()
    return packet


async def device_connected(hub, raw, device_id, properties=None):
    """A raw MQTT 5 client of a freshly provisioned thermometer; returns (client, CONNACK)."""
    _, credentials = await provision_device("thermometer", device_id)
    client = raw(hub.engine.port)
    username = credentials["mqtt_username"]
    connack = await client.connect(username, username, credentials["mqtt_password"], properties=properties or {})
    return client, connack


async def persistent_with_one_delivery(hub, raw, service, client_id):
    """A persistent session subscribed to ``<client_id>/#`` and a QoS 1 delivery it has not acknowledged."""
    first, _ = await connected(hub, raw, service, client_id, properties=PERSISTENT)
    await subscribed(first, f"{client_id}/#")
    await hub.engine.publish(f"{client_id}/x", b"x", qos=1)
    return first, await first.read_type(Publish)


PERSISTENT = {"session_expiry_interval": 60}


def connect_bytes(client_id="c1", username="svc", password=b"svc-pass", **kwargs):
    """A CONNECT's bytes, to be altered; its Connect Flags byte is at index 9 (a one-byte length)."""
    data = bytearray(codec.encode(codec.Connect(client_id, username=username, password=password, **kwargs)))
    assert data[1] < 128
    return data


async def refused_at_connect(hub, raw, data):
    """Send raw CONNECT bytes; the CONNACK's reason code (None: closed without one), once closed."""
    client = raw(hub.engine.port)
    await client.open()
    client.send(bytes(data))
    packet = await client.read(timeout=5)
    assert await client.closed()
    return packet.reason_code if packet is not None else None


async def nothing_arrives(client, seconds=0.3):
    assert await client.silent(seconds), "a packet arrived"


# --- 1, 2: data representation and packet format ----------------------------------------------------


def publish_bytes(topic_bytes, properties=b"\x00", payload=b"x", first=0x30):
    body = len(topic_bytes).to_bytes(2, "big") + topic_bytes + properties + payload
    return bytes((first, len(body))) + body


MALFORMED, PROTOCOL_ERROR = reasons.MALFORMED_PACKET, reasons.PROTOCOL_ERROR

# (statements, what is sent after a successful CONNECT, the DISCONNECT's reason code)
REFUSED = [
    ("MQTT-1.5.4-1 MQTT-3.3.2-1 ill-formed UTF-8 topic", publish_bytes(b"a/\xed\xa0\x80"), MALFORMED),
    ("MQTT-1.5.4-2 MQTT-4.7.3-2 U+0000 in a topic", publish_bytes(b"a\x00b"), MALFORMED),
    ("MQTT-1.5.5-1 a Remaining Length not in its fewest bytes", b"\xc0\x80\x00", MALFORMED),
    ("MQTT-2.1.3-1 MQTT-3.8.1-1 SUBSCRIBE flags 0", b"\x80\x06\x00\x01\x00\x00\x01a", MALFORMED),
    ("MQTT-2.1.3-1 MQTT-3.10.1-1 UNSUBSCRIBE flags 0", b"\xa0\x05\x00\x01\x00\x00\x01", MALFORMED),
    ("MQTT-2.1.3-1 MQTT-3.6.1-1 PUBREL flags 8", b"\x68\x02\x00\x01", MALFORMED),
    ("MQTT-2.1.3-1 PINGREQ flags 1", b"\xc1\x00", MALFORMED),
    ("MQTT-2.1.3-1 MQTT-3.14.1-1 DISCONNECT flags 2", b"\xe2\x00", MALFORMED),
    ("MQTT-3.15.1-1 AUTH flags 1", b"\xf1\x00", MALFORMED),
    (
        "MQTT-3.1.0-2 a second CONNECT",
        codec.encode(codec.Connect("c1", username="svc", password=b"svc-pass")),
        PROTOCOL_ERROR,
    ),
    ("MQTT-3.3.1-4 QoS 3", b"\x36\x07\x00\x01a\x00\x01\x00x", MALFORMED),
    (
        "MQTT-3.3.2-2 MQTT-4.7.0-1 a wildcard in a topic name",
        codec.encode(Publish("a/+/b", b"x")),
        reasons.TOPIC_NAME_INVALID,
    ),
    ("MQTT-3.3.2-8 Topic Alias 0", publish_bytes(b"a", b"\x03\x23\x00\x00"), PROTOCOL_ERROR),
    (
        "MQTT-3.3.2-13 MQTT-3.3.2-14 a Response Topic with a wildcard",
        publish_bytes(b"a", b"\x0c\x08\x00\x09answers/#"),
        PROTOCOL_ERROR,
    ),
    ("MQTT-3.3.2-19 a Content Type that is not UTF-8", publish_bytes(b"a", b"\x04\x03\x00\x01\xff"), MALFORMED),
    (
        "MQTT-3.3.4-6 a client PUBLISH with a Subscription Identifier",
        publish_bytes(b"a", b"\x02\x0b\x01"),
        PROTOCOL_ERROR,
    ),
    ("MQTT-3.8.3-1 MQTT-3.10.3-1 a filter that is not UTF-8", b"\x82\x07\x00\x01\x00\x00\x01\xff\x01", MALFORMED),
    ("MQTT-3.8.3-2 a SUBSCRIBE without filters", b"\x82\x03\x00\x01\x00", PROTOCOL_ERROR),
    (
        "MQTT-3.8.3-4 No Local on a shared subscription",
        codec.encode(codec.Subscribe(1, [Subscription("$share/g/x", 1, no_local=True)])),
        PROTOCOL_ERROR,
    ),
    ("MQTT-3.8.3-5 reserved bits of the Subscription Options", b"\x82\x07\x00\x01\x00\x00\x01a\xc1", MALFORMED),
    ("MQTT-3.10.3-2 an UNSUBSCRIBE without filters", b"\xa2\x03\x00\x01\x00", PROTOCOL_ERROR),
    (
        "MQTT-4.12.0-7 MQTT-3.15.2-1 AUTH without an Authentication Method in CONNECT",
        codec.encode(codec.Auth(reasons.RE_AUTHENTICATE, {"authentication_method": "x"})),
        PROTOCOL_ERROR,
    ),
]


@pytest.mark.parametrize("statement, data, code", REFUSED, ids=[statement for statement, _, _ in REFUSED])
async def test_a_packet_that_breaks_a_rule_is_refused_with_its_reason_code(hub, raw, service, statement, data, code):
    """[MQTT-4.13.1-1] [MQTT-4.13.2-1] A Malformed Packet or Protocol Error gets a DISCONNECT naming it
    (each case cites the statement it breaks), then the connection is closed [MQTT-3.14.4-2]."""
    client, _ = await connected(hub, raw, service)
    client.send(data)
    await disconnected_with(client, code)


async def test_a_bom_is_neither_skipped_nor_stripped_MQTT_1_5_4_3(hub, raw, service):
    """[MQTT-1.5.4-3] U+FEFF is part of the topic: a filter without it does not match."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "\ufeffbom/t", "bom/t", qos=0)
    client.send(Publish("\ufeffbom/t", b"x"))
    delivered = await client.read_type(codec.Publish)
    assert delivered.topic == "\ufeffbom/t"
    await nothing_arrives(client)


async def test_qos0_deliveries_carry_no_packet_identifier_and_no_dup_MQTT_2_2_1_2(hub, raw, service):
    """[MQTT-2.2.1-2] [MQTT-3.3.1-2] [MQTT-4.3.1-1] [MQTT-2.2.2-1]: and an empty property block is a
    Property Length of 0."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "zero/#", qos=1)
    await hub.engine.publish("zero/a", b"payload", qos=0)
    first = await client.reader.readexactly(1)
    length = (await client.reader.readexactly(1))[0]
    body = await client.reader.readexactly(length)
    assert first[0] == 0x30  # PUBLISH, QoS 0, DUP 0, RETAIN 0
    assert body == b"\x00\x06zero/a" + b"\x00" + b"payload"  # no packet id; Property Length 0


async def test_packet_identifier_0_is_refused_MQTT_2_2_1_3(hub, raw, service):
    """[MQTT-2.2.1-3] A SUBSCRIBE (or QoS > 0 PUBLISH) needs a non-zero Packet Identifier."""
    client, _ = await connected(hub, raw, service)
    client.send(b"\x82\x06\x00\x00\x00\x00\x01a" + b"\x01")
    packet = await client.read_type(codec.Disconnect)
    assert packet.reason_code >= 0x80
    assert await client.closed()


async def test_the_server_numbers_its_qos1_deliveries_with_unused_identifiers_MQTT_2_2_1_4(hub, raw, service):
    """[MQTT-2.2.1-4] [MQTT-4.3.2-1] [MQTT-4.3.2-2] [MQTT-4.3.2-3] Unacknowledged deliveries keep
    distinct non-zero identifiers and DUP 0."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "ids/#", qos=1)
    for n in range(5):
        await hub.engine.publish(f"ids/{n}", b"x", qos=1)
    received = [await client.read_type(codec.Publish) for _ in range(5)]
    ids = [p.packet_id for p in received]
    assert 0 not in ids and len(set(ids)) == 5
    assert not any(p.dup for p in received)


async def test_acknowledgements_carry_the_packet_identifier_they_acknowledge_MQTT_2_2_1_5(hub, raw, service):
    """[MQTT-2.2.1-5] [MQTT-2.2.1-6] [MQTT-3.8.4-2] [MQTT-3.10.4-5] [MQTT-4.3.2-4] [MQTT-4.3.3-8]"""
    client, _ = await connected(hub, raw, service)
    client.send(Publish("ack/a", b"1", qos=1, packet_id=301))
    client.send(Publish("ack/b", b"2", qos=2, packet_id=302))
    assert (await client.read_type(codec.Puback)).packet_id == 301
    assert (await client.read_type(codec.Pubrec)).packet_id == 302
    client.send(codec.Pubrel(302))
    assert (await client.read_type(codec.Pubcomp)).packet_id == 302
    assert await subscribed(client, "ack/#", packet_id=303) == [1]
    client.send(codec.Unsubscribe(304, ["ack/#"]))
    assert (await client.read_type(codec.Unsuback)).packet_id == 304


# --- 3.1 CONNECT -------------------------------------------------------------------------------------


async def test_the_first_packet_must_be_a_connect_MQTT_3_1_0_1(hub, raw):
    """[MQTT-3.1.0-1] A PINGREQ first: closed, nothing sent."""
    client = raw(hub.engine.port)
    await client.open()
    client.send(b"\xc0\x00")
    assert await client.read(timeout=5) is None


async def test_an_unknown_protocol_name_is_closed_MQTT_3_1_2_1(hub, raw):
    """[MQTT-3.1.2-1] "MQTX": closed (without revealing an MQTT server: no CONNACK)."""
    data = connect_bytes()
    data[4:8] = b"MQTX"
    assert await refused_at_connect(hub, raw, data) is None


async def test_an_unsupported_protocol_version_is_answered_and_closed_MQTT_3_1_2_2(hub, raw):
    """[MQTT-3.1.2-2] Level 6: CONNACK 0x01 (unacceptable protocol version, in the only format every
    version of MQTT understands), then closed."""
    data = connect_bytes()
    data[8] = 6
    client = raw(hub.engine.port)
    await client.open()
    client.send(bytes(data))
    assert await client.reader.readexactly(4) == b"\x20\x02\x00\x01"
    assert await client.closed()


async def test_the_connect_reserved_flag_must_be_0_MQTT_3_1_2_3(hub, raw):
    """[MQTT-3.1.2-3] [MQTT-3.1.4-1] [MQTT-3.2.2-7] [MQTT-3.2.2-8]"""
    data = connect_bytes()
    data[9] |= 0x01
    assert await refused_at_connect(hub, raw, data) == reasons.MALFORMED_PACKET


@pytest.mark.parametrize(
    "flags, statement",
    [
        (0x08, "MQTT-3.1.2-11 Will QoS 1 without the Will Flag"),
        (0x20, "MQTT-3.1.2-13 Will Retain without the Will Flag"),
        (0x1C, "MQTT-3.1.2-12 Will QoS 3"),
    ],
)
async def test_will_flags_that_do_not_go_together_are_malformed(hub, raw, flags, statement):
    """[MQTT-3.1.2-11] [MQTT-3.1.2-12] [MQTT-3.1.2-13]"""
    data = connect_bytes()
    data[9] |= flags
    assert await refused_at_connect(hub, raw, data) == reasons.MALFORMED_PACKET, statement


@pytest.mark.parametrize(
    "flag, statement",
    [
        (0x04, "MQTT-3.1.2-9 Will Flag without Will Properties, Topic and Payload"),
        (0x80 | 0x40, "MQTT-3.1.2-17/19 a User Name and Password Flag with the fields missing"),
    ],
)
async def test_fields_the_flags_announce_must_be_present(hub, raw, flag, statement):
    """[MQTT-3.1.2-9] [MQTT-3.1.2-17] [MQTT-3.1.2-19] [MQTT-3.1.3-1]"""
    data = bytearray(codec.encode(codec.Connect("c1")))
    data[9] |= flag
    assert await refused_at_connect(hub, raw, data) == reasons.MALFORMED_PACKET, statement


async def test_fields_present_without_their_flag_are_malformed_MQTT_3_1_2_16(hub, raw):
    """[MQTT-3.1.2-16] [MQTT-3.1.2-18] A User Name and Password present, their flags 0."""
    data = connect_bytes()
    data[9] &= ~0xC0
    assert await refused_at_connect(hub, raw, data) == reasons.MALFORMED_PACKET


async def test_clean_start_1_discards_the_session_MQTT_3_1_2_4(hub, raw, service):
    """[MQTT-3.1.2-4] [MQTT-3.2.2-2]"""
    first, _ = await connected(hub, raw, service, "cs", properties={"session_expiry_interval": 60})
    await subscribed(first, "cs/#")
    first.send(codec.Disconnect())
    assert await first.closed()
    second, connack = await connected(hub, raw, service, "cs", clean_start=True)
    assert connack.session_present is False
    await hub.engine.publish("cs/x", b"x", qos=1)
    await nothing_arrives(second)  # the old subscription went with the session


async def test_clean_start_0_resumes_an_existing_session_MQTT_3_1_2_5(hub, raw, service):
    """[MQTT-3.1.2-5] [MQTT-3.2.2-3] [MQTT-3.1.2-23] [MQTT-4.5.0-1] Subscriptions and the messages
    that arrived meanwhile are the resumed session's."""
    first, _ = await connected(hub, raw, service, "resume", properties={"session_expiry_interval": 60})
    await subscribed(first, "resume/#")
    first.send(codec.Disconnect())
    assert await first.closed()
    await hub.engine.publish("resume/x", b"meanwhile", qos=1)
    second, connack = await connected(
        hub, raw, service, "resume", clean_start=False, properties={"session_expiry_interval": 60}
    )
    assert connack.session_present is True
    assert (await second.read_type(Publish)).payload == b"meanwhile"


async def test_clean_start_0_without_a_session_starts_one_MQTT_3_1_2_6(hub, raw, service):
    """[MQTT-3.1.2-6] [MQTT-3.2.2-3]: Session Present 0."""
    _, connack = await connected(hub, raw, service, "fresh", clean_start=False)
    assert connack.session_present is False


async def will_watcher(hub, raw, service, topic_filter="will/#"):
    watcher, _ = await connected(hub, raw, service, "watcher")
    await subscribed(watcher, topic_filter, qos=1, retain_as_published=True)
    return watcher


async def test_the_will_is_published_when_the_connection_fails_MQTT_3_1_2_8(hub, raw, service):
    """[MQTT-3.1.2-7] [MQTT-3.1.2-8] [MQTT-3.1.2-14] [MQTT-3.1.3-10]: a non-retained Will, its User
    Properties in their order."""
    watcher = await will_watcher(hub, raw, service)
    will = codec.Will("will/a", b"gone", 1, False, {"user_property": [("b", "1"), ("a", "2")]})
    dying, _ = await connected(hub, raw, service, "dying", will=will)
    dying.close()  # no DISCONNECT: the network failed
    delivered = await watcher.read_type(Publish)
    assert (delivered.topic, delivered.payload, delivered.retain) == ("will/a", b"gone", False)
    assert delivered.properties["user_property"] == [("b", "1"), ("a", "2")]


async def test_a_retained_will_is_published_retained_MQTT_3_1_2_15(hub, raw, service):
    """[MQTT-3.1.2-15] [MQTT-3.2.2-13]: retained messages are available, so a Will Retain is accepted."""
    dying, _ = await connected(hub, raw, service, "dying", will=codec.Will("will/r", b"last", 1, True))
    dying.close()
    await until(lambda: "will/r" in hub.engine.broker._retained_messages, message="the retained Will")
    late, _ = await connected(hub, raw, service, "late")
    await subscribed(late, "will/r")
    delivered = await late.read_type(Publish)
    assert (delivered.payload, delivered.retain) == (b"last", True)


async def test_a_normal_disconnect_discards_the_will_MQTT_3_14_4_3(hub, raw, service):
    """[MQTT-3.14.4-3] [MQTT-3.1.2-10]"""
    watcher = await will_watcher(hub, raw, service)
    leaving, _ = await connected(hub, raw, service, "leaving", will=codec.Will("will/n", b"no", 0))
    leaving.send(codec.Disconnect(reasons.SUCCESS))
    assert await leaving.closed()
    await nothing_arrives(watcher, 0.5)


@pytest.mark.slow  # waits out a 2 s Will Delay
async def test_a_reconnection_within_the_will_delay_suppresses_the_will_MQTT_3_1_3_9(hub, raw, service):
    """[MQTT-3.1.3-9]"""
    watcher = await will_watcher(hub, raw, service)
    will = codec.Will("will/d", b"late", 0, False, {"will_delay_interval": 2})
    props = PERSISTENT
    first, _ = await connected(hub, raw, service, "delayed", will=will, properties=props)
    first.close()
    await asyncio.sleep(0.2)
    await connected(hub, raw, service, "delayed", clean_start=False, properties=props)
    await nothing_arrives(watcher, 2.5)


@pytest.mark.slow  # waits 1.5 keepalives of 1 s
async def test_silence_for_one_and_a_half_keepalives_closes_the_connection_MQTT_3_1_2_22(hub, raw, service):
    """[MQTT-3.1.2-22] [MQTT-3.2.2-22]: no Server Keep Alive was sent, so the client's 1 s applies."""
    client, connack = await connected(hub, raw, service, keepalive=1)
    assert "server_keep_alive" not in connack.properties
    await disconnected_with(client, reasons.KEEP_ALIVE_TIMEOUT)


async def test_nothing_larger_than_the_clients_maximum_packet_size_is_sent_MQTT_3_1_2_24(hub, raw, service):
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25] A delivery that would not fit is dropped as if sent; the next fits."""
    client, _ = await connected(hub, raw, service, properties={"maximum_packet_size": 64})
    await subscribed(client, "mps/#", qos=0)
    await hub.engine.publish("mps/big", b"x" * 100, qos=0)
    await hub.engine.publish("mps/small", b"y", qos=0)
    assert (await client.read_type(Publish)).topic == "mps/small"


async def test_reason_strings_are_left_out_rather_than_exceed_the_clients_maximum_MQTT_3_4_2_2(hub, raw):
    """[MQTT-3.4.2-2] [MQTT-3.2.2-19] A refusal's PUBACK loses its Reason String, not its reason code,
    when the string would make it larger than the client's Maximum Packet Size."""
    client, connack = await device_connected(hub, raw, "mps-1", {"maximum_packet_size": 16})
    assert connack.reason_code == reasons.SUCCESS
    assert len(codec.encode(connack)) <= 16
    client.send(Publish("things/thermometer/other/data", b"{}", qos=1, packet_id=1))
    puback = await client.read_type(codec.Puback)
    assert (puback.reason_code, puback.properties) == (reasons.NOT_AUTHORIZED, {})


async def test_topic_aliases_only_up_to_the_clients_maximum_MQTT_3_1_2_26(hub, raw, service):
    """[MQTT-3.1.2-26] [MQTT-3.1.2-27] [MQTT-3.3.2-11] None without a Topic Alias Maximum; at most 2 with 2."""
    plain, _ = await connected(hub, raw, service, "plain")
    aliased, _ = await connected(hub, raw, service, "aliased", properties={"topic_alias_maximum": 2})
    for client in (plain, aliased):
        await subscribed(client, "ta/#", qos=0)
    for topic in ("ta/a", "ta/b", "ta/c", "ta/a"):
        await hub.engine.publish(topic, b"x", qos=0)
    plain_received = [await plain.read_type(Publish) for _ in range(4)]
    assert not any("topic_alias" in publish.properties for publish in plain_received)
    aliases = [(await aliased.read_type(Publish)).properties.get("topic_alias") for _ in range(4)]
    assert aliases == [1, 2, None, 1]


async def test_no_response_information_unless_requested_MQTT_3_1_2_28(hub, raw):
    """[MQTT-3.1.2-28] Request Response Information 0 (the default): none in CONNACK."""
    _, connack = await device_connected(hub, raw, "ri-1")
    assert "response_information" not in connack.properties


async def test_no_reason_strings_when_the_client_asks_for_none_MQTT_3_1_2_29(hub, raw):
    """[MQTT-3.1.2-29] Request Problem Information 0: a refused PUBLISH's PUBACK has its code only."""
    client, _ = await device_connected(hub, raw, "rpi-1", {"request_problem_information": 0})
    client.send(Publish("things/thermometer/rpi-2/data", b"{}", qos=1, packet_id=1))
    puback = await client.read_type(codec.Puback)
    assert (puback.reason_code, puback.properties) == (reasons.NOT_AUTHORIZED, {})


async def test_a_23_character_alphanumeric_client_id_is_allowed_MQTT_3_1_3_5(hub, raw, service):
    """[MQTT-3.1.3-5] [MQTT-3.1.3-3] [MQTT-3.1.3-4]"""
    await connected(hub, raw, service, "abcdefghijkXYZ0123456789"[:23])


async def test_an_empty_client_id_gets_a_unique_assigned_one_MQTT_3_1_3_6(hub, raw, service):
    """[MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]"""
    _, first = await connected(hub, raw, service, "")
    _, second = await connected(hub, raw, service, "")
    assigned = first.properties["assigned_client_identifier"], second.properties["assigned_client_identifier"]
    assert all(assigned) and assigned[0] != assigned[1]


async def test_a_will_topic_that_is_not_utf8_is_malformed_MQTT_3_1_3_11(hub, raw):
    """[MQTT-3.1.3-11]"""
    data = bytearray(codec.encode(codec.Connect("c1", will=codec.Will("w\u00e9", b"x"))))
    index = data.index("w\u00e9".encode())
    data[index + 1 : index + 3] = b"\xc3\x28"  # an invalid two-byte sequence, same length
    assert await refused_at_connect(hub, raw, data) == reasons.MALFORMED_PACKET


async def test_failed_authentication_is_refused_and_closed_MQTT_3_1_4_2(hub, raw, service):
    """[MQTT-3.1.4-2] [MQTT-3.2.2-6] [MQTT-3.2.2-7] [MQTT-3.14.0-1] [MQTT-3.1.4-6]: CONNACK 0x86 with
    Session Present 0, no DISCONNECT, and what followed the CONNECT is not processed."""
    watcher, _ = await connected(hub, raw, service, "watcher")
    await subscribed(watcher, "after/#", qos=0)
    client = raw(hub.engine.port)
    await client.open()
    client.send(codec.encode(codec.Connect("c2", username="svc", password=b"wrong")) + codec.encode(Publish("after/x")))
    connack = await client.read()
    assert (connack.reason_code, connack.session_present) == (reasons.BAD_USER_NAME_OR_PASSWORD, False)
    assert await client.read() is None  # closed, nothing else (no DISCONNECT)
    await nothing_arrives(watcher)


async def test_a_second_connection_with_the_same_client_id_takes_over_MQTT_3_1_4_3(hub, raw, service):
    """[MQTT-3.1.4-3] The old connection is told 0x8E and closed; the new one is accepted [MQTT-3.1.4-5]."""
    old, _ = await connected(hub, raw, service, "twin")
    await connected(hub, raw, service, "twin")
    await disconnected_with(old, reasons.SESSION_TAKEN_OVER)


# --- 3.2 CONNACK --------------------------------------------------------------------------------------


async def test_one_connack_first_with_reserved_bits_0_MQTT_3_2_0_1(hub, raw, service):
    """[MQTT-3.2.0-1] [MQTT-3.2.0-2] [MQTT-3.2.2-1]"""
    client = raw(hub.engine.port)
    await client.open()
    client.send(codec.Connect("c1", username="svc", password=b"svc-pass"))
    client.send(b"\xc0\x00")  # PINGREQ right behind it
    first = await client.reader.readexactly(2)
    body = await client.reader.readexactly(first[1])
    assert first[0] == 0x20 and body[0] & 0xFE == 0
    assert isinstance(await client.read(), codec.Pingresp)
    await nothing_arrives(client)


async def test_qos2_is_supported_so_no_maximum_qos_MQTT_3_2_2_9(hub, raw, service):
    """[MQTT-3.2.2-9] [MQTT-3.2.2-10] [MQTT-3.2.2-12]: a Will at QoS 2 is accepted, QoS 2 is granted."""
    client, connack = await connected(hub, raw, service, will=codec.Will("will/q2", b"x", 2))
    assert "maximum_qos" not in connack.properties
    assert await subscribed(client, "q2/#", qos=2) == [2]


async def test_the_connack_fits_the_clients_maximum_packet_size_MQTT_3_2_2_19(hub, raw, service):
    """[MQTT-3.2.2-19] [MQTT-3.2.2-20] [MQTT-3.1.2-24]: optional properties give way."""
    client = raw(hub.engine.port)
    connack = await client.connect("small", *service, properties={"maximum_packet_size": 20})
    assert connack.reason_code == reasons.SUCCESS
    assert len(codec.encode(connack)) <= 20


# --- 3.3 PUBLISH --------------------------------------------------------------------------------------


async def test_a_redelivery_sets_dup_and_keeps_its_identifier_MQTT_3_3_1_1(hub, raw, service):
    """[MQTT-3.3.1-1] [MQTT-4.4.0-1] Unacknowledged at disconnection: sent again on the resumed session."""
    first, original = await persistent_with_one_delivery(hub, raw, service, "redo")
    assert not original.dup
    first.close()  # no PUBACK
    await asyncio.sleep(0.2)
    second, _ = await connected(hub, raw, service, "redo", clean_start=False, properties=PERSISTENT)
    again = await second.read_type(Publish)
    assert (again.packet_id, again.dup, again.payload) == (original.packet_id, True, b"x")


async def test_dup_on_a_qos0_publish_is_refused_MQTT_3_3_1_2(hub, raw, service):
    """[MQTT-3.3.1-2]"""
    client, _ = await connected(hub, raw, service)
    client.send(b"\x38\x05\x00\x01a\x00x")
    packet = await client.read_type(codec.Disconnect)
    assert packet.reason_code >= 0x80
    assert await client.closed()


async def test_dup_is_set_per_hop_MQTT_3_3_1_3(hub, raw, service):
    """[MQTT-3.3.1-3] A PUBLISH received with DUP 1 is forwarded with DUP 0."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "dup/#")
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(Publish("dup/x", b"x", qos=1, dup=True, packet_id=9))
    assert not (await sub.read_type(Publish)).dup


async def test_retained_messages_replace_and_zero_bytes_remove_MQTT_3_3_1_5(hub, raw, service):
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7] [MQTT-3.3.1-8]"""
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(Publish("ret/a", b"one", qos=1, retain=True, packet_id=1))
    pub.send(Publish("ret/a", b"two", qos=1, retain=True, packet_id=2))
    pub.send(Publish("ret/a", b"not retained", qos=1, packet_id=3))
    pub.send(Publish("ret/b", b"b", qos=1, retain=True, packet_id=4))
    pub.send(Publish("ret/b", b"", qos=1, retain=True, packet_id=5))
    for _ in range(5):
        await pub.read_type(codec.Puback)
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "ret/#")
    delivered = await sub.read_type(Publish)
    assert (delivered.topic, delivered.payload, delivered.retain) == ("ret/a", b"two", True)
    await nothing_arrives(sub)  # nothing retained on ret/b


@pytest.mark.parametrize("handling, first, again", [(0, True, True), (1, True, False), (2, False, False)])
async def test_retain_handling_MQTT_3_3_1_9(hub, raw, service, handling, first, again):
    """[MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.8.4-4]: 0 sends retained messages on every
    SUBSCRIBE, 1 only when the subscription is new, 2 never."""
    await hub.engine.publish("rh/x", b"kept", qos=1, retain=True)
    client, _ = await connected(hub, raw, service)
    for expected, packet_id in ((first, 1), (again, 2)):
        await subscribed(client, "rh/#", packet_id=packet_id, retain_handling=handling)
        if expected:
            retained = await client.read_type(Publish)
            assert retained.payload == b"kept"
            client.send(codec.Puback(retained.packet_id))
        else:
            await nothing_arrives(client)


@pytest.mark.parametrize("as_published", [False, True])
async def test_retain_as_published_MQTT_3_3_1_12(hub, raw, service, as_published):
    """[MQTT-3.3.1-12] [MQTT-3.3.1-13] A live retained PUBLISH is forwarded with RETAIN 0, or as published."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "rap/#", retain_as_published=as_published)
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(Publish("rap/x", b"x", qos=1, retain=True, packet_id=1))
    assert (await sub.read_type(Publish)).retain is as_published


async def test_message_properties_are_forwarded_unaltered_MQTT_3_3_2_4(hub, raw, service):
    """[MQTT-3.3.2-3] [MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    [MQTT-3.3.2-20] The topic matches the filter; Payload Format Indicator, Response Topic, Correlation
    Data, User Properties (in order, repeats kept) and Content Type arrive as sent."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "props/+")
    sent = {
        "payload_format_indicator": 1,
        "response_topic": "props/answers",
        "correlation_data": b"\x00\x01\xff",
        "user_property": [("z", "1"), ("a", "2"), ("z", "3")],
        "content_type": "text/plain; charset=utf-8",
    }
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(Publish("props/x", b"hello", qos=1, packet_id=1, properties=sent))
    delivered = await sub.read_type(Publish)
    assert delivered.topic == "props/x"
    assert delivered.properties == sent


@pytest.mark.slow  # waits out a 1 s Message Expiry
async def test_an_expired_message_is_not_delivered_and_time_waited_is_deducted_MQTT_3_3_2_5(hub, raw, service):
    """[MQTT-3.3.2-5] [MQTT-3.3.2-6]"""
    props = PERSISTENT
    away, _ = await connected(hub, raw, service, "away", properties=props)
    await subscribed(away, "exp/#")
    away.send(codec.Disconnect())
    assert await away.closed()
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(Publish("exp/short", b"s", qos=1, packet_id=1, properties={"message_expiry_interval": 1}))
    pub.send(Publish("exp/long", b"l", qos=1, packet_id=2, properties={"message_expiry_interval": 60}))
    await asyncio.sleep(1.5)
    back, _ = await connected(hub, raw, service, "away", clean_start=False, properties=props)
    delivered = await back.read_type(Publish)
    assert delivered.topic == "exp/long"
    assert delivered.properties["message_expiry_interval"] < 60
    await nothing_arrives(back)


async def test_topic_aliases_do_not_outlive_their_connection_MQTT_3_3_2_7(hub, raw, service):
    """[MQTT-3.3.2-7]"""
    first, _ = await connected(hub, raw, service, "alias")
    first.send(Publish("alias/t", b"1", qos=1, packet_id=1, properties={"topic_alias": 1}))
    await first.read_type(codec.Puback)
    first.send(codec.Disconnect())
    assert await first.closed()
    second, _ = await connected(hub, raw, service, "alias")
    second.send(Publish("", b"2", properties={"topic_alias": 1}))
    await disconnected_with(second, reasons.PROTOCOL_ERROR)


async def test_every_alias_up_to_the_maximum_is_accepted_MQTT_3_3_2_12(hub, raw, service):
    """[MQTT-3.3.2-12] [MQTT-3.2.2-17]: alias = Topic Alias Maximum works; one more is 0x94."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "max/#", qos=0)
    client, connack = await connected(hub, raw, service, "aliaser")
    maximum = connack.properties["topic_alias_maximum"]
    client.send(Publish("max/t", b"1", properties={"topic_alias": maximum}))
    client.send(Publish("", b"2", properties={"topic_alias": maximum}))
    assert [(await sub.read_type(Publish)).topic for _ in range(2)] == ["max/t", "max/t"]
    client.send(Publish("max/u", b"3", properties={"topic_alias": maximum + 1}))
    await disconnected_with(client, reasons.TOPIC_ALIAS_INVALID)


async def test_a_response_topic_with_wildcards_is_refused_MQTT_3_3_2_14(hub, raw, service):
    """[MQTT-3.3.2-14] [MQTT-3.3.2-13]"""
    client, _ = await connected(hub, raw, service)
    client.send(Publish("rt/x", b"x", properties={"response_topic": "answers/#"}))
    packet = await client.read_type(codec.Disconnect)
    assert packet.reason_code in (reasons.PROTOCOL_ERROR, reasons.MALFORMED_PACKET, reasons.TOPIC_NAME_INVALID)
    assert await client.closed()


async def test_each_qos_gets_its_acknowledgement_MQTT_3_3_4_1(hub, raw, service):
    """[MQTT-3.3.4-1]: none for QoS 0, PUBACK for 1, PUBREC for 2."""
    client, _ = await connected(hub, raw, service)
    client.send(Publish("q/0", b"0"))
    client.send(Publish("q/1", b"1", qos=1, packet_id=1))
    client.send(Publish("q/2", b"2", qos=2, packet_id=2))
    assert isinstance(await client.read(), codec.Puback)
    assert isinstance(await client.read(), codec.Pubrec)


async def test_overlapping_subscriptions_one_copy_max_qos_every_identifier_MQTT_3_3_4_2(hub, raw, service):
    """[MQTT-3.3.4-2] [MQTT-3.3.4-3] [MQTT-3.3.4-4] [MQTT-3.8.4-8]"""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "ov/#", qos=0, properties={"subscription_identifier": [7]}, packet_id=1)
    await subscribed(client, "ov/+", qos=1, properties={"subscription_identifier": [8]}, packet_id=2)
    await hub.engine.publish("ov/x", b"x", qos=2)
    delivered = await client.read_type(Publish)
    assert delivered.qos == 1  # the higher granted QoS, below the published 2
    assert sorted(delivered.properties["subscription_identifier"]) == [7, 8]
    await nothing_arrives(client)


@pytest.mark.parametrize("hub_settings_override", [{"MAX_AWAITING_REL": 5000}], indirect=True)
async def test_more_unacknowledged_publishes_than_receive_maximum_MQTT_3_3_4_7(hub, raw, service):
    """[MQTT-3.3.4-7] [MQTT-4.9.0-2] (the server's side): a client over the hub's Receive Maximum is
    disconnected with 0x93. QoS 2 PUBLISHes stay unacknowledged until their PUBREL (with MAX_AWAITING_REL
    below Receive Maximum, the hub refuses the ones above it with PUBREC 0x97 first)."""
    client, connack = await connected(hub, raw, service)
    maximum = connack.properties["receive_maximum"]
    client.send(b"".join(codec.encode(Publish("rm/x", b"", qos=2, packet_id=n)) for n in range(1, maximum + 2)))
    await disconnected_with(client, reasons.RECEIVE_MAXIMUM_EXCEEDED)


async def test_the_server_respects_the_clients_receive_maximum_MQTT_3_3_4_9(hub, raw, service):
    """[MQTT-3.3.4-9] [MQTT-3.3.4-10] [MQTT-4.9.0-1] [MQTT-4.9.0-3]: two unacknowledged deliveries at a
    time, and a PINGREQ is still answered meanwhile."""
    client, _ = await connected(hub, raw, service, properties={"receive_maximum": 2})
    await subscribed(client, "flow/#")
    for n in range(4):
        await hub.engine.publish(f"flow/{n}", b"x", qos=1)
    first, second = await client.read_type(Publish), await client.read_type(Publish)
    client.send(b"\xc0\x00")
    assert isinstance(await client.read(), codec.Pingresp)  # not a third PUBLISH
    client.send(codec.Puback(first.packet_id))
    third = await client.read_type(Publish)
    assert [p.topic for p in (first, second, third)] == ["flow/0", "flow/1", "flow/2"]


# --- 3.4 - 3.7 the acknowledgements -------------------------------------------------------------------


async def test_puback_reason_codes_say_why_MQTT_3_4_2_1(hub, raw):
    """[MQTT-3.4.2-1] 0x00 stored, 0x87 not authorized, 0x99 payload format invalid."""
    client, _ = await device_connected(hub, raw, "pa-1")
    client.send(Publish("things/thermometer/pa-1/data", b'{"temperature": 1}', qos=1, packet_id=1))
    client.send(Publish("things/thermometer/pa-2/data", b"{}", qos=1, packet_id=2))
    client.send(
        Publish("things/thermometer/pa-1/data", b"\xff", qos=1, packet_id=3, properties={"payload_format_indicator": 1})
    )
    codes = [(await client.read_type(codec.Puback)).reason_code for _ in range(3)]
    assert codes == [reasons.SUCCESS, reasons.NOT_AUTHORIZED, reasons.PAYLOAD_FORMAT_INVALID]


async def test_pubrec_reason_codes_MQTT_3_5_2_1(hub, raw):
    """[MQTT-3.5.2-1] [MQTT-4.3.3-9]: 0x87, and after a failure PUBREC the same identifier is new."""
    client, _ = await device_connected(hub, raw, "pr-1")
    client.send(Publish("things/thermometer/pr-2/data", b"{}", qos=2, packet_id=5))
    assert (await client.read_type(codec.Pubrec)).reason_code == reasons.NOT_AUTHORIZED
    client.send(Publish("things/thermometer/pr-1/data", b'{"uptime": 1}', qos=2, packet_id=5))
    assert (await client.read_type(codec.Pubrec)).reason_code == reasons.SUCCESS


async def test_the_server_sends_pubrel_after_pubrec_and_never_the_publish_again_MQTT_4_3_3_4(hub, raw, service):
    """[MQTT-4.3.3-4] [MQTT-4.3.3-5] [MQTT-4.3.3-6] [MQTT-3.6.2-1] [MQTT-4.3.3-1] [MQTT-4.3.3-2]"""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "two/#", qos=2)
    await hub.engine.publish("two/x", b"x", qos=2)
    publish = await client.read_type(Publish)
    assert (publish.qos, publish.dup) == (2, False) and publish.packet_id
    client.send(codec.Pubrec(publish.packet_id))
    pubrel = await client.read()
    assert isinstance(pubrel, codec.Pubrel) and (pubrel.packet_id, pubrel.reason_code) == (publish.packet_id, 0)
    client.send(codec.Pubcomp(publish.packet_id))
    await nothing_arrives(client)


async def test_a_pubrel_for_an_unknown_identifier_gets_pubcomp_0x92_MQTT_3_7_2_1(hub, raw, service):
    """[MQTT-3.7.2-1] [MQTT-4.3.3-11]"""
    client, _ = await connected(hub, raw, service)
    client.send(codec.Pubrel(77))
    pubcomp = await client.read_type(codec.Pubcomp)
    assert (pubcomp.packet_id, pubcomp.reason_code) == (77, reasons.PACKET_IDENTIFIER_NOT_FOUND)


# --- 3.8 - 3.11 SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK ---------------------------------------------


async def test_no_local_MQTT_3_8_3_3(hub, raw, service):
    """[MQTT-3.8.3-3] A No Local subscriber does not get its own messages; others do."""
    me, _ = await connected(hub, raw, service, "me")
    other, _ = await connected(hub, raw, service, "other")
    await subscribed(me, "nl/#", no_local=True)
    await subscribed(other, "nl/#")
    me.send(Publish("nl/x", b"mine", qos=1, packet_id=1))
    assert isinstance(await me.read(), codec.Puback)
    assert (await other.read_type(Publish)).payload == b"mine"
    await nothing_arrives(me)


async def test_a_subscribe_is_answered_per_filter_in_order_MQTT_3_8_4_1(hub, raw, service):
    """[MQTT-3.8.4-1] [MQTT-3.8.4-5] [MQTT-3.8.4-6] [MQTT-3.8.4-7] [MQTT-3.9.3-1] [MQTT-3.9.3-2]
    [MQTT-4.7.1-1] [MQTT-4.7.1-2]: granted QoS, or 0x8F for an invalid filter, in the filters' order."""
    client, _ = await connected(hub, raw, service)
    client.send(
        codec.Subscribe(
            1,
            [
                Subscription("ok/#", 2),
                Subscription("bad/#/x", 1),
                Subscription("bad/a+", 1),
                Subscription("ok/+/y", 0),
                Subscription("#", 1),
            ],
        )
    )
    suback = await client.read_type(codec.Suback)
    assert suback.reason_codes == [2, reasons.TOPIC_FILTER_INVALID, reasons.TOPIC_FILTER_INVALID, 0, 1]


async def test_subscribing_again_replaces_the_subscription_MQTT_3_8_4_3(hub, raw, service):
    """[MQTT-3.8.4-3]: the new QoS applies, and one copy arrives."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "re/#", qos=2, packet_id=1)
    await subscribed(client, "re/#", qos=0, packet_id=2)
    await hub.engine.publish("re/x", b"x", qos=2)
    assert (await client.read_type(Publish)).qos == 0
    await nothing_arrives(client)


async def test_a_subscription_the_acl_refuses_gets_0x87_MQTT_3_9_3_2(hub, raw):
    """[MQTT-3.9.3-2] A device may subscribe only to its own cmd topic."""
    client, _ = await device_connected(hub, raw, "sa-1")
    codes = await subscribed(client, "things/thermometer/sa-1/cmd", "things/#")
    assert codes == [1, reasons.NOT_AUTHORIZED]


async def test_unsubscribe_matches_filters_exactly_and_answers_each_MQTT_3_10_4_1(hub, raw, service):
    """[MQTT-3.10.4-1] [MQTT-3.10.4-2] [MQTT-3.10.4-4] [MQTT-3.10.4-5] [MQTT-3.10.4-6] [MQTT-3.11.3-1]
    [MQTT-3.11.3-2]: "u/+" does not remove "u/a"; 0x11 for a filter never subscribed."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "u/a", "u/+")
    client.send(codec.Unsubscribe(2, ["u/+", "u/none"]))
    unsuback = await client.read_type(codec.Unsuback)
    assert (unsuback.packet_id, unsuback.reason_codes) == (2, [reasons.SUCCESS, reasons.NO_SUBSCRIPTION_EXISTED])
    await hub.engine.publish("u/a", b"x", qos=1)
    await hub.engine.publish("u/b", b"y", qos=1)
    assert (await client.read_type(Publish)).topic == "u/a"
    await nothing_arrives(client)


# --- 3.12 - 3.15 PINGREQ, DISCONNECT, AUTH --------------------------------------------------------------


async def test_pingreq_gets_pingresp_MQTT_3_12_4_1(hub, raw, service):
    """[MQTT-3.12.4-1]"""
    client, _ = await connected(hub, raw, service)
    client.send(b"\xc0\x00")
    assert isinstance(await client.read(), codec.Pingresp)


async def test_the_servers_disconnect_has_no_session_expiry_and_nothing_follows_it_MQTT_3_14_2_2(hub, raw, service):
    """[MQTT-3.14.2-1] [MQTT-3.14.2-2] [MQTT-3.14.4-1] [MQTT-3.14.4-2] [MQTT-4.13.1-1] [MQTT-4.13.2-1]"""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "after/#", qos=0)
    client.send(Publish("a/#", b"x"))  # a protocol violation
    disconnect = await client.read()
    assert isinstance(disconnect, codec.Disconnect) and disconnect.reason_code == reasons.TOPIC_NAME_INVALID
    assert "session_expiry_interval" not in disconnect.properties
    await hub.engine.publish("after/x", b"x", qos=0)
    assert await client.read() is None  # closed: nothing after the DISCONNECT


async def test_a_session_expiry_set_on_disconnect_after_0_is_a_protocol_error(hub, raw, service):
    """Section 3.14.2.2.2: a non-zero Session Expiry Interval in DISCONNECT after 0 in CONNECT."""
    client, _ = await connected(hub, raw, service)
    client.send(codec.Disconnect(reasons.SUCCESS, {"session_expiry_interval": 60}))
    await disconnected_with(client, reasons.PROTOCOL_ERROR)


async def test_an_authentication_method_is_refused_with_0x8c_MQTT_4_12_0_1(hub, raw, service):
    """[MQTT-4.12.0-1] [MQTT-4.12.0-6]: no method is supported; without one, CONNACK names none."""
    client = raw(hub.engine.port)
    connack = await client.connect("c1", *service, properties={"authentication_method": "SCRAM-SHA-1"})
    assert connack.reason_code == reasons.BAD_AUTHENTICATION_METHOD
    assert await client.closed()
    _, connack = await connected(hub, raw, service, "c2")
    assert "authentication_method" not in connack.properties


# --- 4 operational behaviour ----------------------------------------------------------------------------


@pytest.mark.slow  # waits out a 1 s Session Expiry
async def test_a_session_is_discarded_once_its_expiry_interval_passed_MQTT_4_1_0_2(hub, raw, service):
    """[MQTT-4.1.0-2] [MQTT-4.1.0-1]"""
    client, _ = await connected(hub, raw, service, "exp", properties={"session_expiry_interval": 1})
    await subscribed(client, "e/#")
    client.send(codec.Disconnect())
    assert await client.closed()
    await until(lambda: "exp" not in hub.engine.broker._sessions, timeout=5, message="the session to expire")
    _, connack = await connected(hub, raw, service, "exp", clean_start=False)
    assert connack.session_present is False


async def test_an_identifier_reused_after_puback_is_a_new_message_MQTT_4_3_2_5(hub, raw):
    """[MQTT-4.3.2-5]: both stored."""
    client, _ = await device_connected(hub, raw, "re-1")
    for n in (1, 2):
        client.send(Publish("things/thermometer/re-1/data", b'{"uptime": %d}' % n, qos=1, packet_id=1, dup=n == 2))
        assert (await client.read_type(codec.Puback)).reason_code == reasons.SUCCESS
    count = ThermometerMessage.objects.filter(device__device_id="re-1").acount
    assert await count() == 2


async def test_qos2_is_delivered_once_however_often_the_publish_is_repeated_MQTT_4_3_3_10(hub, raw, service):
    """[MQTT-4.3.3-10] [MQTT-4.3.3-11] [MQTT-4.3.3-12]: before PUBREL a repeat gets PUBREC and is not
    delivered again; after PUBCOMP the identifier is a new message."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "once/#", qos=2)
    pub, _ = await connected(hub, raw, service, "pub")
    for dup in (False, True):
        pub.send(Publish("once/x", b"1", qos=2, packet_id=3, dup=dup))
        assert (await pub.read_type(codec.Pubrec)).packet_id == 3
    pub.send(codec.Pubrel(3))
    assert (await pub.read_type(codec.Pubcomp)).packet_id == 3
    pub.send(Publish("once/x", b"2", qos=2, packet_id=3))
    await pub.read_type(codec.Pubrec)
    pub.send(codec.Pubrel(3))
    deliveries = [await sub.read_type(Publish) for _ in range(2)]
    assert [delivered.payload for delivered in deliveries] == [b"1", b"2"]
    for delivered in deliveries:
        sub.send(codec.Pubrec(delivered.packet_id))
        assert (await sub.read_type(codec.Pubrel)).packet_id == delivered.packet_id
        sub.send(codec.Pubcomp(delivered.packet_id))
    await nothing_arrives(sub)


async def test_a_failure_puback_is_not_retransmitted_MQTT_4_4_0_2(hub, raw, service):
    """[MQTT-4.4.0-2]"""
    first, publish = await persistent_with_one_delivery(hub, raw, service, "nack")
    first.send(codec.Puback(publish.packet_id, reasons.UNSPECIFIED_ERROR))
    await asyncio.sleep(0.1)
    first.close()
    second, _ = await connected(hub, raw, service, "nack", clean_start=False, properties=PERSISTENT)
    await nothing_arrives(second)


async def test_messages_are_forwarded_in_the_order_they_were_received_MQTT_4_6_0_5(hub, raw, service):
    """[MQTT-4.6.0-5] [MQTT-4.6.0-6] and PUBACKs go out in the order of the PUBLISHes [MQTT-4.6.0-2]."""
    sub, _ = await connected(hub, raw, service, "sub")
    await subscribed(sub, "order/#")
    pub, _ = await connected(hub, raw, service, "pub")
    pub.send(b"".join(codec.encode(Publish("order/x", b"%d" % n, qos=1, packet_id=n)) for n in range(1, 21)))
    assert [(await pub.read_type(codec.Puback)).packet_id for _ in range(20)] == list(range(1, 21))
    received = []
    for _ in range(20):
        delivered = await sub.read_type(Publish)
        received.append(int(delivered.payload))
        sub.send(codec.Puback(delivered.packet_id))
    assert received == list(range(1, 21))


async def test_wildcards_at_the_first_level_do_not_match_dollar_topics_MQTT_4_7_2_1(hub, raw, service):
    """[MQTT-4.7.2-1]"""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "#", "+/status", qos=0, packet_id=1)
    await subscribed(client, "$SYS/#", qos=0, packet_id=2)
    await hub.engine.publish("$SYS/status", b"x", qos=0)
    delivered = await client.read_type(Publish)
    assert delivered.topic == "$SYS/status"
    await nothing_arrives(client)  # one copy, through "$SYS/#" only


@pytest.mark.parametrize("topic_filter", ["", "a/\u0000"])
async def test_empty_filters_and_nul_are_refused_MQTT_4_7_3_1(hub, raw, service, topic_filter):
    """[MQTT-4.7.3-1] [MQTT-4.7.3-2]"""
    client, _ = await connected(hub, raw, service)
    encoded = topic_filter.encode()
    body = b"\x00\x01\x00" + len(encoded).to_bytes(2, "big") + encoded + b"\x01"
    client.send(bytes((0x82, len(body))) + body)
    packet = await client.read()
    if isinstance(packet, codec.Suback):
        assert packet.reason_codes == [reasons.TOPIC_FILTER_INVALID]
    else:
        assert isinstance(packet, codec.Disconnect) and packet.reason_code >= 0x80


async def test_topics_are_not_normalised_MQTT_4_7_3_4(hub, raw, service):
    """[MQTT-4.7.3-4] Case and composed/decomposed characters are different topics."""
    client, _ = await connected(hub, raw, service)
    await subscribed(client, "Case/x", "caf\u00e9", qos=0)
    for topic in ("case/x", "cafe\u0301", "Case/x"):
        await hub.engine.publish(topic, b"x", qos=0)
    assert (await client.read_type(Publish)).topic == "Case/x"
    await nothing_arrives(client)


@pytest.mark.parametrize("topic_filter", ["$share//a", "$share/g+/a", "$share/g#/a", "$share/g", "$share/g/"])
async def test_invalid_shared_subscriptions_are_refused_MQTT_4_8_2_1(hub, raw, service, topic_filter):
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2]"""
    client, _ = await connected(hub, raw, service)
    assert await subscribed(client, topic_filter) == [reasons.TOPIC_FILTER_INVALID]


async def test_a_shared_subscription_delivers_each_message_once_at_the_granted_qos_MQTT_4_8_2_3(hub, raw, service):
    """[MQTT-4.8.2-3] Section 4.8.2: one member per message, at the member's granted QoS."""
    members = []
    for n, qos in ((1, 0), (2, 1)):
        member, _ = await connected(hub, raw, service, f"m{n}")
        assert await subscribed(member, "$share/grp/sh/#", qos=qos) == [qos]
        members.append(member)
    for n in range(4):
        await hub.engine.publish(f"sh/{n}", b"x", qos=1)
    got = {0: [], 1: []}
    for index, member in enumerate(members):
        for _ in range(2):
            delivered = await member.read_type(Publish)
            got[index].append((delivered.topic, delivered.qos))
            if delivered.qos:
                member.send(codec.Puback(delivered.packet_id))
    assert sorted(t for pairs in got.values() for t, _ in pairs) == [f"sh/{n}" for n in range(4)]
    assert {q for _, q in got[0]} == {0} and {q for _, q in got[1]} == {1}


async def test_a_shared_message_refused_by_its_member_goes_to_no_one_else_MQTT_4_8_2_6(hub, raw, service):
    """[MQTT-4.8.2-6]"""
    first, _ = await connected(hub, raw, service, "m1")
    await subscribed(first, "$share/g/one/#")
    await hub.engine.publish("one/x", b"x", qos=1)
    publish = await first.read_type(Publish)
    second, _ = await connected(hub, raw, service, "m2")
    await subscribed(second, "$share/g/one/#")
    first.send(codec.Puback(publish.packet_id, reasons.UNSPECIFIED_ERROR))
    await nothing_arrives(second)
    await nothing_arrives(first)


async def test_request_response_round_trip_section_4_10(hub, raw, service):
    """Section 4.10: a requester's Response Topic and Correlation Data reach the responder, whose reply
    on that topic reaches the requester with the same Correlation Data."""
    requester, _ = await connected(hub, raw, service, "requester")
    await subscribed(requester, "replies/requester")
    responder, _ = await connected(hub, raw, service, "responder")
    await subscribed(responder, "requests/#")
    requester.send(
        Publish(
            "requests/time",
            b"?",
            qos=1,
            packet_id=1,
            properties={"response_topic": "replies/requester", "correlation_data": b"42"},
        )
    )
    request = await responder.read_type(Publish)
    responder.send(codec.Puback(request.packet_id))
    responder.send(
        Publish(
            request.properties["response_topic"],
            b"noon",
            qos=1,
            packet_id=1,
            properties={"correlation_data": request.properties["correlation_data"]},
        )
    )
    reply = await requester.read_type(Publish)
    assert (reply.payload, reply.properties["correlation_data"]) == (b"noon", b"42")
