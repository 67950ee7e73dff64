"""Ingest benchmark: how many device messages a second the hub commits to its database.

By default it starts its own ``hubserver run`` on free local ports with a fresh data directory, provisions
``--devices`` weather stations (each with its own credentials) with ``hubserver provision``, and spawns
``--processes`` load-generator processes (``bench/mqttload.py``) that publish ``--messages-per-device``
readings per device at ``--qos``, with up to ``--window`` unacknowledged messages per device.

The committed rate is counted in the database itself: the new rows of the WeatherStation message table
(read-only SQLite connection), from the first PUBLISH until the count reaches the total. The last lines
printed are the figures, e.g.

    ingest qos=1 devices=100 messages=30000 committed=30000 elapsed=3.21s rate=9345 msg/s \
publish_rate=9400 msg/s puback_p50=12.1ms puback_p99=40.2ms generator_processes=2

Run ``python bench/ingest.py --help`` for the options. Traffic goes to 127.0.0.1 only.
"""

import argparse
import secrets
import socket
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mqttload
from common import DB_NAME, MESSAGE_TABLE, BenchError, Generators, Hub, Main, check_positive, drain, percentile


class RowCounter:
    """Counts the message rows of our devices, read-only, without scanning rows older than the run."""

    def __init__(self, db_path, topic_prefix):
        if not Path(db_path).exists():
            raise BenchError(f"no database at {db_path} (is --data-dir the hub's data directory?)")
        self.db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        self.pattern = topic_prefix + "%/data"
        self.base = self.db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {MESSAGE_TABLE}").fetchone()[0]

    def total(self):
        return self.db.execute(f"SELECT COUNT(*) FROM {MESSAGE_TABLE}").fetchone()[0]

    def new(self):
        """Rows committed since this counter was made, on our devices' data topics."""
        return self.db.execute(
            f"SELECT COUNT(*) FROM {MESSAGE_TABLE} WHERE id > ? AND topic LIKE ?", (self.base, self.pattern)
        ).fetchone()[0]

    def close(self):
        self.db.close()


def load_generators(host, port, devices, args, processes, qos):
    """``processes`` bench/mqttload.py processes sharing ``devices``, with ``args``' messages, window, timeout."""

    def worker_args(index, share, events, results):
        messages = args.messages_per_device
        events = (None, *events)
        return (index, host, port, share, messages, qos, args.window, args.timeout, events, results, args.protocol)

    return Generators(mqttload.run_worker, devices, processes, worker_args, "mqttload")


def run_load(hub, devices, topic_prefix, args, processes):
    """One measured run with ``processes`` generator processes; returns the figures as a dict."""
    total = len(devices) * args.messages_per_device
    # The hub's own database (SQLite), unless the target counts its rows elsewhere (bench/scaleout.py).
    counter = hub.row_counter(topic_prefix) if hasattr(hub, "row_counter") else RowCounter(hub.db_path, topic_prefix)
    rows_before = counter.total()
    generators = load_generators(hub.host, hub.mqtt_port, devices, args, processes, args.qos)
    workers, results = generators.workers, generators.results
    try:
        generators.start(args.timeout, hub.check_alive)

        # Everything is connected: go, and watch the table fill up.
        hub_cpu_before = hub.cpu_seconds()
        generators.go.set()
        done = {}
        committed = counter.new()
        committed_at = None
        hub_cpu = None
        last_progress, last_count = time.monotonic(), committed
        deadline = time.monotonic() + args.timeout
        while True:
            committed = counter.new()
            now = time.monotonic()
            if committed >= total:
                committed_at = now
                hub_cpu = hub.cpu_seconds()
                break
            if committed != last_count:
                last_progress, last_count = now, committed
            while (report := drain(results, 0)) is not None:
                if report["phase"] == "crash":
                    raise BenchError(f"generator {report['index']} crashed: {report['error']}")
                done[report["index"]] = report
            # Everything published and nothing new for a while (QoS 0 drops, or failures): stop waiting.
            if len(done) == len(workers) and now - last_progress > args.settle:
                break
            if now > deadline:
                break
            hub.check_alive()
            time.sleep(0.005)
        while len(done) < len(workers) and time.monotonic() < deadline + 10:
            report = drain(results, 0.2)
            if report is not None:
                done[report["index"]] = report
    finally:
        generators.close()
        counter.close()

    errors = [r["error"] for r in done.values() if r.get("error")]
    firsts = [r["first_publish"] for r in done.values() if r.get("first_publish") is not None]
    lasts = [r["last_ack"] for r in done.values() if r.get("last_ack") is not None]
    latencies = sorted(x for r in done.values() for x in r.get("latencies", ()))
    acked = sum(r.get("acked", 0) for r in done.values())
    first = min(firsts) if firsts else None
    if first is None:
        raise BenchError("no generator reported publishing: " + "; ".join(errors or ["no report"]))
    end = committed_at if committed_at is not None else time.monotonic()
    if hub_cpu is None:
        hub_cpu = hub.cpu_seconds()
    elapsed = end - first
    publish_elapsed = (max(lasts) - first) if lasts else None
    return {
        "protocol": args.protocol,
        "qos": args.qos,
        "devices": len(devices),
        "messages": total,
        "committed": committed,
        "rows_before": rows_before,
        "complete": committed >= total,
        "elapsed": elapsed,
        "rate": committed / elapsed if elapsed > 0 else 0.0,
        "acked": acked,
        "publish_rate": acked / publish_elapsed if publish_elapsed else 0.0,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "processes": len(workers),
        "errors": errors,
        "generator_cpu": sum(r.get("cpu", 0.0) for r in done.values()),
        "hub_cpu": None if hub_cpu is None or hub_cpu_before is None else hub_cpu - hub_cpu_before,
    }


def figures_line(f):
    parts = [
        f"ingest protocol={f['protocol']} qos={f['qos']}",
        f"devices={f['devices']}",
        f"messages={f['messages']}",
        f"committed={f['committed']}",
        f"elapsed={f['elapsed']:.2f}s",
        f"rate={f['rate']:.0f} msg/s",
    ]
    if f["qos"]:
        parts.append(f"publish_rate={f['publish_rate']:.0f} msg/s")
        if f["p50"] is not None:
            parts.append(f"puback_p50={f['p50'] * 1000:.1f}ms puback_p99={f['p99'] * 1000:.1f}ms")
    else:
        parts.append(f"send_rate={f['publish_rate']:.0f} msg/s")
        parts.append(f"lost={f['messages'] - f['committed']}")
    parts.append(f"generator_processes={f['processes']}")
    parts.append(f"generator_cpu={f['generator_cpu']:.2f}s")
    if f["hub_cpu"] is not None:
        parts.append(f"hub_cpu={f['hub_cpu']:.2f}s")
    return " ".join(parts)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Messages per second the hub commits to its database (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=100, help="publishing devices, one connection each")
    parser.add_argument("--messages-per-device", type=int, default=300, help="messages each device publishes")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS of the PUBLISHes")
    parser.add_argument(
        "--protocol", type=int, choices=(4, 5), default=4, help="MQTT protocol level: 4 (3.1.1) or 5 (MQTT 5)"
    )
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=20, help="unacknowledged QoS 1 messages per device")
    parser.add_argument(
        "--compare-processes",
        action="store_true",
        help="run the load twice, with --processes and twice as many, to show whether the generator limits",
    )
    parser.add_argument(
        "--hub-url",
        help="an already running hub (mqtt://127.0.0.1:PORT; needs --data-dir); default: start our own",
    )
    parser.add_argument("--data-dir", help="the data directory of the hub given with --hub-url")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for connecting, and per run")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="after the last publish, seconds without a new row before giving up"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory of our own hub")
    args = parser.parse_args(argv)
    check_positive(
        parser,
        args,
        "devices",
        "messages_per_device",
        "processes",
        "window",
        message="--devices, --messages-per-device, --processes and --window must be at least 1",
    )
    if args.window > 65535:
        parser.error("--window must be at most 65535 (MQTT packet identifiers)")
    if args.hub_url and not args.data_dir:
        parser.error("--hub-url needs --data-dir (to provision devices and count the rows in its database)")
    if args.data_dir and not args.hub_url:
        parser.error("--data-dir is for a hub given with --hub-url; without it the benchmark uses a fresh directory")
    return args


def external_hub(url, data_dir):
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.port:
        raise BenchError(f"--hub-url must look like mqtt://127.0.0.1:1883, not {url!r}")
    if parts.hostname not in mqttload.LOCAL_HOSTS:
        raise BenchError(f"refusing to load {parts.hostname}: this benchmark sends traffic to 127.0.0.1 only")
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    if not (Path(data_dir) / DB_NAME).exists():
        raise BenchError(f"no {DB_NAME} in {data_dir}: --data-dir must be the data directory of the running hub")
    try:
        socket.create_connection((host, parts.port), timeout=5).close()
    except OSError as exc:
        raise BenchError(
            f"no MQTT listener at {host}:{parts.port} ({exc.strerror or exc}); is the hub running?"
        ) from None
    return Hub(data_dir, host=host, mqtt_port=parts.port, owned=False)


def main(argv=None):
    args = parse_args(argv)
    with Main("ingest") as run:
        if args.hub_url:
            hub = external_hub(args.hub_url, args.data_dir)
        else:
            temporary = run.temporary("hubserver-bench-", keep=args.keep_data)
            print(f"starting hubserver run (data in {temporary})", flush=True)
            hub = run.stop(Hub(temporary)).start()
        prefix = f"bench-{secrets.token_hex(3)}-"
        started = time.monotonic()
        devices = hub.provision(args.devices, prefix)
        print(f"provisioned {len(devices)} devices in {time.monotonic() - started:.1f}s", flush=True)
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        counts = [args.processes, 2 * args.processes] if args.compare_processes else [args.processes]
        runs = []
        for processes in counts:
            print(
                f"running: protocol={args.protocol} qos={args.qos} devices={args.devices} "
                f"messages/device={args.messages_per_device} "
                f"window={args.window} generator_processes={processes}",
                flush=True,
            )
            figures = run_load(hub, devices, topic_prefix, args, processes)
            for error in figures["errors"]:
                print(f"warning: {error}", file=sys.stderr, flush=True)
            if not figures["complete"]:
                print(
                    f"warning: only {figures['committed']} of {figures['messages']} messages were committed",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(figures)
        if hub.owned:
            code = hub.stop()
            if code not in (0, None):
                print(f"warning: the hub exited with status {code}:\n{hub.text()}", file=sys.stderr, flush=True)
        for figures in runs:
            print(figures_line(figures), flush=True)
        if len(runs) == 2:
            a, b = runs
            ratio = b["rate"] / a["rate"] if a["rate"] else 0.0
            print(
                f"ingest-compare qos={args.qos} processes={a['processes']} rate={a['rate']:.0f} msg/s "
                f"processes={b['processes']} rate={b['rate']:.0f} msg/s ratio={ratio:.2f}",
                flush=True,
            )
        return 0 if all(r["complete"] for r in runs) or args.qos == 0 else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
