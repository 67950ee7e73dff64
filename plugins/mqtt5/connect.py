"""The first packet of a connection picks its protocol: this module reads it whole, tells its protocol
level, and turns an MQTT 5 CONNECT into the hub's session and ``MQTT5Handler``.

Every other level goes to amqtt's 3.1.1 path, which reads the same bytes (``BufferReader``).
"""

import asyncio
import logging

from amqtt.errors import MQTTError, NoDataError
from amqtt.utils import gen_client_id

from ..session import HubSession
from . import codec, reasons
from .handler import MQTT5Handler, RawPacket
from .session import V5State

logger = logging.getLogger("hubserver.mqtt")

CONNECT_FIRST_BYTE = 0x10


async def read_first_packet(reader, limit=0):
    """``(whole packet bytes, first byte, body)`` of the connection's first packet. Raises NoDataError at
    end of stream, MQTTError on a Remaining Length that is invalid or above ``limit`` (if not 0)."""
    try:
        head = await reader.read(2)
        if len(head) < 2:
            raise NoDataError("the connection closed before its first packet")
        header = bytearray(head)
        length, shift, byte = head[1] & 0x7F, 7, head[1]
        while byte & 0x80:
            if shift > 21:
                raise MQTTError("invalid Remaining Length in the first packet")
            byte = (await reader.read(1))[0]
            header.append(byte)
            length |= (byte & 0x7F) << shift
            shift += 7
        if limit and length > limit:
            raise MQTTError(f"a first packet of {length} bytes exceeds the limit of {limit}")
        body = await reader.read(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError, IndexError) as exc:
        raise NoDataError(f"the connection closed inside its first packet: {exc!r}") from None
    if len(body) < length:
        raise NoDataError("the connection closed inside its first packet")
    return bytes(header) + body, head[0], body


def protocol_level(first_byte, body):
    """The protocol level of a CONNECT (None for anything else, or too short to tell)."""
    if first_byte != CONNECT_FIRST_BYTE or len(body) < 3:
        return None
    at = 2 + ((body[0] << 8) | body[1])
    return body[at] if at < len(body) else None


async def accept(first_byte, body, writer, plugins_manager):
    """``(MQTT5Handler, HubSession)`` for an MQTT 5 CONNECT. A CONNECT that breaks the protocol gets a
    CONNACK with the reason code [MQTT-3.2.2-8] and the connection is closed (MQTTError raised)."""
    try:
        connect = codec.decode(first_byte, body)
    except reasons.ProtocolError as exc:
        await refuse(writer, exc.code, str(exc))
        raise MQTTError(f"CONNECT refused: {exc}") from None
    if "authentication_method" in connect.properties:
        # No enhanced authentication method is supported [MQTT-4.12.0-?]: say so rather than guess.
        await refuse(writer, reasons.BAD_AUTHENTICATION_METHOD, "no authentication method is supported")
        raise MQTTError(f"CONNECT refused: authentication method {connect.properties['authentication_method']!r}")
    session = HubSession()
    handler = MQTT5Handler(plugins_manager)
    session.client_id = connect.client_id
    if not session.client_id:
        # [MQTT-3.1.3-6] [MQTT-3.1.3-7]: a zero-length client id gets one, returned in CONNACK.
        session.client_id = handler.assigned_client_id = gen_client_id()
    session.clean_session = connect.clean_start
    will = connect.will
    session.will_flag = will is not None
    if will is not None:
        session.will_topic = will.topic
        session.will_message = will.payload
        session.will_qos = will.qos
        session.will_retain = will.retain
    session.username = connect.username
    session.password = connect.password.decode("utf-8", "replace") if connect.password is not None else None
    peer = writer.get_peer_info() or (None, None)
    session.remote_address, session.remote_port = peer
    session.ssl_object = writer.get_ssl_info()
    session.keep_alive = connect.keep_alive
    session.v5 = V5State(connect.properties, will.properties if will is not None else None)
    return handler, session


async def refuse(writer, code, reason=""):
    """CONNACK with a failure reason code, then close [MQTT-3.2.2-7]."""
    properties = {"reason_string": reason[:200]} if reason else {}
    try:
        await RawPacket(codec.encode(codec.Connack(code, False, properties))).to_stream(writer)
    finally:
        await writer.close()
