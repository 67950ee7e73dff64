"""An MQTT 5 CONNECT into the hub's session and ``MQTT5Handler``.

plugins/connect.py reads the first packet whole and decides its protocol; level 5 comes here, 3.1.1 goes to
amqtt's path, which reads the same bytes (``BufferReader``).
"""

import logging

from amqtt.errors import MQTTError
from amqtt.utils import gen_client_id

from ..session import HubSession
from . import codec, reasons
from .handler import MQTT5Handler, RawPacket
from .session import V5State

logger = logging.getLogger("hubserver.mqtt")


async def accept(first_byte, body, writer, plugins_manager):
    """``(MQTT5Handler, HubSession)`` for an MQTT 5 CONNECT. A CONNECT that breaks the protocol gets a
    CONNACK with the reason code [MQTT-3.2.2-8] and the connection is closed (MQTTError raised)."""
    try:
        connect = codec.decode(first_byte, body)
    except reasons.ProtocolError as exc:
        await refuse(writer, exc.code, str(exc))
        raise MQTTError(f"CONNECT refused: {exc}") from None
    if "authentication_method" in connect.properties:
        # No enhanced authentication method is supported [MQTT-4.12.0-1]: say so rather than guess.
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
