"""A lightweight MQTT load generator for the benchmarks (MQTT 3.1.1, or 5 with ``protocol=5``): asyncio
protocols, no MQTT library.

Each device is one TCP connection (CONNECT with its own credentials, clean session) that publishes its
share of messages at QoS 0 or 1. At QoS 1 up to ``window`` messages are unacknowledged at any time per
device; whenever PUBACKs free room, the next messages go out in one write, so one process keeps
thousands of messages a second in flight. At QoS 0 the messages are written as fast as the socket takes
them, then a PINGREQ/PINGRESP round trip proves the broker has read them all.

``run_worker`` is the entry point of one load-generator process (``multiprocessing``): it connects its
devices, reports ``ready``, waits for ``go``, publishes, reports its figures, and disconnects when told
to ``stop``. Clocks are ``time.monotonic()``, which on Linux is one system-wide clock, so the parent can
compare times taken in different processes.
"""

import asyncio
import json
import random
import signal
import struct
import time
from dataclasses import dataclass, field

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class MqttError(Exception):
    pass


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


def connect_packet(client_id, username, password, keepalive=0, protocol=4):
    """CONNECT at protocol level ``protocol`` (4: MQTT 3.1.1, 5: MQTT 5 with no properties)."""
    flags = 0x02 | 0x80 | 0x40  # clean session (clean start), username, password
    body = _string("MQTT") + bytes([protocol, flags]) + struct.pack("!H", keepalive)
    if protocol == 5:
        body += b"\x00"  # no properties
    body += _string(client_id) + _string(username) + _string(password)
    return bytes([CONNECT << 4]) + _length(len(body)) + body


def publish_packet(topic, payload, qos, packet_id=0, protocol=4):
    """One PUBLISH packet (``packet_id`` only at QoS 1 and 2; MQTT 5: an empty property block)."""
    variable = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + (b"\x00" if protocol == 5 else b"")
    return bytes([(PUBLISH << 4) | (qos << 1)]) + _length(len(variable) + len(payload)) + variable + payload


def read_packets(buffer):
    """The complete MQTT packets at the start of ``buffer`` (a bytearray) as ``(first byte, body)`` pairs;
    they are removed from it, a partial packet stays for the next read."""
    packets = []
    pos, end = 0, len(buffer)
    while end - pos >= 2:
        length, multiplier, index, complete = 0, 1, pos + 1, False
        while index < end:
            byte = buffer[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                complete = True
                break
        if not complete or index + length > end:
            break
        packets.append((buffer[pos], bytes(buffer[index : index + length])))
        pos = index + length
    del buffer[:pos]
    return packets


def weather_reading(rng):
    """A plausible weather-station reading, inside WeatherStation's declared ranges."""
    return {
        "temperature": round(rng.uniform(-20.0, 40.0), 2),  # -60 .. 70 °C
        "humidity": round(rng.uniform(5.0, 100.0), 1),  # 0 .. 100 %
        "pressure": round(rng.uniform(950.0, 1050.0), 1),  # 800 .. 1100 hPa
    }


@dataclass
class DeviceResult:
    sent: int = 0
    acked: int = 0
    first_publish: float | None = None
    last_ack: float | None = None  # QoS 1: the last PUBACK; QoS 0: the PINGRESP after the last PUBLISH
    latencies: list = field(default_factory=list)  # seconds, QoS 1 only
    error: str | None = None


class Publisher(asyncio.Protocol):
    """One device connection. Parses CONNACK, PUBACK and PINGRESP; everything else is ignored."""

    def __init__(self, window, protocol=4):
        self.window = window
        self.protocol = protocol
        self.transport = None
        self.buffer = bytearray()
        self.connack = asyncio.get_running_loop().create_future()
        self.pingresp = None
        self.wakeup = None  # set when PUBACKs free room, or the connection is lost
        self.sent_at = {}  # packet id -> monotonic send time
        self.result = DeviceResult()
        self.lost = None
        self.paused = False
        self.resumed = None

    # asyncio.Protocol

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        now = None
        for first, body in read_packets(self.buffer):
            kind = first >> 4
            if kind == PUBACK:
                sent = self.sent_at.pop(struct.unpack("!H", body[:2])[0], None)
                if sent is not None:
                    now = now or time.monotonic()
                    self.result.acked += 1
                    self.result.last_ack = now
                    self.result.latencies.append(now - sent)
            elif kind == CONNACK:
                if not self.connack.done():
                    self.connack.set_result(body[1] if len(body) > 1 else 255)
            elif kind == PINGRESP and self.pingresp is not None and not self.pingresp.done():
                self.pingresp.set_result(time.monotonic())
        if now is not None and self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def connection_lost(self, exc):
        self.lost = exc or MqttError("connection closed by the hub")
        for future in (self.connack, self.pingresp, self.wakeup, self.resumed):
            if future is not None and not future.done():
                future.set_exception(MqttError(f"connection lost: {self.lost}"))

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    # publishing

    def _check(self):
        if self.lost is not None:
            raise MqttError(f"connection lost: {self.lost}")

    async def _writable(self):
        while self.paused:
            self._check()
            self.resumed = asyncio.get_running_loop().create_future()
            await self.resumed

    async def ping(self, timeout):
        self._check()
        self.pingresp = asyncio.get_running_loop().create_future()
        self.transport.write(bytes([PINGREQ << 4, 0]))
        return await asyncio.wait_for(self.pingresp, timeout)

    async def publish_all(self, topic, payloads, qos, timeout):
        """Publish every payload; return when the last one is acknowledged (QoS 1) or read (QoS 0)."""
        loop = asyncio.get_running_loop()
        header = _string(topic)
        result = self.result
        result.first_publish = time.monotonic()
        total = len(payloads)
        if qos == 0:
            chunk = 50
            for start in range(0, total, chunk):
                self._check()
                packets = (publish_packet(topic, p, 0, protocol=self.protocol) for p in payloads[start : start + chunk])
                self.transport.write(b"".join(packets))
                result.sent = min(total, start + chunk)
                await self._writable()
                await asyncio.sleep(0)  # let the other devices of this process write too
            result.last_ack = await self.ping(timeout)
            result.acked = result.sent
            return result
        fixed = bytes([(PUBLISH << 4) | (qos << 1)])
        properties = b"\x00" if self.protocol == 5 else b""
        next_id = 0
        deadline = loop.time() + timeout
        while result.acked < total:
            self._check()
            room = min(self.window - len(self.sent_at), total - result.sent)
            if room > 0:
                packets = []
                now = time.monotonic()
                for payload in payloads[result.sent : result.sent + room]:
                    next_id = next_id % 65535 + 1
                    self.sent_at[next_id] = now
                    variable = header + struct.pack("!H", next_id) + properties
                    packets.append(fixed + _length(len(variable) + len(payload)) + variable + payload)
                result.sent += room
                self.transport.write(b"".join(packets))
                await self._writable()
            if result.acked >= total:
                break
            self.wakeup = loop.create_future()
            left = deadline - loop.time()
            if left <= 0:
                raise MqttError(f"timed out after {timeout:.0f}s with {total - result.acked} unacknowledged")
            try:
                await asyncio.wait_for(self.wakeup, left)
            except TimeoutError:
                raise MqttError(f"timed out after {timeout:.0f}s with {total - result.acked} unacknowledged") from None
        return result

    def disconnect(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes([DISCONNECT << 4, 0]))
            self.transport.close()


async def open_device(host, port, credentials, window, timeout, mqtt_protocol=4):
    loop = asyncio.get_running_loop()
    connection = loop.create_connection(lambda: Publisher(window, mqtt_protocol), host, port)
    _, protocol = await asyncio.wait_for(connection, timeout)
    protocol.transport.write(
        connect_packet(
            credentials["client_id"],
            credentials["mqtt_username"],
            credentials["mqtt_password"],
            protocol=mqtt_protocol,
        )
    )
    code = await asyncio.wait_for(protocol.connack, timeout)
    if code != 0:
        protocol.transport.close()
        raise MqttError(f"CONNACK {code} for {credentials['client_id']} (bad credentials?)")
    return protocol


def _payloads(credentials, count, seed):
    rng = random.Random(f"{seed}:{credentials['client_id']}")
    return [json.dumps(weather_reading(rng), separators=(",", ":")).encode() for _ in range(count)]


async def _run(index, host, port, devices, messages, qos, window, timeout, events, results, protocol=4):
    _ready, go, stop = events
    payloads = [_payloads(d, messages, index) for d in devices]
    report = {"index": index, "devices": len(devices), "error": None}
    protocols = []
    try:
        connect_sem = asyncio.Semaphore(50)  # authentication is deliberately slow; do not stampede

        async def connect(credentials):
            async with connect_sem:
                return await open_device(host, port, credentials, window, timeout, protocol)

        protocols = await asyncio.gather(*(connect(d) for d in devices))
    except Exception as exc:
        report["error"] = f"connect: {type(exc).__name__}: {exc}"
        results.put({**report, "phase": "ready"})
        return
    results.put({**report, "phase": "ready"})
    loop = asyncio.get_running_loop()
    cpu_ready = time.process_time()
    while not go.is_set():  # a multiprocessing Event: poll it without blocking the loop
        if stop.is_set():
            return
        await asyncio.sleep(0.002)
    outcomes = await asyncio.gather(
        *(
            p.publish_all(d["topics"]["data"], pl, qos, timeout)
            for p, d, pl in zip(protocols, devices, payloads, strict=True)
        ),
        return_exceptions=True,
    )
    errors = [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]
    figures = [p.result for p in protocols]
    firsts = [r.first_publish for r in figures if r.first_publish is not None]
    lasts = [r.last_ack for r in figures if r.last_ack is not None]
    latencies = [x for r in figures for x in r.latencies]
    results.put(
        {
            **report,
            "phase": "done",
            "error": (f"{len(errors)} device(s) failed, e.g. {errors[0]}" if errors else None),
            "sent": sum(r.sent for r in figures),
            "acked": sum(r.acked for r in figures),
            "first_publish": min(firsts) if firsts else None,
            "last_ack": max(lasts) if lasts else None,
            "latencies": latencies,
            "cpu": time.process_time() - cpu_ready,  # CPU seconds this process spent publishing
        }
    )
    # Keep the connections open until the parent has counted the rows (a QoS 0 close must not race).
    deadline = loop.time() + timeout
    while not stop.is_set() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for protocol in protocols:
        protocol.disconnect()
    await asyncio.sleep(0.05)


def run_worker(index, host, port, devices, messages, qos, window, timeout, events, results, protocol=4):
    """Entry point of one load-generator process (see the module docstring); ``protocol`` 4 or 5."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and stops us
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"refusing to send load to {host}: only 127.0.0.1")
    try:
        asyncio.run(_run(index, host, port, devices, messages, qos, window, timeout, events, results, protocol))
    except Exception as exc:
        results.put({"index": index, "phase": "crash", "error": f"{type(exc).__name__}: {exc}"})
