"""Storage benchmark: bytes on disk per device message.

Starts its own ``hubserver run`` (fresh data directory, SQLite), provisions ``--devices`` weather stations
and publishes ``--messages`` five-reading messages at QoS 1 (``{"temperature", "humidity", "pressure",
"wind_speed", "rain"}``), stops the hub, checkpoints the WAL and reads the size of every table and index
from SQLite's ``dbstat``. The figures are the last line, e.g.::

    storage messages=20000 bytes_per_message=475.1 message=241.9 message_indexes=50.6 reading=101.8 ...

Run ``python bench/storage.py --help`` for the options. Traffic goes to 127.0.0.1 only.
"""

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import sys
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

    def acked(self):
        return sum(p.result.acked for p in self.publishers)

    def close(self):
        for publisher in self.publishers:
            publisher.disconnect()


def start_hub(run, keep=False):
    hub = common.Hub(run.temporary("hubserver-storage-", keep=keep))
    run.stop(hub).start()
    return hub


def size_line(label, sizes, pages, messages, extra=""):
    parts = [f"{label} messages={messages}"]
    if messages:
        message = sizes.get("message", (0, 0, 0))
        reading = sizes.get("reading", (0, 0, 0))
        rollup = sizes.get("rollup", (0, 0, 0))
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Bytes on disk per message, and the database size with retention (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages of the bytes-per-message run")
    parser.add_argument("--devices", type=int, default=100, help="publishing devices")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for acknowledgements")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directories")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.devices < 1:
        parser.error("--messages and --devices must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    with common.Main("storage") as run:
        hub = start_hub(run, keep=args.keep_data)
        print(f"publishing {args.messages} five-reading messages from {args.devices} devices", flush=True)
        sent = asyncio.run(measure_burst(hub, args))
        hub.check_alive()
        hub.stop()
        sizes, pages = table_sizes(hub.db_path)
        print(size_line("storage", sizes, pages, sent), flush=True)
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
