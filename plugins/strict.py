"""MQTT 3.1.1 rules the reader enforces before a packet goes anywhere: a packet that breaks one closes its
connection ([MQTT-4.8.0-1]: a protocol violation closes the network connection). Each check names its rule.

Upstream (amqtt 0.12.1) acknowledged or ignored several of these: a PUBLISH with QoS 3 or a wildcard topic,
a SUBSCRIBE with no topics or reserved flags, a packet id of 0, a client-sent CONNACK/SUBACK/UNSUBACK/
PINGRESP; a SUBSCRIBE asking for QoS 3 got return code 3.
"""

from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
)


class ProtocolViolation(Exception):
    """``rule`` is the MQTT 3.1.1 conformance statement the packet breaks."""

    def __init__(self, rule, detail):
        super().__init__(f"[{rule}] {detail}")
        self.rule = rule


# Fixed-header flags every packet type but PUBLISH must carry [MQTT-2.2.2-1], [MQTT-2.2.2-2].
_FLAGS = {PUBREL: 0x02, SUBSCRIBE: 0x02, UNSUBSCRIBE: 0x02}
# Packets only a server sends, and the reserved types: a client sending one breaks the protocol.
_SERVER_ONLY = {CONNACK: "CONNACK", SUBACK: "SUBACK", UNSUBACK: "UNSUBACK", PINGRESP: "PINGRESP"}
_RESERVED = (RESERVED_0, RESERVED_15)
# Remaining lengths fixed by the packet's type [MQTT-3.4.1], [MQTT-3.12.1], [MQTT-3.14.1] (4.8: malformed).
FIXED_LENGTHS = {PUBACK: 2, PUBREC: 2, PUBREL: 2, PUBCOMP: 2, 12: 0, 14: 0}


def check_header(packet_type, flags, length):
    """Rules of the fixed header of any packet but a PUBLISH."""
    if packet_type in _RESERVED:
        raise ProtocolViolation("MQTT-4.8.0-1", f"reserved packet type {packet_type}")
    if packet_type in _SERVER_ONLY:
        raise ProtocolViolation("MQTT-4.8.0-1", f"{_SERVER_ONLY[packet_type]} is sent only by a server")
    if packet_type == CONNECT:
        raise ProtocolViolation("MQTT-3.1.0-2", "a second CONNECT")
    if flags != _FLAGS.get(packet_type, 0):
        raise ProtocolViolation("MQTT-2.2.2-2", f"invalid flags {flags:#x} for packet type {packet_type}")
    expected = FIXED_LENGTHS.get(packet_type)
    if expected is not None and length != expected:
        raise ProtocolViolation("MQTT-4.8.0-1", f"packet type {packet_type} of {length} bytes")


def topic_name(raw):
    """A PUBLISH's topic name, decoded, or ProtocolViolation."""
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolViolation("MQTT-1.5.3-1", "topic name is not well-formed UTF-8") from None
    if not topic:
        raise ProtocolViolation("MQTT-4.7.3-1", "empty topic name")
    check_topic(topic)
    return topic


def check_topic(topic):
    """Rules of a PUBLISH's (decoded) topic name."""
    if "+" in topic or "#" in topic:
        raise ProtocolViolation("MQTT-3.3.2-2", "wildcard in a PUBLISH topic name")
    if "\0" in topic:
        raise ProtocolViolation("MQTT-4.7.3-2", "NUL character in a topic name")


def parse_publish(flags, body):
    """(qos, topic, packet id or None, payload offset) of a PUBLISH, or ProtocolViolation."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolViolation("MQTT-3.3.1-4", "PUBLISH with QoS 3")
    if len(body) < 2:
        raise ProtocolViolation("MQTT-4.8.0-1", "PUBLISH without a topic name")
    end = 2 + ((body[0] << 8) | body[1])
    if len(body) < end + (2 if qos else 0):
        raise ProtocolViolation("MQTT-4.8.0-1", "PUBLISH shorter than its topic name and packet id")
    topic = topic_name(body[2:end])
    packet_id = None
    if qos:
        packet_id = (body[end] << 8) | body[end + 1]
        if not packet_id:
            raise ProtocolViolation("MQTT-2.3.1-1", "PUBLISH with packet id 0")
        end += 2
    return qos, topic, packet_id, end


def check_subscription(packet_type, body):
    """Rules of a SUBSCRIBE or UNSUBSCRIBE body: a packet id other than 0, at least one topic filter, each
    well-formed UTF-8 without NUL, and (SUBSCRIBE) a requested QoS of 0, 1 or 2 with no reserved bits."""
    name = "SUBSCRIBE" if packet_type == SUBSCRIBE else "UNSUBSCRIBE"
    if len(body) < 2 or not (body[0] or body[1]):
        raise ProtocolViolation("MQTT-2.3.1-1", f"{name} with packet id 0")
    index, count = 2, 0
    while index < len(body):
        if index + 2 > len(body):
            raise ProtocolViolation("MQTT-4.8.0-1", f"{name} cut short")
        end = index + 2 + ((body[index] << 8) | body[index + 1])
        if end > len(body):
            raise ProtocolViolation("MQTT-4.8.0-1", f"{name} cut short in a topic filter")
        try:
            topic_filter = body[index + 2 : end].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("MQTT-1.5.3-1", "topic filter is not well-formed UTF-8") from None
        if not topic_filter:
            raise ProtocolViolation("MQTT-4.7.3-1", "empty topic filter")
        if "\0" in topic_filter:
            raise ProtocolViolation("MQTT-4.7.3-2", "NUL character in a topic filter")
        index = end
        if packet_type == SUBSCRIBE:
            if index >= len(body):
                raise ProtocolViolation("MQTT-4.8.0-1", "SUBSCRIBE without the requested QoS of a filter")
            if body[index] > 2:  # QoS 3, or a reserved bit set
                raise ProtocolViolation("MQTT-3-8.3-4", f"SUBSCRIBE options byte {body[index]:#x}")
            index += 1
        count += 1
    if not count:
        rule = "MQTT-3.8.3-3" if packet_type == SUBSCRIBE else "MQTT-3.10.3-2"
        raise ProtocolViolation(rule, f"{name} without any topic filter")
