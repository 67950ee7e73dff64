"""Durability benchmark: QoS 1 publishing under load, SIGKILL of the hub, restart, and the count of messages
that were acknowledged (PUBACK received) but are missing from the database. The goal is 0.

Each run:

1. starts its own ``hubserver run`` (free ports of 127.0.0.1, fresh data directory) and provisions
   ``--devices`` weather stations;
2. ``--processes`` load-generator processes (connections from ``bench/mqttload.py``, one per device)
   publish QoS 1 readings as fast as the hub takes them (up to ``--window`` unacknowledged per device),
   each payload with a unique ``"seq": "<device id>:<n>"`` field (kept in ``Message.payload_json``); each
   generator records exactly which messages were acknowledged;
3. after ``--kill-after`` seconds of load it sends SIGKILL to the hub (its whole process group);
4. restarts the hub on the same data directory (it must come up and accept a QoS 1 message again), stops
   the load, stops the hub with SIGTERM;
5. reads every ``seq`` of the run's devices from the SQLite database and counts the acknowledged ones that
   are not there.

One line per run, then the total as the last line:

    durability run=1 acked=.. stored=.. missing=0 in_flight_stored=.. restart=..s
    durability runs=3 acked=.. stored=.. missing=0 restarts_ok=3/3

Run ``python bench/durability.py --help`` for the options. Traffic goes to 127.0.0.1 only; Ctrl+C or
SIGTERM stops the generators and the hub.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import mqttload

MAX_PER_DEVICE = 65_000  # packet id n % 65535 + 1 then names message n of its device unambiguously


class SeqPayloads:
    """Payloads made on demand (``publish_all`` slices it in order): a reading plus ``seq``."""

    def __init__(self, device_id, count):
        self.device_id = device_id
        self.count = count
        self.rng = random.Random(device_id)

    def __len__(self):
        return self.count

    def __getitem__(self, window):
        out = []
        for n in range(*window.indices(self.count)):
            reading = mqttload.weather_reading(self.rng)
            reading["seq"] = f"{self.device_id}:{n}"
            out.append(json.dumps(reading, separators=(",", ":")).encode())
        return out


def acknowledged(publisher):
    """Numbers of the messages this connection got a PUBACK for (sent, and no longer awaiting one)."""
    return [n for n in range(publisher.result.sent) if n % 65535 + 1 not in publisher.sent_at]


async def _generate(index, port, devices, window, events, results):
    go, stop = events
    sem = asyncio.Semaphore(50)

    async def connect(credentials):
        async with sem:
            return await mqttload.open_device("127.0.0.1", port, credentials, window, 60)

    try:
        publishers = await asyncio.gather(*(connect(d) for d in devices))
    except Exception as exc:
        results.put({"index": index, "phase": "ready", "error": f"{type(exc).__name__}: {exc}"})
        return
    results.put({"index": index, "phase": "ready", "error": None})
    while not go.is_set():
        if stop.is_set():
            return
        await asyncio.sleep(0.002)
    load = asyncio.gather(
        *(
            p.publish_all(d["topics"]["data"], SeqPayloads(d["device_id"], MAX_PER_DEVICE), 1, 3600)
            for p, d in zip(publishers, devices, strict=True)
        ),
        return_exceptions=True,
    )
    while not load.done() and not stop.is_set():
        await asyncio.sleep(0.01)
    if not load.done():
        load.cancel()
    with contextlib.suppress(BaseException):
        await load
    for publisher in publishers:
        publisher.disconnect()
    results.put(
        {
            "index": index,
            "phase": "done",
            "sent": sum(p.result.sent for p in publishers),
            "acked": {d["device_id"]: acknowledged(p) for p, d in zip(publishers, devices, strict=True)},
        }
    )


def generator(index, port, devices, window, events, results):
    """Entry point of one load-generator process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl+C and stops us
    try:
        asyncio.run(_generate(index, port, devices, window, events, results))
    except Exception as exc:
        results.put({"index": index, "phase": "crash", "error": f"{type(exc).__name__}: {exc}"})


async def _one_message(port, credentials):
    publisher = await mqttload.open_device("127.0.0.1", port, credentials, 1, 30)
    try:
        payload = json.dumps({"temperature": 20.0, "seq": f"{credentials['device_id']}:after-restart"}).encode()
        await publisher.publish_all(credentials["topics"]["data"], [payload], 1, 30)
    finally:
        publisher.disconnect()


def kill_hub(hub):
    """SIGKILL the hub's process group (ours: it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(hub.process.pid, signal.SIGKILL)
    hub.process.wait(30)


def stored_seqs(db_path, topic_prefix):
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            f"SELECT json_extract(payload_json, '$.seq') FROM {common.MESSAGE_TABLE} WHERE topic LIKE ?",
            (topic_prefix + "%/data",),
        ).fetchall()
    finally:
        db.close()
    return {row[0] for row in rows if row[0] is not None}


def one_run(number, args, directory):
    hub = common.Hub(directory).start()
    restarted = None
    generators = None
    try:
        prefix = f"dur-{secrets.token_hex(3)}-"
        devices = hub.provision(args.devices, prefix)
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        generators = common.Generators(
            generator,
            devices,
            args.processes,
            lambda i, share, events, results: (i, hub.mqtt_port, share, args.window, events, results),
            "durability-load",
        )
        workers, results = generators.workers, generators.results
        generators.start(120, hub.check_alive)
        generators.go.set()
        time.sleep(args.kill_after)
        hub.check_alive()
        kill_hub(hub)
        killed_at = time.monotonic()
        print(f"run {number}: SIGKILL sent to the hub after {args.kill_after:.1f}s of load; restarting", flush=True)

        started = time.monotonic()
        restarted = common.Hub(directory).start()
        restart_seconds = time.monotonic() - started
        asyncio.run(_one_message(restarted.mqtt_port, devices[0]))

        # Stop the load (the connections died with the hub) and collect what each device had acknowledged.
        generators.stop.set()
        reports = {}
        deadline = time.monotonic() + 60
        while len(reports) < len(workers) and time.monotonic() < deadline:
            report = common.drain(results, 0.2)
            if report is None:
                continue
            if report["phase"] == "crash":
                raise common.BenchError(f"generator {report['index']} crashed: {report['error']}")
            if report["phase"] == "done":
                reports[report["index"]] = report
        if len(reports) < len(workers):
            raise common.BenchError("a generator did not report what was acknowledged")
        code = restarted.stop()
        if code not in (0, None):
            print(f"warning: the restarted hub exited with status {code}", file=sys.stderr, flush=True)

        acked = {f"{device}:{n}" for r in reports.values() for device, ns in r["acked"].items() for n in ns}
        sent = sum(r["sent"] for r in reports.values())
        stored = stored_seqs(hub.db_path, topic_prefix) - {f"{devices[0]['device_id']}:after-restart"}
        missing = acked - stored
        figures = {
            "acked": len(acked),
            "sent": sent,
            "stored": len(stored),
            "missing": len(missing),
            "in_flight_stored": len(stored - acked),
            "restart": restart_seconds,
            "killed_to_up": time.monotonic() - killed_at,
            "examples": sorted(missing)[:5],
        }
        print(
            f"durability run={number} devices={args.devices} kill_after={args.kill_after:.1f}s sent={sent} "
            f"acked={figures['acked']} stored={figures['stored']} missing={figures['missing']} "
            f"in_flight_stored={figures['in_flight_stored']} restart={restart_seconds:.1f}s",
            flush=True,
        )
        if missing:
            print(f"warning: acknowledged but missing, e.g. {figures['examples']}", file=sys.stderr, flush=True)
        return figures
    finally:
        if generators is not None:
            generators.close()
        for h in (restarted, hub):
            if h is not None and h.process is not None and h.process.poll() is None:
                with contextlib.suppress(Exception):
                    h.stop()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Acknowledged QoS 1 messages lost when the hub is SIGKILLed under load (bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=3, help="kill/restart runs, each on a fresh data directory")
    parser.add_argument("--devices", type=int, default=100, help="publishing devices, one connection each")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=20, help="unacknowledged QoS 1 messages per device")
    parser.add_argument("--kill-after", type=float, default=5.0, help="seconds of load before the SIGKILL")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directories")
    args = parser.parse_args(argv)
    if min(args.runs, args.devices, args.processes, args.window) < 1 or args.kill_after <= 0:
        parser.error("--runs, --devices, --processes, --window must be at least 1; --kill-after positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    runs = []
    with common.Main("durability") as run:
        temporary = run.temporary("hubserver-durability-", keep=args.keep_data)
        print(f"data in {temporary}", flush=True)
        for number in range(1, args.runs + 1):
            runs.append(one_run(number, args, Path(temporary) / f"run{number}"))
        print(
            f"durability runs={len(runs)} acked={sum(r['acked'] for r in runs)} "
            f"stored={sum(r['stored'] for r in runs)} missing={sum(r['missing'] for r in runs)} "
            f"restarts_ok={len(runs)}/{args.runs}",
            flush=True,
        )
        return 0 if all(r["missing"] == 0 for r in runs) else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
