"""Test MQTT clients: paho (a real device library) with waits that never block the event loop, and a
tiny raw client for what paho will not do on purpose (stay silent, withhold a PUBACK)."""

import asyncio
import contextlib
import struct
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as paho

from tests.services import free_port  # noqa: F401  (the tests import it from here)


async def until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Wait (on the loop) until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Client:
    """A paho client; every wait polls from the event loop, so an in-process hub keeps running."""

    def __init__(
        self,
        port,
        client_id="",
        username=None,
        password=None,
        *,
        clean_session=True,
        keepalive=60,
        will=None,
        transport="tcp",
        ws_path="/mqtt",
    ):
        self.port = port
        self.paho = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, transport=transport
        )
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            self.paho.will_set(*will)
        self.keepalive = keepalive
        self.connack = None
        self.session_present = None
        self.connected = False
        self.disconnects = 0
        self.messages = []
        self.granted = {}
        self._lock = threading.Lock()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code.value
        self.session_present = flags.session_present
        self.connected = reason_code.value == 0

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected = False
        self.disconnects += 1

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, msg.qos, msg.retain))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.granted[mid] = [code.value for code in reason_codes]

    async def connect(self, expect_success=True):
        self.paho.reconnect_delay_set(60, 120)  # a refused client must not retry during a test
        self.paho.connect_async("127.0.0.1", self.port, keepalive=self.keepalive)
        self.paho.loop_start()
        await until(lambda: self.connack is not None or self.disconnects, message="CONNACK")
        if expect_success:
            assert self.connack == 0, f"CONNACK {self.connack}"
        return self.connack

    async def subscribe(self, topic, qos=1):
        result, mid = self.paho.subscribe(topic, qos)
        assert result == paho.MQTT_ERR_SUCCESS
        await until(lambda: mid in self.granted, message=f"SUBACK for {topic}")
        return self.granted[mid][0]

    async def publish(self, topic, payload, qos=1, retain=False, wait=True):
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if wait and qos:
            await until(info.is_published, message=f"acknowledgement of {topic}")
        return info

    async def wait_messages(self, count, timeout=10.0):
        await until(lambda: len(self.messages) >= count, timeout, message=f"{count} message(s)")
        return list(self.messages)

    async def wait_disconnected(self, timeout=10.0):
        await until(lambda: not self.connected and self.disconnects, timeout, message="disconnect")

    async def disconnect(self):
        self.paho.disconnect()
        await until(lambda: not self.connected, message="clean disconnect")
        _stop_loop(self.paho)

    def stop(self):
        """Drop the network loop without a DISCONNECT packet (an abrupt loss of connection)."""
        _stop_loop(self.paho)
        with contextlib.suppress(AttributeError, OSError):
            self.paho.socket().close()


def _wake(client):
    """Let paho's network thread see a stop request now: ``loop_stop()`` sets the flag and then waits out the
    thread's current one-second select, which cost about a second per client in every test's teardown. Paho
    wakes that select itself (a byte on its socket pair) when it has something to send; this does the same."""
    client._thread_terminate = True
    with contextlib.suppress(AttributeError, OSError):
        client._sockpairW.send(b"0")


def _stop_loop(client):
    """``loop_stop()`` without waiting out a reconnect pause: after a lost connection paho's thread sleeps in
    steps of up to a second before it tries again, which no wake-up shortens. Woken, a thread in its select
    ends at once and is waited for; one in that pause (paho has dropped its socket) ends by itself when it
    wakes (it sees the stop request before touching the network again), so it is left to finish."""
    _wake(client)
    thread = client._thread
    if thread is None or thread is threading.current_thread() or client._sock is None:
        return
    thread.join(0.2)


def _string(value):
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class RawClient:
    """Just enough MQTT 3.1.1 to misbehave deliberately: no automatic PINGREQ, no automatic PUBACK."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def connect(self, client_id, username=None, password=None, *, clean_session=True, keepalive=60, will=None):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0)
        flags |= 0x40 if password is not None else 0
        payload = _string(client_id)
        if will is not None:
            topic, message, qos = will
            flags |= 0x04 | (qos << 3)
            payload += _string(topic) + _string(message)
        payload += (_string(username) if username is not None else b"") + (
            _string(password) if password is not None else b""
        )
        body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
        self.writer.write(bytes([0x10]) + _length(len(body)) + body)
        packet_type, data = await self.read_packet()
        assert packet_type == 2, packet_type
        return data[1], bool(data[0] & 1)  # return code, session present

    async def subscribe(self, topic, qos=1, packet_id=1):
        body = struct.pack("!H", packet_id) + _string(topic) + bytes([qos])
        self.writer.write(bytes([0x82]) + _length(len(body)) + body)
        packet_type, data = await self.read_packet()
        assert packet_type == 9, packet_type
        return data[2]

    async def read_packet(self, timeout=10.0):
        header = await asyncio.wait_for(self.reader.readexactly(1), timeout)
        multiplier, length = 1, 0
        while True:
            byte = (await self.reader.readexactly(1))[0]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        data = await self.reader.readexactly(length) if length else b""
        self.last_flags = header[0] & 0x0F
        return header[0] >> 4, data

    async def read_publish(self, timeout=10.0):
        """The next PUBLISH as (topic, payload, qos, dup, packet_id)."""
        while True:
            packet_type, data = await self.read_packet(timeout)
            if packet_type == 3:
                break
        flags = self.last_flags
        qos = (flags >> 1) & 3
        topic_length = struct.unpack("!H", data[:2])[0]
        topic = data[2 : 2 + topic_length].decode()
        rest = data[2 + topic_length :]
        packet_id = None
        if qos:
            packet_id = struct.unpack("!H", rest[:2])[0]
            rest = rest[2:]
        return topic, rest, qos, bool(flags & 0x08), packet_id

    async def puback(self, packet_id):
        self.writer.write(bytes([0x40, 2]) + struct.pack("!H", packet_id))
        await self.writer.drain()

    async def closed(self, timeout=10.0):
        """True when the server closes the connection within ``timeout`` seconds."""
        try:
            while await asyncio.wait_for(self.reader.read(1024), timeout):
                pass
            return True
        except TimeoutError:
            return False

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Client5(Client):
    """A paho client speaking MQTT 5: properties, reason codes and session expiry are the client's own."""

    def __init__(
        self,
        port,
        client_id="",
        username=None,
        password=None,
        *,
        clean_start=True,
        session_expiry=None,
        keepalive=60,
        will=None,
        will_properties=None,
        connect_properties=None,
        transport="tcp",
        ws_path="/mqtt",
    ):
        self.port = port
        self.paho = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5, transport=transport
        )
        if transport == "websockets":
            self.paho.ws_set_options(path=ws_path)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            self.paho.will_set(*will, properties=_properties("WILLMESSAGE", will_properties))
        self.clean_start = clean_start
        self.connect_properties = dict(connect_properties or {})
        if session_expiry is not None:
            self.connect_properties["SessionExpiryInterval"] = session_expiry
        self.keepalive = keepalive
        self.connack = None
        self.connack_properties = None
        self.session_present = None
        self.connected = False
        self.disconnects = 0
        self.disconnect_reason = None
        self.disconnect_properties = None
        self.messages = []
        self.granted = {}
        self.unsubscribed = {}
        self.acks = {}
        self._lock = threading.Lock()
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe
        self.paho.on_publish = self._on_publish

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        super()._on_connect(client, userdata, flags, reason_code, properties)
        self.connack_properties = properties

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code.value
        self.disconnect_properties = properties
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append(Received5(msg.topic, msg.payload, msg.qos, msg.retain, msg.properties))

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self.unsubscribed[mid] = [code.value for code in reason_codes]

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.acks[mid] = (reason_code.value, properties)

    async def connect(self, expect_success=True):
        self.paho.reconnect_delay_set(60, 120)
        self.paho.connect_async(
            "127.0.0.1",
            self.port,
            keepalive=self.keepalive,
            clean_start=self.clean_start,
            properties=_properties("CONNECT", self.connect_properties),
        )
        self.paho.loop_start()
        await until(lambda: self.connack is not None or self.disconnects, message="CONNACK")
        if expect_success:
            assert self.connack == 0, f"CONNACK {self.connack}"
        return self.connack

    async def subscribe(self, topic, qos=1, subscription_id=None, **options):
        from paho.mqtt.subscribeoptions import SubscribeOptions

        properties = _properties("SUBSCRIBE", {"SubscriptionIdentifier": subscription_id} if subscription_id else {})
        result, mid = self.paho.subscribe((topic, SubscribeOptions(qos=qos, **options)), properties=properties)
        assert result == paho.MQTT_ERR_SUCCESS
        await until(lambda: mid in self.granted, message=f"SUBACK for {topic}")
        return self.granted[mid][0]

    async def unsubscribe(self, topic):
        result, mid = self.paho.unsubscribe(topic)
        assert result == paho.MQTT_ERR_SUCCESS
        await until(lambda: mid in self.unsubscribed, message=f"UNSUBACK for {topic}")
        return self.unsubscribed[mid][0]

    async def publish(self, topic, payload, qos=1, retain=False, wait=True, **properties):
        info = self.paho.publish(topic, payload, qos=qos, retain=retain, properties=_properties("PUBLISH", properties))
        if wait and qos:
            await until(lambda: info.mid in self.acks, message=f"acknowledgement of {topic}")
            return self.acks[info.mid]
        return info

    async def disconnect(self, reason_code=0, **properties):
        from paho.mqtt.reasoncodes import ReasonCode

        self.paho.disconnect(
            ReasonCode(paho.PacketTypes.DISCONNECT, identifier=reason_code),
            properties=_properties("DISCONNECT", properties) if properties else None,
        )
        await until(lambda: not self.connected, message="clean disconnect")
        _stop_loop(self.paho)


@dataclass
class Received5:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: object

    def prop(self, name, default=None):
        return getattr(self.properties, name, default)


def _properties(packet_type, values):
    """paho Properties of ``packet_type`` (a PacketTypes name) from ``{"CorrelationData": b"..."}``."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if not values:
        return None
    props = Properties(getattr(PacketTypes, packet_type))
    for name, value in values.items():
        setattr(props, name, value)
    return props


class RawClient5:
    """MQTT 5 over a bare socket with the hub's codec, for what a library will not send or show: packets
    in a chosen order, forbidden values, topic aliases as they are on the wire."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def connect(self, client_id="", username=None, password=None, *, clean_start=True, keepalive=60, **kw):
        from hubserver.plugins.mqtt5 import codec

        if self.writer is None:
            await self.open()
        connect = codec.Connect(
            client_id,
            clean_start,
            keepalive,
            kw.pop("properties", {}),
            kw.pop("will", None),
            username,
            password.encode() if isinstance(password, str) else password,
        )
        self.send(connect)
        return await self.read()

    def send(self, packet):
        from hubserver.plugins.mqtt5 import codec

        self.writer.write(packet if isinstance(packet, bytes) else codec.encode(packet))

    async def read(self, timeout=10.0):
        """The next packet, decoded; None when the server closed the connection."""
        from hubserver.plugins.mqtt5 import codec

        try:
            first = await asyncio.wait_for(self.reader.readexactly(1), timeout)
            length = shift = 0
            while True:
                byte = (await self.reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return codec.decode(first[0], body)

    async def silent(self, seconds):
        """True when no packet arrives within ``seconds`` (and the connection stays open)."""
        try:
            await asyncio.wait_for(self.reader.readexactly(1), seconds)
        except TimeoutError:
            return True
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        return False

    async def read_type(self, cls, timeout=10.0):
        """The next packet of class ``cls`` (others are skipped); None when the connection closed."""
        while True:
            packet = await self.read(timeout)
            if packet is None or isinstance(packet, cls):
                return packet

    async def closed(self, timeout=10.0):
        try:
            while await asyncio.wait_for(self.reader.read(1024), timeout):
                pass
            return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def close(self):
        if self.writer is not None:
            self.writer.close()
