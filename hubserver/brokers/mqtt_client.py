"""The external engine's connection to a broker: an MQTT 5 client on the hub's event loop (gmqtt).

Why gmqtt: measured draining 50,000 queued QoS 1 messages from Debian's Mosquitto 2.0.11 on the 2-core
development machine, each acknowledged after a simulated commit, gmqtt took 24-26 us of CPU per message
(14,000 msg/s with Mosquitto's default 20 in flight, 40,000 with 1,000), paho-mqtt 2 driven from the
asyncio loop 40-44 us (6,500 / 12,800 msg/s) and paho-mqtt on its own thread 63-66 us (7,700 msg/s).
aiomqtt is paho underneath and cannot withhold an acknowledgement.

gmqtt is pinned: three of its methods are replaced here, each small.

- A QoS 1 PUBLISH goes straight to ``on_publish(topic, payload, qos, properties, mid)`` (plain function,
  no task): stock gmqtt acknowledges when an ``async`` message handler returns, one task per message, and
  cannot hold an acknowledgement back. The hub calls ``ack(mid)`` once the message is committed.
- A PUBACK resolves the future of the ``publish()`` that sent it, with its MQTT 5 reason code (stock
  gmqtt ignores the reason code and offers nothing to wait on).
- ``publish()`` returns the packet id it used (stock gmqtt returns nothing).

And a QoS 1 PUBLISH without properties is parsed by the hub itself, in a few slices (``_Handler``).
"""

import asyncio
import contextlib
import logging
import struct

import gmqtt
from gmqtt.mqtt.constants import MQTTCommands, MQTTv50
from gmqtt.mqtt.handler import MqttPackageHandler

from .connection import BrokerError, connect_error, where

logger = logging.getLogger("hubserver.brokers")
logging.getLogger("gmqtt").setLevel(logging.CRITICAL)  # it logs each reconnect attempt and refusal: we say why

# CONNACK / DISCONNECT reason codes worth a sentence (MQTT 5, 3.2.2.2 and 3.14.2.1).
REASONS = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9C: "use another server",
    0x9D: "server moved",
    0x10: "no matching subscribers",
}
NO_MATCHING_SUBSCRIBERS = 0x10
_PUBACK = bytes([MQTTCommands.PUBACK, 2])
# The properties ``on_publish`` gets hold the PUBLISH's "dup" and "retain" flags and, when it has any, its
# MQTT 5 properties by name, each as the list of its values: more than FLAGS keys means properties.
FLAGS = 2
SESSION_TAKEN_OVER = 0x8E


def reason_text(code):
    return REASONS.get(code, f"reason code 0x{code:02x}")


class _Handler(MqttPackageHandler):
    """gmqtt's packet handler with the hub's hooks (see the module docstring)."""

    hub_client = None

    def _handle_packet(self, cmd, packet):
        # A QoS 1 PUBLISH without properties (what a broker forwards of a device's plain message) is
        # read here in a few slices: 0.6 us a packet, against 3.5 us through gmqtt's general path (format
        # strings built per packet, a property parser, debug logging). Anything else takes gmqtt's path.
        if cmd & 0xF6 == 0x32 and len(packet) > 5:
            end = 2 + ((packet[0] << 8) | packet[1])  # after the topic
            if end > 2 and end + 3 <= len(packet) and packet[end + 2] == 0:  # a topic, a packet id, no properties
                try:
                    topic = packet[2:end].decode()
                except UnicodeDecodeError:
                    pass
                else:
                    mid = (packet[end] << 8) | packet[end + 1]
                    properties = {"dup": (cmd & 0x08) >> 3, "retain": cmd & 0x01}
                    self.hub_client._on_publish(topic, packet[end + 3 :], 1, properties, mid)
                    return
        super()._handle_packet(cmd, packet)

    def _handle_qos_1_publish_packet(self, mid, packet, print_topic, properties):
        self.hub_client._on_publish(print_topic, packet, 1, properties, mid)

    def _handle_puback_packet(self, cmd, packet):
        super()._handle_puback_packet(cmd, packet)
        (mid,) = struct.unpack("!H", packet[:2])
        self.hub_client._on_puback(mid, packet[2] if len(packet) > 2 else 0)

    def _handle_disconnect_packet(self, cmd, packet):
        self.hub_client._on_server_disconnect(packet[0] if packet else 0)
        super()._handle_disconnect_packet(cmd, packet)


class _Client(gmqtt.Client):
    def publish(self, message_or_topic, payload=None, qos=0, retain=False, **kwargs):
        message = gmqtt.Message(message_or_topic, payload, qos=qos, retain=retain, **kwargs)
        mid, package = self._connection.publish(message)
        if message.qos > 0:
            self._persistent_storage.push_message(mid, package)
        return mid


class BrokerClient:
    """One MQTT 5 session with a broker.

    ``on_publish(topic, payload, qos, properties, mid)`` is called on the event loop for every message
    (``mid`` None at QoS 0; ``properties`` as described at FLAGS, the same from the short path and from
    gmqtt's); acknowledge a QoS 1 message with ``ack(mid)``, or never (the broker sends it again on the
    next connection of this persistent session). ``persistent`` sessions survive the
    connection for ``session_expiry`` seconds, with the messages the broker queued meanwhile.
    """

    def __init__(
        self,
        address,
        on_publish,
        *,
        persistent=True,
        session_expiry=7 * 24 * 3600,
        receive_maximum=1000,
        client_id=None,
        on_lost=None,
    ):
        self.address = address
        self.client_id = client_id or address.client_id
        self._on_publish_callback = on_publish
        self._on_lost = on_lost
        properties = {"receive_maximum": receive_maximum}
        if persistent:
            properties["session_expiry_interval"] = session_expiry
        self._client = _Client(
            self.client_id, clean_session=not persistent, optimistic_acknowledgement=False, **properties
        )
        self._client._package_handler.__class__ = _Handler
        self._client._package_handler.hub_client = self
        if address.username:
            self._client.set_auth_credentials(address.username, address.password or None)
        self._client.on_message = self._on_qos0_message
        self._client.on_subscribe = self._on_suback
        self._client.on_unsubscribe = self._on_unsuback
        self._client.on_disconnect = self._on_disconnect
        self._acks = []  # packet ids to acknowledge in the next write
        self._pubacks = {}  # mid -> future of the PUBACK's reason code
        self._subacks = {}  # mid -> future of the SUBACK's reason codes
        self.session_present = False
        self.taken_over = False
        self.closing = False

    @property
    def connected(self):
        connection = self._client._connection
        return connection is not None and self._client.is_connected

    async def connect(self, timeout=10.0):
        """Connect; BrokerError naming the broker and the key to check when that fails."""
        address = self.address
        self._client.on_connect = self._on_connect
        try:
            context = address.ssl_context()
            await asyncio.wait_for(
                self._client.connect(
                    address.host, address.port, ssl=context or False, keepalive=address.keepalive, version=MQTTv50
                ),
                timeout,
            )
        except gmqtt.mqtt.handler.MQTTConnectError as exc:
            self.closing = True
            self._client.stop_reconnect()
            code = exc._code
            account = address.username or "(anonymous)"
            hint = ""
            if code in (0x86, 0x87, 4, 5):
                hint = f" (check {where(address.name, 'USERNAME')} and {where(address.name, 'PASSWORD')})"
            elif code in (0x85, 2):
                hint = f" (check {where(address.name, 'CLIENT_ID')})"
            raise BrokerError(f"{address} refused the hub's account {account!r}: {reason_text(code)}{hint}") from None
        except TimeoutError:
            self.closing = True
            self._client.stop_reconnect()
            raise BrokerError(f"{address}: no CONNACK within {timeout:.0f} s (is PORT an MQTT listener?)") from None
        except Exception as exc:
            self.closing = True
            self._client.stop_reconnect()
            raise connect_error(address, exc) from exc

    def _on_connect(self, client, flags, rc, properties):
        self.session_present = bool(flags)

    async def subscribe(self, filters, qos=1, timeout=10.0):
        """Subscribe to ``filters``; BrokerError naming the first one the broker refused."""
        if not filters:
            return
        loop = asyncio.get_running_loop()
        subscriptions = [gmqtt.Subscription(topic, qos=qos) for topic in filters]
        mid = self._client.subscribe(subscriptions)
        future = self._subacks[mid] = loop.create_future()
        try:
            codes = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrokerError(f"{self.address}: no SUBACK within {timeout:.0f} s") from None
        finally:
            self._subacks.pop(mid, None)
        for topic, code in zip(filters, codes, strict=False):
            if code >= 0x80:
                raise BrokerError(
                    f"{self.address} refused the subscription {topic!r} of account "
                    f"{self.address.username or '(anonymous)'!r}: {reason_text(code)} (on Mosquitto: "
                    f"'hubserver broker setup --broker {self.address.name}' gives the account its role)"
                )

    async def unsubscribe(self, filters, timeout=10.0):
        """Stop receiving on ``filters`` (what the session holds already still comes)."""
        if not filters:
            return
        mid = self._client.unsubscribe(list(filters))
        future = self._subacks[mid] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BrokerError(f"{self.address}: no UNSUBACK within {timeout:.0f} s") from None
        finally:
            self._subacks.pop(mid, None)

    def _on_unsuback(self, client, mid, *args):
        future = self._subacks.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_suback(self, client, mid, granted, properties):
        future = self._subacks.get(mid)
        if future is not None and not future.done():
            future.set_result(list(granted))

    async def publish(self, topic, payload, qos=1, **properties):
        """Publish; at QoS 1 wait for the broker's PUBACK and return its reason code (0: delivered to a
        subscriber, 0x10: nobody subscribes). ConnectionError when the connection is down or drops first."""
        if not self.connected:
            raise ConnectionError(f"{self.address} is not connected")
        mid = self._client.publish(topic, payload, qos=qos, **properties)
        if qos == 0:
            return 0
        future = self._pubacks[mid] = asyncio.get_running_loop().create_future()
        try:
            return await future
        finally:
            self._pubacks.pop(mid, None)

    def _on_puback(self, mid, code):
        future = self._pubacks.get(mid)
        if future is not None and not future.done():
            future.set_result(code)

    def ack(self, mid):
        """Acknowledge an incoming QoS 1 message (once it is committed). The acknowledgements of one commit
        go out in one write, in the order they were given (MQTT 4.6: the order of the PUBLISHes)."""
        self._acks.append(mid)
        if len(self._acks) == 1:
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self):
        acks, self._acks = self._acks, []
        connection = self._client._connection
        if connection is not None and acks:
            # PUBACK, remaining length 2, packet id: reason code 0 (success) may be left out (MQTT 3.4.2.1).
            connection._protocol.write_data(b"".join(_PUBACK + mid.to_bytes(2, "big") for mid in acks))

    def pause_reading(self):
        """Read nothing more from the broker until ``resume_reading()`` (back-pressure through TCP)."""
        connection = self._client._connection
        if connection is not None and not connection._transport.is_closing():
            connection._transport.pause_reading()

    def resume_reading(self):
        connection = self._client._connection
        if connection is not None and not connection._transport.is_closing():
            connection._transport.resume_reading()

    def _on_qos0_message(self, client, topic, payload, qos, properties):
        self._on_publish_callback(topic, payload, qos, properties, None)

    def _on_publish(self, topic, payload, qos, properties, mid):
        self._on_publish_callback(topic, payload, qos, properties, mid)

    def _on_server_disconnect(self, code):
        if code == SESSION_TAKEN_OVER:
            self.taken_over = True
            self._client.stop_reconnect()
            logger.error(
                "%s: another client connected with client id %r and took this session over; not reconnecting. "
                "Give every worker its own CLIENT_ID (hubserver listen --client-id)",
                self.address,
                self.client_id,
            )
        elif code:
            logger.warning("%s disconnected the hub: %s; reconnecting", self.address, reason_text(code))

    def _on_disconnect(self, client, packet, exc=None):
        for future in self._pubacks.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{self.address}: the connection closed before the PUBACK"))
        if not self.closing:
            logger.warning("%s: connection lost; reconnecting every few seconds", self.address)
            if self._on_lost is not None:
                self._on_lost()

    async def disconnect(self, end_session=False):
        """Close the connection; a persistent session stays on the broker (its queued messages too), unless
        ``end_session`` (MQTT 5: a DISCONNECT with session expiry 0)."""
        self.closing = True
        self._client.stop_reconnect()
        properties = {"session_expiry_interval": 0} if end_session else {}
        with contextlib.suppress(Exception):  # already closed
            await self._client.disconnect(**properties)
