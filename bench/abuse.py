"""Attacks on the hub: resident memory and an innocent device's PUBACK latency under each one.

For each scenario it starts a fresh ``hubserver run`` (free ports of 127.0.0.1, fresh temporary data
directory), provisions the innocent devices and the attacker's devices, then:

1. connects ``--innocents`` devices that publish QoS 1 messages paced at ``--innocent-rate`` messages a
   second in total, and measures each PUBLISH -> PUBACK time (the innocent's view of the hub);
2. runs the attack for ``--duration`` seconds in a separate process (its CPU is not the probe's), while a
   thread samples the hub's VmRSS every 50 ms and a fresh innocent CONNECT is timed once a second;
3. stops the attack, waits ``--settle`` seconds, and reads the hub's RSS, open files and CLOSE_WAIT sockets.

One line per scenario (the figures), e.g.:

    abuse scenario=qos0-flood rss_mb=112/140/118 puback_ms=1.4/6.2 connect_ms=9.1 acked=2000/2000 ...

``rss_mb`` is before/peak/after, ``puback_ms`` p50/p99 of the innocents during the attack, ``connect_ms``
the median CONNACK time of the fresh CONNECTs, ``acked`` PUBACKs received / PUBLISHes sent, ``closed`` how
many innocent connections the hub closed (should be 0), ``fds``/``db_fds`` the hub's open descriptors (all,
and on its SQLite database), ``log_lines`` the lines the hub logged from the start of the attack to the end
of the settling time (the innocents' and the timed CONNECTs log too: ``none`` is the reference),
``attack=...`` what the attacker managed.

Scenarios are registered with ``@scenario(name, area, description)`` in ``SCENARIOS``: an ``async``
function ``attack(ctx)`` that runs in the attacker process until ``ctx.stopping()`` and returns a dict of
figures. Add one per attack; ``python bench/abuse.py --list`` prints them. Traffic goes to 127.0.0.1 only.
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import mqttload

# --- the scenario registry ------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    area: str  # "mqtt", "websocket", "http", ...: docs/limits.md has a table per area
    description: str
    attack: object  # async def attack(ctx) -> dict
    devices: int = 1  # attacker devices to provision (their credentials are in ctx.devices)
    env: dict = field(default_factory=dict)  # extra environment of the hub (HUBSERVER_* settings)


SCENARIOS = {}


def scenario(name, area, description, devices=1, env=None):
    def register(attack):
        SCENARIOS[name] = Scenario(name, area, description, attack, devices, env or {})
        return attack

    return register


@dataclass
class Context:
    """What an attack knows: where the hub listens, the attacker's device credentials, when to stop."""

    host: str
    mqtt_port: int
    http_port: int
    devices: list
    duration: float
    stop_event: object = None
    admin_password: str = ""  # the hub's admin account: a service user over MQTT

    def stopping(self):
        return self.stop_event.is_set()

    async def until_stopped(self, interval=0.05):
        while not self.stopping():
            await asyncio.sleep(interval)


# --- raw MQTT helpers for attackers ----------------------------------------------------------------------


def connect_packet(client_id, username=None, password=None, clean=True, level=4, will=None, keepalive=60):
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    payload = mqttload._string(client_id)
    if will is not None:
        flags |= 0x04 | (will[2] << 3)
        payload += mqttload._string(will[0]) + mqttload._string(will[1])
    if username is not None:
        payload += mqttload._string(username)
    if password is not None:
        payload += mqttload._string(password)
    body = mqttload._string("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive) + payload
    return bytes([0x10]) + mqttload._length(len(body)) + body


async def open_raw(ctx, device=None):
    """A TCP connection; with ``device``, CONNECTed with its credentials (CONNACK read)."""
    reader, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
    if device is not None:
        writer.write(connect_packet(device["client_id"], device["mqtt_username"], device["mqtt_password"]))
        head = await asyncio.wait_for(reader.readexactly(4), 30)
        if head[3] != 0:
            raise RuntimeError(f"CONNACK {head[3]}")
    return reader, writer


async def discard(reader):
    """Read and drop whatever the hub sends (so that its writes never block on us)."""
    with contextlib.suppress(Exception):
        while await reader.read(65536):
            pass


_background = set()


def background(coroutine):
    """Run ``coroutine`` as a task that is kept referenced until it ends."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def close_all(writers):
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.close()


# --- MQTT scenarios ----------------------------------------------------------------------------------------


@scenario("none", "mqtt", "no attack: the innocents alone (the reference figures)", devices=0)
async def attack_none(ctx):
    await ctx.until_stopped()
    return {}


@scenario("qos0-flood", "mqtt", "one authenticated device publishes QoS 0 to its own data topic as fast as it can")
async def attack_qos0_flood(ctx):
    device = ctx.devices[0]
    reader, writer = await open_raw(ctx, device)
    background(discard(reader))
    packet = mqttload.publish_packet(device["topics"]["data"], b'{"temperature": 20.5}', 0)
    chunk = packet * 200
    sent = 0
    try:
        while not ctx.stopping():
            writer.write(chunk)
            sent += 200
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    closed = reader.at_eof()
    close_all([writer])
    return {"sent": sent, "closed_by_hub": closed}


@scenario("qos1-flood", "mqtt", "one device publishes QoS 1 as fast as it can, never waiting for a PUBACK")
async def attack_qos1_flood(ctx):
    device = ctx.devices[0]
    reader, writer = await open_raw(ctx, device)
    background(discard(reader))
    topic = mqttload._string(device["topics"]["data"])
    sent = 0
    try:
        while not ctx.stopping():
            packets = []
            for _ in range(200):
                sent += 1
                variable = topic + struct.pack("!H", sent % 65535 + 1)
                payload = b'{"temperature": 20.5}'
                packets.append(bytes([0x32]) + mqttload._length(len(variable) + len(payload)) + variable + payload)
            writer.write(b"".join(packets))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    close_all([writer])
    return {"sent": sent}


@scenario("big-publish", "mqtt", "10 devices each announce a 200 MB PUBLISH and stream its body", devices=10)
async def attack_big_publish(ctx):
    async def one(device):
        try:
            reader, writer = await open_raw(ctx, device)
        except (ConnectionError, OSError, RuntimeError):
            return 0
        background(discard(reader))
        size = 200 * 1024 * 1024
        variable = mqttload._string(device["topics"]["data"]) + struct.pack("!H", 1)
        writer.write(bytes([0x32]) + mqttload._length(size) + variable)
        block = b"x" * 65536
        written = 0
        try:
            while written < size and not ctx.stopping():
                writer.write(block)
                written += len(block)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        close_all([writer])
        return written

    written = await asyncio.gather(*(one(d) for d in ctx.devices))
    return {"bytes_written_mb": round(sum(written) / 2**20)}


@scenario("half-open", "mqtt", "500 unauthenticated sockets each send half a CONNECT and wait", devices=0)
async def attack_half_open(ctx):
    writers = []
    packet = connect_packet("half-open", "nobody", "nothing")
    for _ in range(500):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
            writer.write(packet[: len(packet) // 2])
            writers.append((reader, writer))
    await ctx.until_stopped()
    closed = sum(1 for reader, _ in writers if reader.at_eof())
    close_all(w for _, w in writers)
    return {"opened": len(writers), "closed_by_hub": closed}


@scenario("connect-64k", "mqtt", "1,000 unauthenticated CONNECTs with 64 KB client id, user and password", devices=0)
async def attack_connect_64k(ctx):
    field_ = "x" * 65000
    packet = connect_packet(field_, field_, field_)
    writers = []

    async def one():
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
            writer.write(packet)
            writers.append((reader, writer))

    for _ in range(10):
        await asyncio.gather(*(one() for _n in range(100)))
        if ctx.stopping():
            break
    await ctx.until_stopped()
    closed = sum(1 for reader, _ in writers if reader.at_eof())
    close_all(w for _, w in writers)
    return {"opened": len(writers), "closed_by_hub": closed}


@scenario("pingreq-flood", "mqtt", "an authenticated device sends 300,000 PINGREQs and never reads the answers")
async def attack_pingreq_flood(ctx):
    _, writer = await open_raw(ctx, ctx.devices[0])
    sent = 0
    try:
        while sent < 300_000 and not ctx.stopping():
            writer.write(bytes([0xC0, 0]) * 10_000)
            sent += 10_000
            await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
    await ctx.until_stopped()
    close_all([writer])
    return {"sent": sent}


@scenario("puback-flood", "mqtt", "an authenticated device sends 300,000 PUBACKs for messages it was never sent")
async def attack_puback_flood(ctx):
    reader, writer = await open_raw(ctx, ctx.devices[0])
    background(discard(reader))
    sent = 0
    try:
        while sent < 300_000 and not ctx.stopping():
            writer.write(
                b"".join(bytes([0x40, 2]) + struct.pack("!H", n % 65535 + 1) for n in range(sent, sent + 10_000))
            )
            sent += 10_000
            await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
    await ctx.until_stopped()
    closed = reader.at_eof()
    close_all([writer])
    return {"sent": sent, "closed_by_hub": closed}


@scenario("qos2-no-pubrel", "mqtt", "an authenticated device sends 2,000 QoS 2 PUBLISHes of 100 KB and never a PUBREL")
async def attack_qos2_no_pubrel(ctx):
    device = ctx.devices[0]
    reader, writer = await open_raw(ctx, device)
    background(discard(reader))
    topic = mqttload._string(device["topics"]["data"])
    payload = json.dumps({"label": "y" * 100_000}).encode()
    sent = 0
    try:
        for n in range(1, 2001):
            if ctx.stopping():
                break
            variable = topic + struct.pack("!H", n)
            writer.write(bytes([0x34]) + mqttload._length(len(variable) + len(payload)) + variable + payload)
            sent += 1
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    await ctx.until_stopped()
    close_all([writer])
    return {"sent": sent}


@scenario("failed-connects", "mqtt", "20,000 CONNECTs that fail before authentication (EOF in the middle)", devices=0)
async def attack_failed_connects(ctx):
    packet = connect_packet("failing", "nobody", "nothing")
    made = 0

    async def one():
        nonlocal made
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
            writer.write(packet[:10])
            writer.write_eof()
            made += 1
            await asyncio.sleep(0.5)
            writer.transport.abort()

    while made < 20_000 and not ctx.stopping():
        await asyncio.gather(*(one() for _ in range(200)))
    await ctx.until_stopped()
    return {"made": made}


@scenario("fuzz", "mqtt", "20 devices send random bytes after their CONNECT, again when closed", devices=20)
async def attack_fuzz(ctx):
    rng = random.Random(7)
    rounds = 0

    async def one(device):
        nonlocal rounds
        while not ctx.stopping():
            try:
                reader, writer = await open_raw(ctx, device)
            except (ConnectionError, OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError):
                await asyncio.sleep(0.1)
                continue
            background(discard(reader))
            with contextlib.suppress(ConnectionError, OSError):
                for _ in range(20):
                    writer.write(bytes([rng.randrange(256) for _ in range(rng.randrange(1, 64))]))
                    await writer.drain()
            rounds += 1
            close_all([writer])
            await asyncio.sleep(0.01)

    await asyncio.gather(*(one(d) for d in ctx.devices))
    return {"connections": rounds}


# --- WebSocket scenarios -----------------------------------------------------------------------------------


async def _ws(ctx):
    from websockets.asyncio.client import connect

    return await connect(
        f"ws://{ctx.host}:{ctx.http_port}/mqtt",
        subprotocols=["mqtt"],
        max_size=None,
        ping_interval=None,
        compression=None,
        open_timeout=30,
    )


@scenario("ws-preauth-frames", "websocket", "48 WebSocket clients send 1 MiB frames, never a CONNECT", devices=0)
async def attack_ws_preauth(ctx):
    frame = bytes([0x10]) + b"\xff" * (2**20 - 1)
    sent = 0
    closed = 0

    async def one():
        nonlocal sent, closed
        try:
            ws = await _ws(ctx)
        except Exception:
            closed += 1
            return
        try:
            while not ctx.stopping():
                await asyncio.wait_for(ws.send(frame), 5)
                sent += 1
        except Exception:
            closed += 1
        with contextlib.suppress(Exception):
            await ws.close()

    await asyncio.gather(*(one() for _ in range(48)))
    return {"frames_sent": sent, "closed_by_hub": closed}


@scenario("ws-qos0-flood", "websocket", "an authenticated device over WebSocket floods QoS 0 in 1 MiB frames")
async def attack_ws_qos0_flood(ctx):
    device = ctx.devices[0]
    ws = await _ws(ctx)
    await ws.send(connect_packet(device["client_id"], device["mqtt_username"], device["mqtt_password"]))
    await asyncio.wait_for(ws.recv(), 30)
    packet = mqttload.publish_packet(device["topics"]["data"], b'{"temperature": 20.5}', 0)
    frame = packet * (2**20 // len(packet))
    sent = 0
    try:
        while not ctx.stopping():
            await asyncio.wait_for(ws.send(frame), 5)
            sent += len(frame) // len(packet)
    except Exception:
        pass
    with contextlib.suppress(Exception):
        await ws.close()
    return {"sent": sent}


@scenario(
    "ws-stalled-subscribers",
    "websocket",
    "8 service clients over WebSocket subscribe to a busy topic and read nothing; 4 clients publish 64 KiB QoS 0 "
    "messages to it as fast as their quotas let them",
    devices=0,
)
async def attack_ws_stalled_subscribers(ctx):
    topic = "lab/abuse/stalled"
    subscribe = struct.pack("!H", 1) + mqttload._string(topic) + bytes([0])
    stalled = []
    for n in range(8):
        ws = await _ws(ctx)  # its library reads a few frames ahead, then nothing: the attack never calls recv
        await ws.send(connect_packet(f"stalled-{n}", "admin", ctx.admin_password))
        await asyncio.wait_for(ws.recv(), 30)
        await ws.send(bytes([0x82]) + mqttload._length(len(subscribe)) + subscribe)
        await asyncio.wait_for(ws.recv(), 30)
        stalled.append(ws)
    packets = mqttload.publish_packet(topic, os.urandom(64 * 1024), 0) * 4
    sent = [0]

    async def publisher(n):
        reader, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
        writer.write(connect_packet(f"abuse-publisher-{n}", "admin", ctx.admin_password))
        await asyncio.wait_for(reader.readexactly(4), 30)
        try:
            while not ctx.stopping():
                writer.write(packets)
                await asyncio.wait_for(writer.drain(), 30)
                sent[0] += 4
        except (ConnectionError, OSError, TimeoutError):
            pass
        close_all([writer])

    await asyncio.gather(*(publisher(n) for n in range(4)))
    for ws in stalled:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
    return {"published": sent[0], "mb_for_the_stalled": sent[0] * 64 * len(stalled) // 1024}


# --- HTTP scenarios -----------------------------------------------------------------------------------------

BROKER_TOKEN = "abuse-broker-token-0123456789abcdef"
BROKER_ENV = {"HUBSERVER_BROKER_AUTH_BACKEND": "1", "HUBSERVER_BROKER_AUTH_TOKEN": BROKER_TOKEN}


async def _http_status(reader):
    """The status code of the answer on ``reader`` (0 if the hub closed without one)."""
    try:
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (ConnectionError, OSError, TimeoutError, ValueError, IndexError):
        return 0


def _http_head(path, length=None, *extra):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


async def _stream_body(ctx, head, piece, total):
    """One client: send ``head``, then ``piece`` until ``total`` bytes or the hub stops reading; its status."""
    reader, writer = await asyncio.open_connection(ctx.host, ctx.http_port)
    writer.write(head)
    status = background(_http_status(reader))
    written = 0
    try:
        while written < total and not ctx.stopping() and not status.done():
            writer.write(piece)
            written += len(piece)
            await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, OSError, TimeoutError):
        pass
    code = await status
    close_all([writer])
    return code, written


@scenario(
    "http-big-bodies", "http", "10 clients POST 200 MB bodies (declared) to /iot/broker/auth/, no token", devices=0
)
async def attack_http_big_bodies(ctx):
    head = _http_head("/iot/broker/auth/", 200 * 2**20)
    results = await asyncio.gather(*(_stream_body(ctx, head, b"x" * 65536, 200 * 2**20) for _ in range(10)))
    return {
        "answered_413": sum(1 for code, _ in results if code == 413),
        "other_answers": ",".join(str(code) for code, _ in results if code != 413) or "none",
        "mb_written": round(sum(w for _, w in results) / 2**20),
    }


@scenario("http-chunked-bodies", "http", "10 clients stream 200 MB chunked bodies to a device's ingest URL", devices=1)
async def attack_http_chunked_bodies(ctx):
    device = ctx.devices[0]
    path = f"/iot/devices/weatherstation/{device['device_id']}/data/"
    head = _http_head(path, None, "Transfer-Encoding: chunked", "X-Api-Key: not-the-key")
    block = b"x" * 65536
    piece = b"%x\r\n%s\r\n" % (len(block), block)
    results = await asyncio.gather(*(_stream_body(ctx, head, piece, 200 * 2**20) for _ in range(10)))
    return {
        "answered_413": sum(1 for code, _ in results if code == 413),
        "other_answers": ",".join(str(code) for code, _ in results if code != 413) or "none",
        "mb_written": round(sum(w for _, w in results) / 2**20),
    }


@scenario("http-ingest-bad-keys", "http", "6,000 ingest POSTs with wrong API keys, 50 at a time", devices=1)
async def attack_http_ingest_bad_keys(ctx):
    device = ctx.devices[0]
    path = f"/iot/devices/weatherstation/{device['device_id']}/data/"
    body = b'{"temperature": 20.5}'
    statuses = {}
    done = 0

    async def worker(index):
        nonlocal done
        n = index
        while done < 6000 and not ctx.stopping():
            done += 1
            try:
                reader, writer = await asyncio.open_connection(ctx.host, ctx.http_port)
            except OSError:
                statuses["connect_error"] = statuses.get("connect_error", 0) + 1
                continue
            writer.write(_http_head(path, len(body), f"X-Api-Key: wrong-{n}") + body)
            code = await _http_status(reader)
            statuses[code] = statuses.get(code, 0) + 1
            close_all([writer])
            n += 50

    await asyncio.gather(*(worker(i) for i in range(50)))
    await ctx.until_stopped()
    return {"requests": done, "statuses": "/".join(f"{k}:{v}" for k, v in sorted(statuses.items(), key=str))}


async def _guess_mqtt(ctx, username, client_id, tries):
    """Connections that each CONNECT with a wrong password; returns (attempts, accepted, refused)."""
    attempts = accepted = refused = 0
    while not ctx.stopping() and attempts < tries:
        attempts += 1
        try:
            reader, writer = await asyncio.open_connection(ctx.host, ctx.mqtt_port)
            writer.write(connect_packet(client_id, username, f"guess-{secrets.token_hex(8)}"))
            head = await asyncio.wait_for(reader.readexactly(4), 30)
            accepted += head[3] == 0
            refused += head[3] != 0
            close_all([writer])
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError):
            refused += 1
    return attempts, accepted, refused


@scenario(
    "mqtt-password-guessing",
    "mqtt",
    "16 parallel guessers: 8 on a device's password, 8 on the admin's (a service user), over MQTT",
    devices=1,
)
async def attack_mqtt_password_guessing(ctx):
    device = ctx.devices[0]
    started = time.monotonic()
    jobs = [_guess_mqtt(ctx, device["mqtt_username"], device["client_id"], 10**9) for _ in range(8)]
    jobs += [_guess_mqtt(ctx, "admin", "", 10**9) for _ in range(8)]
    results = await asyncio.gather(*jobs)
    elapsed = time.monotonic() - started
    attempts = sum(r[0] for r in results)
    return {
        "guesses": attempts,
        "guesses_per_s": round(attempts / elapsed),
        "accepted": sum(r[1] for r in results),
    }


@scenario(
    "http-password-guessing",
    "http",
    "16 parallel guessers on /iot/broker/auth/ with the broker token: a device's password and the admin's",
    devices=1,
    env=BROKER_ENV,
)
async def attack_http_password_guessing(ctx):
    device = ctx.devices[0]
    started = time.monotonic()
    counts = {"guesses": 0, "allow": 0, "deny": 0, "other": 0}

    async def guesser(username):
        while not ctx.stopping():
            body = json.dumps({"username": username, "password": f"guess-{secrets.token_hex(8)}"}).encode()
            try:
                reader, writer = await asyncio.open_connection(ctx.host, ctx.http_port)
                writer.write(_http_head("/iot/broker/auth/", len(body), f"Authorization: Bearer {BROKER_TOKEN}") + body)
                answer = await asyncio.wait_for(reader.read(), 30)
                close_all([writer])
            except (ConnectionError, OSError, TimeoutError):
                answer = b""
            counts["guesses"] += 1
            key = "allow" if b'"allow"' in answer else "deny" if b'"deny"' in answer else "other"
            counts[key] += 1

    await asyncio.gather(*(guesser(device["mqtt_username"]) for _ in range(8)), *(guesser("admin") for _ in range(8)))
    counts["guesses_per_s"] = round(counts["guesses"] / (time.monotonic() - started))
    return counts


# --- the harness ------------------------------------------------------------------------------------------


def _attacker(name, ctx_fields, stop_event, results):
    """Entry point of the attacker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = Context(**ctx_fields, stop_event=stop_event)
    if ctx.host not in mqttload.LOCAL_HOSTS:
        raise SystemExit("attacks go to 127.0.0.1 only")
    try:
        figures = asyncio.run(SCENARIOS[name].attack(ctx))
        results.put({"figures": figures or {}})
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {exc}"})


class RssSampler(threading.Thread):
    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            value = common.rss_kb(self.pid)
            if value is not None:
                self.samples.append(value)
            time.sleep(self.interval)

    def peak(self):
        return max(self.samples, default=0)


def database_fds(pid):
    """The hub's open descriptors on its SQLite database (the file, -wal, -shm)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += ".sqlite3" in os.readlink(fd)
    return count


def close_wait_sockets(ports):
    """Sockets in CLOSE_WAIT on the given local ports (the hub has not closed its side of them)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "08" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    count += 1
    return count


async def probe(hub, devices, connector, args, attack_running):
    """Innocent devices publishing QoS 1 at a paced rate; a fresh CONNECT timed once a second."""
    publishers = await asyncio.gather(
        *(mqttload.open_device("127.0.0.1", hub.mqtt_port, d, 1 << 16, 30) for d in devices)
    )
    topics = [mqttload._string(d["topics"]["data"]) for d in devices]
    fixed = bytes([0x32])
    ids = [0] * len(devices)
    rng = random.Random(3)
    connects = []
    interval = len(devices) / args.innocent_rate
    index = 0
    start = time.monotonic()
    next_connect = start + 0.5
    while attack_running():
        slot = index % len(devices)
        publisher = publishers[slot]
        if publisher.lost is None:
            ids[slot] = ids[slot] % 65535 + 1
            payload = json.dumps(mqttload.weather_reading(rng)).encode()
            variable = topics[slot] + struct.pack("!H", ids[slot])
            publisher.sent_at[ids[slot]] = time.monotonic()
            publisher.result.sent += 1
            publisher.transport.write(fixed + mqttload._length(len(variable) + len(payload)) + variable + payload)
        index += 1
        now = time.monotonic()
        if now >= next_connect:
            next_connect = now + 1.0
            background(_timed_connect(hub, connector, connects))
        await asyncio.sleep(max(0.0, start + index * interval / len(devices) - time.monotonic()))
    await asyncio.sleep(1.0)  # the last PUBACKs
    for publisher in publishers:
        publisher.disconnect()
    latencies = sorted(x for p in publishers for x in p.result.latencies)
    return {
        "sent": sum(p.result.sent for p in publishers),
        "acked": sum(p.result.acked for p in publishers),
        "closed": sum(1 for p in publishers if p.lost is not None and not p.transport.is_closing()),
        "latencies": latencies,
        "connects": sorted(connects),
    }


async def _timed_connect(hub, device, out):
    started = time.monotonic()
    try:
        publisher = await mqttload.open_device("127.0.0.1", hub.mqtt_port, device, 1, 30)
        out.append(time.monotonic() - started)
        publisher.disconnect()
    except Exception:
        out.append(float("inf"))


def http_port_of(hub):
    match = re.search(r"http://[^\s:]+:(\d+)/admin/", "".join(hub.output))
    if not match:
        raise common.BenchError(f"cannot find the HTTP port in the hub's output:\n{hub.text()}")
    return int(match.group(1))


def admin_password_of(hub):
    match = re.search(r"as\s+admin\s+with\s+password\s+(\S+)", "".join(hub.output))
    return match.group(1) if match else ""


def run_scenario(run, spec, args):
    temporary = run.temporary(f"hubserver-abuse-{spec.name}-", keep=args.keep_data)
    common.raise_nofile_limit(4096)
    hub = common.Hub(temporary)
    hub.env.update(spec.env)
    hub = run.stop(hub).start()
    prefix = f"ab-{secrets.token_hex(3)}-"
    devices = hub.provision(args.innocents + 1 + spec.devices, prefix)
    # The timed fresh CONNECTs use a device of their own (reusing an innocent's client id would take over
    # its connection).
    innocents, connector, attackers = devices[: args.innocents], devices[args.innocents], devices[args.innocents + 1 :]
    pid = hub.process.pid
    time.sleep(1.0)
    rss_before = common.rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    context = multiprocessing.get_context("spawn")
    stop_event, results = context.Event(), context.Queue()
    ctx_fields = {
        "host": "127.0.0.1",
        "mqtt_port": hub.mqtt_port,
        "http_port": http_port_of(hub),
        "devices": attackers,
        "duration": args.duration,
        "admin_password": admin_password_of(hub),
    }
    attacker = context.Process(target=_attacker, args=(spec.name, ctx_fields, stop_event, results), daemon=True)
    deadline = [None]

    def attack_running():
        hub.check_alive()
        return time.monotonic() < deadline[0]

    async def measured():
        probe_task = None
        try:
            attacker.start()
            deadline[0] = time.monotonic() + args.duration
            probe_task = asyncio.ensure_future(probe(hub, innocents, connector, args, attack_running))
            figures = await probe_task
        finally:
            stop_event.set()
        return figures

    lines_before = len(hub.output)
    try:
        figures = asyncio.run(measured())
    finally:
        stop_event.set()
        attacker.join(30)
        if attacker.is_alive():
            attacker.terminate()
            attacker.join(5)
    report = common.drain(results, 5) or {}
    time.sleep(args.settle)
    sampler.done.set()
    sampler.join()
    rss_after = common.rss_kb(pid)
    log_lines = len(hub.output) - lines_before
    hub.check_alive()
    lat, connects = figures["latencies"], figures["connects"]

    def ms(value):
        return "-" if value is None else ("inf" if value == float("inf") else f"{value * 1000:.1f}")

    attack = report.get("error") or ",".join(f"{k}={v}" for k, v in report.get("figures", {}).items()) or "-"
    print(
        f"abuse scenario={spec.name} rss_mb={rss_before / 1024:.0f}/{sampler.peak() / 1024:.0f}/{rss_after / 1024:.0f} "
        f"puback_ms={ms(common.percentile(lat, 0.5))}/{ms(common.percentile(lat, 0.99))} "
        f"connect_ms={ms(common.percentile(connects, 0.5))} acked={figures['acked']}/{figures['sent']} "
        f"closed={figures['closed']} fds={common.open_fds(pid)} db_fds={database_fds(pid)} "
        f"close_wait={close_wait_sockets({hub.mqtt_port})} log_lines={log_lines} "
        f"attack={attack}",
        flush=True,
    )
    hub.stop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Attack the hub; print its memory and innocent devices' PUBACK latency (bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", help="scenario names (default: all); --list shows them")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of attack")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the attack before the last figures")
    parser.add_argument("--innocents", type=int, default=10, help="innocent devices publishing QoS 1")
    parser.add_argument("--innocent-rate", type=float, default=100.0, help="innocent messages per second, in total")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directories")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; --list shows them")
    if args.duration <= 0 or args.innocents < 1 or args.innocent_rate <= 0:
        parser.error("--duration and --innocent-rate must be positive, --innocents at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        for spec in SCENARIOS.values():
            print(f"{spec.name:20} {spec.area:10} {spec.description}")
        return 0
    names = args.scenarios or list(SCENARIOS)
    with common.Main("abuse") as run:
        for name in names:
            with contextlib.ExitStack() as one:
                sub = common.Main(f"abuse {name}")
                one.enter_context(sub)
                run_scenario(sub, SCENARIOS[name], args)
            if sub.code == 130:
                return 130
        return 0
    return run.code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    socket.setdefaulttimeout(None)
    sys.exit(main())
