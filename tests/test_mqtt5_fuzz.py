"""Fuzzing MQTT 5 connections of the running hub (hypothesis): valid MQTT 5 packets with a few bytes of
their body or flags changed, each sent by an authenticated device on a connection of its own. What the
hub's codec refuses must be answered with a DISCONNECT carrying the reason code the codec gives (0x81
Malformed Packet, 0x82 Protocol Error, 0x90 Topic Name invalid...) and the connection closed; what it
accepts must never be called malformed; every packet the hub sends back decodes; a bystander on another
connection is served throughout.

The hub runs in a thread with its own event loop (as in ``test_mqtt_fuzz``), so hypothesis drives plain
blocking sockets. Bounded: a few hundred examples.
"""

import contextlib
import socket

import pytest
from hubserver.plugins.mqtt5 import codec, reasons
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.mqtt import _length
from tests.test_mqtt_fuzz import ThreadedHub, read_packets, recv_exactly

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DEVICE = "fuzz5-1"
TOPIC = f"things/thermometer/{DEVICE}/data"
COMMANDS = f"things/thermometer/{DEVICE}/cmd"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

VALID = [
    codec.Publish(TOPIC, b'{"temperature": 20.5}'),
    codec.Publish(TOPIC, b'{"temperature": 21.5}', qos=1, packet_id=1),  # no properties: the short path
    codec.Publish(
        TOPIC,
        b'{"temperature": 22.5}',
        qos=1,
        packet_id=2,
        properties={
            "content_type": "application/json",
            "correlation_data": b"c-1",
            "user_property": [("site", "north")],
            "payload_format_indicator": 1,
            "message_expiry_interval": 60,
        },
    ),
    codec.Publish(TOPIC, b'{"uptime": 3}', qos=2, packet_id=3, properties={"topic_alias": 1}),
    codec.Subscribe(4, [codec.Subscription(COMMANDS, qos=1)], {"subscription_identifier": [7]}),
    codec.Unsubscribe(5, [COMMANDS]),
    codec.Pubrel(3),
    codec.Puback(9),
    codec.Pingreq(),
]


@st.composite
def mutated(draw):
    """A valid packet's encoding with 1-3 bytes of its body replaced, or its flags changed, or its body cut
    short; the Remaining Length always says how long the body is, so each example is one packet."""
    first, body, _ = codec.split(codec.encode(draw(st.sampled_from(VALID))))
    body = bytearray(body)
    kind = draw(st.sampled_from(["bytes", "bytes", "flags", "cut"]))
    if kind == "flags":
        first = (first & 0xF0) | draw(st.integers(0, 15))
    elif kind == "cut" and body:
        del body[draw(st.integers(0, len(body) - 1)) :]
    elif body:
        for _ in range(draw(st.integers(1, 3))):
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    return first, bytes(body)


def connect5(port, credentials, client_id):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    username = credentials["mqtt_username"]
    sock.sendall(
        codec.encode(codec.Connect(client_id, True, 60, {}, None, username, credentials["mqtt_password"].encode()))
    )
    sock.settimeout(5)
    first = recv_exactly(sock, 2)
    connack = codec.decode(first[0], recv_exactly(sock, first[1]))
    assert isinstance(connack, codec.Connack) and connack.reason_code == reasons.SUCCESS, connack
    return sock


@pytest.fixture
def fuzzed_hub5(transactional_db):
    from hubserver import registry
    from hubserver.access.provisioning import provision

    model = registry.get_models("thermometer")[0]
    credentials = {}
    for device_id in (DEVICE, "bystander5-1"):
        device, _ = model.objects.get_or_create(device_id=device_id)
        credentials[device_id] = provision(device)
    with ThreadedHub() as hub:
        bystander = connect5(hub.port, credentials["bystander5-1"], credentials["bystander5-1"]["mqtt_username"])
        yield hub, credentials[DEVICE], bystander
        bystander.close()


def test_mutated_mqtt5_packets_are_refused_with_the_codecs_reason_code_and_close_only_their_connection(fuzzed_hub5):
    hub, credentials, bystander = fuzzed_hub5

    @FUZZ
    @given(mutated())
    def run(packet):
        first, body = packet
        try:
            codec.decode(first, body)
            refused = None
        except reasons.ProtocolError as exc:
            refused = exc.code
        sock = connect5(hub.port, credentials, credentials["mqtt_username"])
        with contextlib.suppress(ConnectionError):
            sock.sendall(bytes([first]) + _length(len(body)) + body)
        answers = [
            codec.decode(packet_type << 4 | _flags(packet_type), data) for packet_type, data in read_packets(sock, 0.3)
        ]
        sock.close()
        disconnects = [p.reason_code for p in answers if isinstance(p, codec.Disconnect)]
        if refused is not None:
            assert disconnects == [refused], (answers, refused)
        else:
            assert reasons.MALFORMED_PACKET not in disconnects, answers
        bystander.sendall(codec.encode(codec.Pingreq()))
        assert recv_exactly(bystander, 2) == bytes([0xD0, 0]), "the bystander is still served"
        assert hub.thread.is_alive()

    run()


def _flags(packet_type):
    return 2 if packet_type in (codec.PUBREL, codec.SUBSCRIBE, codec.UNSUBSCRIBE) else 0
