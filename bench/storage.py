"""Storage benchmark: bytes on disk per device message, and the database size with and without retention.

1. Bytes per message: starts its own ``hubserver run`` (fresh data directory, SQLite), provisions ``--devices``
   weather stations and publishes ``--messages`` five-reading messages at QoS 1 (``{"temperature",
   "humidity", "pressure", "wind_speed", "rain"}``), stops the hub, checkpoints the WAL and reads the size of
   every table and index from SQLite's ``dbstat``.
2. The same load paced at ``--rate`` for ``--seconds``, against a fresh hub with no retention and then
   against one that keeps messages, readings and rollups for ``--retention`` (pruning every
   ``--prune-interval`` s): the database size after the same number of messages, with and without.

``--soak SECONDS`` runs only the paced load with retention, that long, printing the size of the database
files every ``--every`` seconds; its last line says when they last grew and whether the database stopped
growing (its size at the end against its size at half time: "stopped" below 1.1).

The figures are the last lines, e.g.::

    storage messages=20000 bytes_per_message=475.1 message=241.9 message_indexes=50.6 reading=101.8 ...
    storage-paced retention=none messages=120000 ... db_bytes=60403712 ...
    storage-paced retention=1m messages=120000 ... db_bytes=20111360 ... growth=stopped

Run ``python bench/storage.py --help`` for the options. Traffic goes to 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import mqttload

TYPE = "weatherstation"
TABLES = {
    "message": f"devicetypes_{TYPE}message",
    "reading": f"devicetypes_{TYPE}reading",
    "rollup": f"devicetypes_{TYPE}rollup",
}


def five_readings(rng):
    """A weather-station message with all five of its readings, inside the declared ranges."""
    reading = mqttload.weather_reading(rng)
    reading["wind_speed"] = round(rng.uniform(0.0, 25.0), 1)
    reading["rain"] = round(rng.choice((0.0, 0.0, 0.0, rng.uniform(0.0, 4.0))), 1)
    return json.dumps(reading, separators=(",", ":")).encode()


def table_sizes(db_path):
    """``{part: (table bytes, index bytes, rows)}`` for the message, reading and rollup tables."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        sizes = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        schema = db.execute("SELECT name, tbl_name, type FROM sqlite_schema").fetchall()
        out = {}
        for part, table in TABLES.items():
            if not any(name == table for name, _, _ in schema):
                continue
            indexes = sum(sizes.get(name, 0) for name, tbl, kind in schema if tbl == table and kind == "index")
            rows = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            out[part] = (sizes.get(table, 0), indexes, rows)
        pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        return out, pages
    finally:
        db.close()


class Fleet:
    """Connected devices publishing QoS 1 messages; ``publish(n)`` spreads n messages over them."""

    def __init__(self, devices, seed=1):
        self.devices = devices
        self.rng = random.Random(seed)
        self.publishers = []
        self.next_id = []
        self.sent = 0

    async def connect(self, hub, timeout=60):
        semaphore = asyncio.Semaphore(50)

        async def one(credentials):
            async with semaphore:
                return await mqttload.open_device(hub.host, hub.mqtt_port, credentials, 1000, timeout)

        self.publishers = await asyncio.gather(*(one(d) for d in self.devices))
        self.next_id = [0] * len(self.publishers)

    async def burst(self, count, timeout):
        """``count`` messages as fast as the hub acknowledges them (at most 20 in flight per device)."""
        share = [count // len(self.devices) + (i < count % len(self.devices)) for i in range(len(self.devices))]
        await asyncio.gather(
            *(
                p.publish_all(d["topics"]["data"], [five_readings(self.rng) for _ in range(n)], 1, timeout)
                for p, d, n in zip(self.publishers, self.devices, share, strict=True)
                if n
            )
        )
        self.sent += count

    def write(self, count):
        """Write ``count`` PUBLISHes round robin without waiting (paced runs); PUBACKs are read as they come."""
        fixed = bytes([(mqttload.PUBLISH << 4) | (1 << 1)])
        for _ in range(count):
            slot = self.sent % len(self.publishers)
            publisher = self.publishers[slot]
            publisher._check()
            self.next_id[slot] = self.next_id[slot] % 65535 + 1
            variable = mqttload._string(self.devices[slot]["topics"]["data"]) + struct.pack("!H", self.next_id[slot])
            payload = five_readings(self.rng)
            publisher.sent_at[self.next_id[slot]] = time.monotonic()
            publisher.transport.write(fixed + mqttload._length(len(variable) + len(payload)) + variable + payload)
            self.sent += 1

    def acked(self):
        return sum(p.result.acked for p in self.publishers)

    def close(self):
        for publisher in self.publishers:
            publisher.disconnect()


async def paced(fleet, rate, seconds, report=None, every=30.0):
    """Publish at ``rate`` msg/s for ``seconds``; ``report(elapsed)`` every ``every`` seconds."""
    start = time.monotonic()
    base = fleet.sent
    next_report = every
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) - (fleet.sent - base)
        if due > 0:
            fleet.write(due)
        if report is not None and elapsed >= next_report:
            report(elapsed)
            next_report += every
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def start_hub(run, args, retention=None, keep=False):
    directory = run.temporary("hubserver-storage-", keep=keep)
    hub = common.Hub(directory)
    hub.env.update(retention_environment(retention or "forever", args.prune_interval))
    run.stop(hub).start()
    return hub


def retention_environment(retention, interval):
    return {
        "HUBSERVER_MESSAGE_RETENTION": retention,
        "HUBSERVER_READING_RETENTION": retention,
        "HUBSERVER_ROLLUP_RETENTION": retention,
        "HUBSERVER_PRUNE_INTERVAL": str(interval),
    }


def db_files_size(hub):
    total = 0
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(hub.db_path) + suffix)
        if path.exists():
            total += path.stat().st_size
    return total


def size_line(label, sizes, pages, messages, extra="", per_message=True):
    """The burst's figures per message; a paced run's table sizes, rows kept and database size."""
    parts = [f"{label} messages={messages}"]
    message = sizes.get("message", (0, 0, 0))
    reading = sizes.get("reading", (0, 0, 0))
    rollup = sizes.get("rollup", (0, 0, 0))
    if per_message and messages:
        per = (sum(message[:2]) + sum(reading[:2])) / messages
        parts += [
            f"bytes_per_message={per:.1f}",
            f"message={message[0] / messages:.1f}",
            f"message_indexes={message[1] / messages:.1f}",
            f"reading={reading[0] / messages:.1f}",
            f"reading_indexes={reading[1] / messages:.1f}",
        ]
        if "rollup" in sizes:
            parts.append(f"rollups={sum(rollup[:2]) / messages:.1f}")
    elif not per_message:
        parts += [
            f"message_bytes={sum(message[:2])}",
            f"reading_bytes={sum(reading[:2])}",
            f"rollup_bytes={sum(rollup[:2])}",
        ]
    parts.append(f"db_bytes={pages}")
    for part, (_, _, rows) in sizes.items():
        parts.append(f"rows_{part}={rows}")
    return " ".join(parts) + extra


async def measure_burst(hub, args):
    devices = hub.provision(args.devices, f"st-{secrets.token_hex(3)}-")
    fleet = Fleet(devices)
    await fleet.connect(hub)
    try:
        await fleet.burst(args.messages, args.timeout)
    finally:
        fleet.close()
    return fleet.sent


async def measure_paced(hub, args, seconds, every, on_report):
    devices = hub.provision(args.devices, f"st-{secrets.token_hex(3)}-")
    fleet = Fleet(devices)
    await fleet.connect(hub)
    start_acked = fleet.acked()
    try:
        elapsed = await paced(fleet, args.rate, seconds, lambda t: on_report(t, fleet), every)
        deadline = time.monotonic() + args.timeout
        while fleet.acked() - start_acked < fleet.sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        fleet.close()
    return fleet.sent, fleet.acked() - start_acked, elapsed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Bytes on disk per message, and the database size with retention (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages of the bytes-per-message run")
    parser.add_argument("--devices", type=int, default=100, help="publishing devices")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second of the paced runs")
    parser.add_argument("--seconds", type=float, default=120.0, help="length of each paced run")
    parser.add_argument("--retention", default="1m", help="retention of messages, readings and rollups when on")
    parser.add_argument("--prune-interval", type=float, default=10.0, help="the hub's PRUNE_INTERVAL (seconds)")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="only a paced run this long, with retention")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between size reports of paced runs")
    parser.add_argument("--no-paced", action="store_true", help="only the bytes-per-message run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for acknowledgements")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directories")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.devices < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--messages, --devices, --rate and --seconds must be positive")
    return args


def run_paced(run, args, seconds, label, retention):
    hub = start_hub(run, args, retention=retention, keep=args.keep_data)
    samples = []

    def report(elapsed, fleet):
        size = db_files_size(hub)
        samples.append((elapsed, size))
        print(
            f"{label}-progress t={elapsed:.0f}s sent={fleet.sent} acked={fleet.acked()} db_files_bytes={size}",
            flush=True,
        )

    every = min(args.every, seconds / 8)  # enough size samples to tell growth from a plateau
    sent, acked, elapsed = asyncio.run(measure_paced(hub, args, seconds, every, report))
    hub.check_alive()
    hub.stop()
    sizes, pages = table_sizes(hub.db_path)
    return sent, acked, elapsed, sizes, pages, samples


def growth_verdict(samples):
    """When the database files last grew, and their growth over the run's last half: "stopped" if they did
    not grow by a tenth of their size in it."""
    if len(samples) < 4:
        return " growth=unknown (too few samples)"
    last_growth = max((t for (t, size), (_, before) in zip(samples[1:], samples, strict=False) if size > before),
                      default=samples[0][0])  # fmt: skip
    half = samples[-1][0] / 2
    at_half = max(size for t, size in samples if t <= half)
    end = samples[-1][1]
    ratio = end / at_half if at_half else float("inf")
    verdict = "stopped" if ratio < 1.1 else "growing"
    return (
        f" files_at_half={at_half} files_at_end={end} last_growth_at={last_growth:.0f}s "
        f"growth_ratio={ratio:.2f} growth={verdict}"
    )


def main(argv=None):
    args = parse_args(argv)
    with common.Main("storage") as run:
        if args.soak:
            print(f"soak: {args.rate:.0f} msg/s for {args.soak:.0f}s, retention {args.retention}", flush=True)
            sent, acked, _, sizes, pages, samples = run_paced(run, args, args.soak, "soak", args.retention)
            print(
                size_line("storage-soak", sizes, pages, acked, f" sent={sent} retention={args.retention}", False)
                + growth_verdict(samples),
                flush=True,
            )
            return 0 if acked == sent else 1

        hub = start_hub(run, args, keep=args.keep_data)
        print(f"publishing {args.messages} five-reading messages from {args.devices} devices", flush=True)
        sent = asyncio.run(measure_burst(hub, args))
        hub.check_alive()
        hub.stop()
        sizes, pages = table_sizes(hub.db_path)
        lines = [size_line("storage", sizes, pages, sent)]
        if not args.no_paced:
            for retention in (None, args.retention):
                print(
                    f"publishing at {args.rate:.0f} msg/s for {args.seconds:.0f}s, retention {retention or 'none'}",
                    flush=True,
                )
                sent, acked, _, sizes, pages, samples = run_paced(run, args, args.seconds, "paced", retention)
                lines.append(
                    size_line(
                        "storage-paced", sizes, pages, acked, f" sent={sent} retention={retention or 'none'}", False
                    )
                    + (growth_verdict(samples) if retention else "")
                )
        for line in lines:
            print(line, flush=True)
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
