"""Purge benchmark: messages stored per second while the hub removes a backlog of expired rows, against the
same load with no removal going on (goal: ratio >= 0.9).

1. A fresh data directory; ``--devices`` weather stations are provisioned, and a backlog of ``--backlog``
   messages and as many readings, 60 days old, is written into their tables directly (sqlite3).
2. Rounds (``--rounds``), each two runs of ``ingest.py``'s load (QoS 1, ``--messages-per-device`` per
   device, 2 generator processes), each against a fresh ``hubserver run`` on that directory:

   - *quiet*: ``HUBSERVER_PRUNE_INTERVAL=0``: the hub removes nothing;
   - *purging*: ``HUBSERVER_PRUNE_INTERVAL=1`` with ``MESSAGE_RETENTION`` and ``READING_RETENTION`` of 30
     days: the hub removes the backlog in batches meanwhile. The run is measured only once removal has
     started, and counts only if backlog was left when the load ended (removal went on for all of it).

The last lines: one ``ingest.py`` figures line per run (prefixed ``quiet`` / ``purging``), then

    purge quiet=17000 msg/s purging=16000 msg/s ratio=0.94 removed_during_runs=... backlog_left=...

Run ``python bench/purge.py --help`` for the options. Traffic goes to 127.0.0.1 only.
"""

import argparse
import secrets
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import ingest

MESSAGES = "devicetypes_weatherstationmessage"
READINGS = "devicetypes_weatherstationreading"
AGE = timedelta(days=60)


def write_backlog(db_path, device_ids, count):
    """``count`` messages and readings 60 days old, spread over the devices (one transaction per 50,000)."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        marks = ",".join("?" * len(device_ids))
        query = f"SELECT id FROM devicetypes_weatherstationdevice WHERE device_id IN ({marks})"
        pks = [row[0] for row in db.execute(query, device_ids)]
        start = datetime.now(UTC) - AGE
        for first in range(0, count, 50_000):
            db.execute("BEGIN")
            messages, readings = [], []
            for n in range(first, min(count, first + 50_000)):
                when = common.stored_time(start + timedelta(milliseconds=n))
                device = pks[n % len(pks)]
                messages.append(
                    (
                        device,
                        "things/weatherstation/backlog/data",
                        "",  # inbound, application/json and completed: stored as '' (UsualValueCharField)
                        '{"temperature":20.5,"humidity":40.0}',
                        "",
                        "",
                        "{}",
                        "",
                        "",
                        when,
                        when,
                        "",
                        "",
                    )
                )
                readings.append((device, when, when, 20.5, 40.0))
            db.executemany(
                f"INSERT INTO {MESSAGES} (device_id, topic, direction, payload_json, content_type, correlation_id, "
                "user_properties, processing_status, processing_error, received_at, processed_at, command, "
                "command_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                messages,
            )
            db.executemany(
                f"INSERT INTO {READINGS} (device_id, timestamp, received_at, temperature, humidity) "
                "VALUES (?, ?, ?, ?, ?)",
                readings,
            )
            db.execute("COMMIT")
    finally:
        db.close()


def backlog_left(db_path):
    cutoff = common.stored_time(datetime.now(UTC) - timedelta(days=30))
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return sum(
            db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} < ?", (cutoff,)).fetchone()[0]
            for table, column in ((MESSAGES, "received_at"), (READINGS, "timestamp"))
        )
    finally:
        db.close()


def one_run(run, directory, devices, topic_prefix, load_args, purging):
    hub = common.Hub(directory)
    hub.env.update(
        {"HUBSERVER_PRUNE_INTERVAL": "1", "HUBSERVER_MESSAGE_RETENTION": "30d", "HUBSERVER_READING_RETENTION": "30d"}
        if purging
        else {"HUBSERVER_PRUNE_INTERVAL": "0"}
    )
    hub.start()
    try:
        before = backlog_left(hub.db_path)
        if purging:  # measure only once removal is under way
            deadline = time.monotonic() + 30
            while backlog_left(hub.db_path) >= before:
                hub.check_alive()
                if time.monotonic() > deadline:
                    raise common.BenchError("the hub removed nothing within 30 s")
                time.sleep(0.2)
            before = backlog_left(hub.db_path)
        figures = ingest.run_load(hub, devices, topic_prefix, load_args, load_args.processes)
        after = backlog_left(hub.db_path)
    finally:
        hub.stop()
    figures["removed"] = before - after
    figures["left"] = after
    return figures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Ingest while the hub removes expired rows, against ingest without (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=100, help="publishing devices")
    parser.add_argument("--messages-per-device", type=int, default=300, help="messages per device per run")
    parser.add_argument("--backlog", type=int, default=2_000_000, help="expired messages (and readings) to remove")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/purging pairs")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    common.check_positive(
        parser, args, "devices", "messages_per_device", "backlog", "rounds", message="every count must be at least 1"
    )
    return args


def main(argv=None):
    args = parse_args(argv)
    load_args = ingest.parse_args(
        ["--devices", str(args.devices), "--messages-per-device", str(args.messages_per_device)]
    )
    with common.Main("purge") as run:
        directory = run.temporary("hubserver-purge-", keep=args.keep_data)
        hub = common.Hub(directory)
        prefix = f"purge-{secrets.token_hex(3)}-"
        devices = hub.provision(args.devices, prefix)
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        print(f"writing a backlog of {args.backlog} expired messages and readings", flush=True)
        started = time.monotonic()
        write_backlog(hub.db_path, [d["device_id"] for d in devices], args.backlog)
        print(f"backlog written in {time.monotonic() - started:.1f}s", flush=True)
        results = {"quiet": [], "purging": []}
        for round_number in range(1, args.rounds + 1):
            for label in ("quiet", "purging"):
                figures = one_run(run, directory, devices, topic_prefix, load_args, label == "purging")
                if label == "purging" and not figures["left"]:
                    raise common.BenchError("the backlog ran out during a run: raise --backlog")
                results[label].append(figures)
                print(
                    f"round {round_number} {label}: rate={figures['rate']:.0f} msg/s "
                    f"removed_during_run={figures['removed']} backlog_left={figures['left']}",
                    flush=True,
                )
        for label, runs in results.items():
            for figures in runs:
                print(f"{label} {ingest.figures_line(figures)}", flush=True)
        quiet = statistics.median(f["rate"] for f in results["quiet"])
        purging = statistics.median(f["rate"] for f in results["purging"])
        removed = sum(f["removed"] for f in results["purging"])
        print(
            f"purge quiet={quiet:.0f} msg/s purging={purging:.0f} msg/s ratio={purging / quiet:.2f} "
            f"removed_during_runs={removed} backlog_left={results['purging'][-1]['left']}",
            flush=True,
        )
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
