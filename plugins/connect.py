"""The first packet of a connection: read it within the connect timeout and the CONNECT size limit, and
decide whether the hub speaks its protocol, before amqtt decodes it.

Upstream (``BrokerProtocolHandler.init_from_connect``) decodes the CONNECT field by field straight from the
socket: it waits forever for a first packet, reads whatever the length prefixes of its fields say (five
64 KB fields), and parses anything as a CONNECT: a PUBLISH or an MQTT 5 CONNECT as a first packet left the
client waiting with no answer. Here the whole packet is read first (its fixed header says how long it is),
then handed to amqtt's decoder from memory.
"""

from amqtt.errors import NoDataError

from hubserver.routing.throttle import clip

CONNECT_HEADER = 0x10  # packet type 1, flags 0 [MQTT-2.2.2-2]
UNSUPPORTED_PROTOCOL_VERSION = 0x01  # CONNACK return code [MQTT-3.1.2-2]

# The protocol levels the hub speaks, by protocol name: MQTT 3.1.1 (amqtt's packets, the hub's reader) and
# MQTT 5 (plugins/mqtt5). This is the one place that decides which clients are spoken to.
PROTOCOLS = {"MQTT": frozenset({4, 5})}
# Names of protocols the hub knows of but does not speak: answered with CONNACK 0x01 rather than dropped.
KNOWN_NAMES = frozenset({"MQTT", "MQIsdp"})


class ConnectRefused(Exception):
    """The first packet is not a CONNECT the hub accepts. ``reason`` is the metrics label; ``connack`` the
    return code to answer with before closing (None: close without an answer)."""

    def __init__(self, reason, detail, connack=None):
        super().__init__(detail)
        self.reason = reason
        self.connack = connack


async def read_connect(reader, max_size):
    """The first packet's bytes (fixed header included), once it is a CONNECT of at most ``max_size`` bytes
    of a protocol the hub speaks. Raises ConnectRefused, or NoDataError if the client goes away."""
    first = await reader.read(1)
    if not first:
        raise NoDataError("no data before the CONNECT")
    if first[0] != CONNECT_HEADER:
        raise ConnectRefused(
            "not_connect", f"first packet is of type {first[0] >> 4} (flags {first[0] & 0x0F}), not a CONNECT"
        )  # [MQTT-3.1.0-1]
    length, shift, encoded = 0, 0, bytearray()
    while True:
        byte = await reader.read(1)
        if not byte:
            raise NoDataError("end of stream inside the CONNECT's fixed header")
        encoded += byte
        length |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            break
        shift += 7
        if shift > 21:
            raise ConnectRefused("malformed_connect", "invalid remaining length")
    if length > max_size:
        raise ConnectRefused("connect_too_large", f"a CONNECT of {length} bytes (MAX_CONNECT_SIZE is {max_size})")
    body = await reader.read(length) if length else b""
    check_protocol(body)
    return bytes((CONNECT_HEADER, *encoded)) + body


def check_protocol(body):
    """Raise ConnectRefused unless the CONNECT names a protocol and level the hub speaks."""
    if len(body) < 2:
        raise ConnectRefused("malformed_connect", "a CONNECT without a protocol name")
    end = 2 + int.from_bytes(body[:2], "big")
    if len(body) < end + 1:
        raise ConnectRefused("malformed_connect", "a CONNECT cut short in its protocol name")
    try:
        name = body[2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ConnectRefused("malformed_connect", "a protocol name that is not UTF-8") from None
    level = body[end]
    if level in PROTOCOLS.get(name, ()):
        return
    if name in KNOWN_NAMES:  # a version of MQTT the hub does not speak
        raise ConnectRefused(
            "unsupported_protocol", f"protocol {name} level {level} is not spoken here", UNSUPPORTED_PROTOCOL_VERSION
        )
    raise ConnectRefused("malformed_connect", f"unknown protocol name {clip(name)}")  # [MQTT-3.1.2-1]


def connect_body(packet):
    """The CONNECT's bytes after its fixed header."""
    index = 1
    while packet[index] & 0x80:
        index += 1
    return packet[index + 1 :]


def protocol_level(packet):
    """The protocol level of a CONNECT that ``read_connect`` accepted."""
    body = connect_body(packet)
    return body[2 + int.from_bytes(body[:2], "big")]


def empty_client_id(packet):
    """Whether an MQTT 3.1.1 CONNECT (as returned by ``read_connect``) carries a zero-length client id."""
    body = connect_body(packet)
    start = 2 + int.from_bytes(body[:2], "big") + 4  # protocol name, level, flags, keepalive
    return body[start : start + 2] == b"\x00\x00"
