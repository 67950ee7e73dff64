"""Thousands of idle MQTT devices for the benchmarks: asyncio protocols, no MQTT library.

Each device is one TCP connection that sends CONNECT with its own credentials (client id = its MQTT
username, clean session, keepalive ``--keepalive``), SUBSCRIBEs at QoS 1 to its own command topic
``things/<type>/<id>/cmd`` and then stays idle, answering the keepalive with a PINGREQ every half
keepalive (spread evenly over the interval) and acknowledging any command it receives. The packet
helpers (``connect_packet``, ``_string``, ``_length``, packet types) come from ``bench/mqttload.py``.

The devices are split over several worker processes (``multiprocessing``, spawn; ``--per-process``
devices each, 1,000 by default) so the generator is never what a figure measures. ``Fleet`` drives them
from the benchmark process: ``start()``, ``connect()`` (every worker opens all its connections at one
agreed ``time.monotonic()`` instant, which on Linux is one clock for every process), ``status()``,
``disconnect()`` and ``close()``. Every call returns figures summed over the workers: connections accepted,
CONNACK return codes, the first connection attempt, first CONNECT, last CONNACK and last SUBACK.

Run on its own it holds idle devices against a running hub until Ctrl+C (or ``--duration``)::

    python bench/idle_clients.py --hub-url mqtt://127.0.0.1:1883 --data-dir ./hubserver-data --devices 5000

Traffic goes to 127.0.0.1 only.
"""

import argparse
import asyncio
import contextlib
import multiprocessing
import queue
import secrets
import signal
import struct
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from mqttload import (
    CONNACK,
    LOCAL_HOSTS,
    PINGRESP,
    PUBACK,
    PUBLISH,
    MqttError,
    _length,
    _string,
    connect_packet,
    read_packets,
)

SUBSCRIBE, SUBACK = 8, 9
PINGREQ_PACKET = bytes([0xC0, 0])
DISCONNECT_PACKET = bytes([0xE0, 0])
FD_MARGIN = 200  # descriptors a process needs besides its sockets (files, pipes, the loop's self-pipe, ...)


class FleetError(common.BenchError):
    """A failure of the idle clients, reported like any other benchmark failure."""


def subscribe_packet(topic, packet_id=1, qos=1):
    body = struct.pack("!H", packet_id) + _string(topic) + bytes([qos])
    return bytes([(SUBSCRIBE << 4) | 0x02]) + _length(len(body)) + body


class IdleDevice(asyncio.Protocol):
    """One idle device connection. Parses CONNACK, SUBACK, PINGRESP and PUBLISH (commands: PUBACKed)."""

    def __init__(self, fleet_state):
        loop = asyncio.get_running_loop()
        self.state = fleet_state
        self.transport = None
        self.buffer = bytearray()
        self.connack = loop.create_future()
        self.suback = loop.create_future()
        self.closing = False  # we closed it (a loss we did not ask for is counted)
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        for first, body in read_packets(self.buffer):
            kind = first >> 4
            if kind == PINGRESP:
                self.state["pingresps"] += 1
            elif kind == CONNACK:
                if not self.connack.done():
                    self.connack.set_result(body[1] if len(body) > 1 else 255)
            elif kind == SUBACK:
                if not self.suback.done():
                    self.suback.set_result(body[2] if len(body) > 2 else 0x80)
            elif kind == PUBLISH:
                self.state["commands"] += 1
                qos = (first >> 1) & 0x03
                if qos:
                    topic_length = struct.unpack("!H", body[:2])[0]
                    packet_id = body[2 + topic_length : 4 + topic_length]
                    self.transport.write(bytes([PUBACK << 4, 2]) + packet_id)

    def connection_lost(self, exc):
        self.lost = exc or MqttError("connection closed by the hub")
        if not self.closing:
            self.state["lost"] += 1
        for future in (self.connack, self.suback):
            if not future.done():
                future.set_exception(MqttError(f"connection lost: {self.lost}"))
                future.exception()  # nobody may await it (e.g. the SUBACK after a refused CONNECT): no warning

    @property
    def open(self):
        return self.lost is None and self.transport is not None and not self.transport.is_closing()

    def ping(self):
        if self.open:
            self.transport.write(PINGREQ_PACKET)
            self.state["pings"] += 1

    def disconnect(self):
        self.closing = True
        if self.open:
            self.transport.write(DISCONNECT_PACKET)
            self.transport.close()


class Worker:
    """The devices of one process: connect them, keep them alive, report, disconnect."""

    def __init__(self, index, host, port, devices, options, results):
        self.index = index
        self.host = host
        self.port = port
        self.devices = devices
        self.options = options
        self.results = results
        self.protocols = []
        self.state = Counter()

    async def _open(self, credentials, semaphore, times):
        loop = asyncio.get_running_loop()
        timeout = self.options["timeout"]
        async with semaphore or contextlib.nullcontext():
            times["attempt"].append(time.monotonic())
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(lambda: IdleDevice(self.state), self.host, self.port), timeout
                )
            except (OSError, TimeoutError) as exc:
                return f"tcp connect: {type(exc).__name__}: {exc}"
            self.protocols.append(protocol)
            protocol.transport.write(
                connect_packet(
                    credentials["client_id"],
                    credentials["mqtt_username"],
                    credentials["mqtt_password"],
                    keepalive=self.options["keepalive"],
                )
            )
            times["connect"].append(time.monotonic())
            try:
                code = await asyncio.wait_for(protocol.connack, timeout)
            except (MqttError, TimeoutError) as exc:
                protocol.disconnect()
                return f"no CONNACK: {type(exc).__name__}: {exc}"
            times["connack"].append(time.monotonic())
            if code != 0:
                protocol.disconnect()
                return f"CONNACK return code {code}"
            if not self.options["subscribe"]:
                return 0
            protocol.transport.write(subscribe_packet(credentials["topics"]["cmd"]))
            try:
                granted = await asyncio.wait_for(protocol.suback, timeout)
            except (MqttError, TimeoutError) as exc:
                protocol.disconnect()
                return f"no SUBACK: {type(exc).__name__}: {exc}"
            times["suback"].append(time.monotonic())
            if granted == 0x80:
                protocol.disconnect()
                return "SUBACK refused the cmd subscription (0x80)"
            return 0

    async def connect(self, start_at):
        self.protocols = [p for p in self.protocols if p.open]
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        limit = self.options["concurrency"]
        semaphore = asyncio.Semaphore(limit) if limit else None
        times = {"attempt": [], "connect": [], "connack": [], "suback": []}
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self._open(d, semaphore, times) for d in self.devices))
        failures = Counter(o for o in outcomes if o != 0)
        return {
            "phase": "connected",
            "attempted": len(self.devices),
            "accepted": sum(1 for o in outcomes if o == 0),
            "failures": dict(failures),
            "first_attempt": min(times["attempt"], default=None),
            "first_connect": min(times["connect"], default=None),
            "last_connack": max(times["connack"], default=None),
            "last_suback": max(times["suback"], default=None),
            "connacks": len(times["connack"]),
            "subacks": len(times["suback"]),
            "cpu": time.process_time(),
            "wall": time.monotonic() - started,
        }

    def status(self):
        return {
            "phase": "status",
            "open": sum(1 for p in self.protocols if p.open),
            "lost": self.state["lost"],
            "pings": self.state["pings"],
            "pingresps": self.state["pingresps"],
            "commands": self.state["commands"],
        }

    async def disconnect(self):
        for protocol in self.protocols:
            protocol.disconnect()
        await asyncio.sleep(0.2)
        still = sum(1 for p in self.protocols if p.lost is None)
        self.protocols = []
        return {"phase": "disconnected", "unclosed": still}

    async def keepalive(self):
        """A PINGREQ per device every half keepalive, spread evenly over the interval."""
        interval = self.options["keepalive"] / 2
        while True:
            protocols = [p for p in self.protocols if p.open]
            if not protocols:
                await asyncio.sleep(1)
                continue
            step = max(1, len(protocols) // 100)
            pause = interval / (len(protocols) / step)
            for start in range(0, len(protocols), step):
                for protocol in protocols[start : start + step]:
                    protocol.ping()
                await asyncio.sleep(pause)

    async def run(self, commands):
        loop = asyncio.get_running_loop()
        pinger = loop.create_task(self.keepalive()) if self.options["keepalive"] else None
        self.results.put({"index": self.index, "phase": "started"})
        try:
            while True:
                command, argument = await loop.run_in_executor(None, commands.get)
                if command == "connect":
                    report = await self.connect(argument)
                elif command == "status":
                    report = self.status()
                elif command == "disconnect":
                    report = await self.disconnect()
                elif command == "stop":
                    await self.disconnect()
                    break
                else:
                    report = {"phase": "crash", "error": f"unknown command {command!r}"}
                self.results.put({"index": self.index, **report})
        finally:
            if pinger is not None:
                pinger.cancel()


def run_worker(index, host, port, devices, options, commands, results):
    """Entry point of one idle-device process (``multiprocessing``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and stops us
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"refusing to connect to {host}: only 127.0.0.1")
    try:
        common.raise_nofile_limit(len(devices) + FD_MARGIN)
        asyncio.run(Worker(index, host, port, devices, options, results).run(commands))
    except Exception as exc:
        results.put({"index": index, "phase": "crash", "error": f"{type(exc).__name__}: {exc}"})


class Fleet:
    """Idle devices in ``ceil(len(devices) / per_process)`` worker processes, driven from this process."""

    def __init__(
        self,
        host,
        port,
        devices,
        *,
        per_process=1000,
        processes=None,
        keepalive=60,
        subscribe=True,
        concurrency=200,
        timeout=120.0,
    ):
        if host not in LOCAL_HOSTS:
            raise FleetError(f"refusing to connect to {host}: only 127.0.0.1")
        self.host, self.port, self.devices = host, port, list(devices)
        count = processes or max(1, -(-len(self.devices) // per_process))
        self.shares = [s for s in (self.devices[i::count] for i in range(count)) if s]
        self.options = {
            "keepalive": keepalive,
            "subscribe": subscribe,
            "concurrency": concurrency,  # connections opening at once per process (None: all)
            "timeout": timeout,
        }
        self.timeout = timeout
        self.context = multiprocessing.get_context("spawn")
        self.results = self.context.Queue()
        self.commands = []
        self.workers = []

    def __len__(self):
        return len(self.devices)

    def start(self):
        common.raise_nofile_limit(max(len(s) for s in self.shares) + FD_MARGIN)  # inherited by the workers
        for index, share in enumerate(self.shares):
            commands = self.context.Queue()
            worker = self.context.Process(
                target=run_worker,
                args=(index, self.host, self.port, share, self.options, commands, self.results),
                name=f"idle-clients-{index}",
                daemon=True,
            )
            worker.start()
            self.commands.append(commands)
            self.workers.append(worker)
        self._collect("started", 60)
        return self

    def _collect(self, phase, timeout, check=None):
        reports = {}
        deadline = time.monotonic() + timeout
        while len(reports) < len(self.workers):
            try:
                report = self.results.get(timeout=0.2)
            except queue.Empty:
                report = None
            if report is not None:
                if report["phase"] == "crash":
                    raise FleetError(f"idle-client process {report['index']} crashed: {report['error']}")
                if report["phase"] == phase:
                    reports[report["index"]] = report
            dead = [w.name for i, w in enumerate(self.workers) if w.exitcode is not None and i not in reports]
            if dead and report is None:
                raise FleetError(f"idle-client process(es) {', '.join(dead)} exited")
            if check is not None:
                check()
            if time.monotonic() > deadline:
                raise FleetError(f"idle clients: no '{phase}' report from every process within {timeout:.0f}s")
        return [reports[i] for i in sorted(reports)]

    def _send(self, command, argument=None):
        for commands in self.commands:
            commands.put((command, argument))

    def connect(self, start_in=0.5, check=None):
        """Every process opens all its connections at ``now + start_in``; returns the summed figures.

        ``check`` is called while waiting (e.g. to raise if the hub died)."""
        self._send("connect", time.monotonic() + start_in)
        reports = self._collect("connected", self.timeout * 3 + start_in + 30, check)
        failures = Counter()
        for report in reports:
            failures.update(report["failures"])

        def pick(key, func):
            values = [r[key] for r in reports if r[key] is not None]
            return func(values) if values else None

        return {
            "attempted": sum(r["attempted"] for r in reports),
            "accepted": sum(r["accepted"] for r in reports),
            "failures": dict(failures),
            "first_attempt": pick("first_attempt", min),
            "first_connect": pick("first_connect", min),
            "last_connack": pick("last_connack", max),
            "last_suback": pick("last_suback", max),
            "connacks": sum(r["connacks"] for r in reports),
            "subacks": sum(r["subacks"] for r in reports),
            "processes": len(reports),
            "cpu": sum(r["cpu"] for r in reports),
        }

    def status(self):
        self._send("status")
        reports = self._collect("status", 30)
        return {key: sum(r[key] for r in reports) for key in ("open", "lost", "pings", "pingresps", "commands")}

    def disconnect(self):
        self._send("disconnect")
        return sum(r["unclosed"] for r in self._collect("disconnected", 30))

    def close(self):
        with contextlib.suppress(Exception):
            self._send("stop")
        common.stop_processes(self.workers)
        with contextlib.suppress(Exception):
            self.results.close()
        self.workers, self.commands = [], []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def add_fleet_options(parser):
    """The idle-device options every script that uses a Fleet shares."""
    parser.add_argument("--per-process", type=int, default=1000, help="idle devices per idle-client process")
    parser.add_argument("--keepalive", type=int, default=60, help="keepalive of the idle devices (seconds)")


def describe_failures(failures, limit=3):
    """``"12 x CONNACK return code 5; ..."`` for the most common failures."""
    common = Counter(failures).most_common(limit)
    return "; ".join(f"{count} x {reason}" for reason, count in common)


def main(argv=None):
    import ingest

    parser = argparse.ArgumentParser(description="Hold idle, subscribed MQTT devices against a running hub.")
    parser.add_argument("--hub-url", required=True, help="mqtt://127.0.0.1:PORT of a running hub")
    parser.add_argument("--data-dir", required=True, help="that hub's data directory (to provision devices)")
    parser.add_argument("--devices", type=int, default=1000)
    add_fleet_options(parser)
    parser.add_argument("--duration", type=float, default=0, help="seconds to hold them (0: until Ctrl+C)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        hub = ingest.external_hub(args.hub_url, args.data_dir)
        devices = hub.provision(args.devices, f"idle-{secrets.token_hex(3)}-")
        with Fleet(hub.host, hub.mqtt_port, devices, per_process=args.per_process, keepalive=args.keepalive) as fleet:
            figures = fleet.connect()
            print(
                f"idle-clients connected={figures['accepted']}/{figures['attempted']} "
                f"in {figures['last_suback'] - figures['first_attempt']:.2f}s",
                flush=True,
            )
            if figures["failures"]:
                print(f"failures: {describe_failures(figures['failures'])}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + args.duration if args.duration else None
            while deadline is None or time.monotonic() < deadline:
                time.sleep(5)
                state = fleet.status()
                print(f"open={state['open']} lost={state['lost']} pings={state['pings']}", flush=True)
        return 0
    except common.BenchError as exc:
        print(f"idle-clients: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
