"""Ingest benchmark: how many device messages a second the hub commits to its database (DESIGN §8).

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
import contextlib
import json
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mqttload

MESSAGE_TABLE = "devicetypes_weatherstationmessage"
DB_NAME = "hubserver.sqlite3"
HUB_START_TIMEOUT = 90
PROVISION_TIMEOUT = 300


class BenchError(Exception):
    """A failure to report in one clear line (exit status 1)."""


def hub_binary():
    candidate = Path(sys.executable).parent / "hubserver"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hubserver")
    if not found:
        raise BenchError("cannot find the 'hubserver' command (install the hub in this Python environment)")
    return found


def hub_environment(data_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_", "DATABASE_URL"))}
    env.update({"HUBSERVER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hub:
    """The hub under test: our own ``hubserver run`` subprocess, or an already running one."""

    def __init__(self, data_dir, host="127.0.0.1", mqtt_port=None, owned=True):
        self.data_dir = Path(data_dir)
        self.host = host
        self.mqtt_port = mqtt_port
        self.owned = owned
        self.process = None
        self.output = []

    def start(self):
        self.mqtt_port = free_port()
        http_port = free_port()
        command = [
            hub_binary(),
            "run",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--mqtt-port",
            str(self.mqtt_port),
        ]
        # A session of its own: Ctrl+C reaches only this script, which then stops the hub with SIGTERM.
        self.process = subprocess.Popen(
            command,
            env=hub_environment(self.data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + HUB_START_TIMEOUT
        while not any("hubserver is running" in line for line in self.output):
            if self.process.poll() is not None:
                raise BenchError(f"the hub exited with status {self.process.returncode}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the hub did not start within {HUB_START_TIMEOUT}s:\n{self.text()}")
            time.sleep(0.05)
        return self

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def text(self, last=40):
        return "".join(self.output[-last:]).rstrip()

    def check_alive(self):
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"the hub exited during the run (status {self.process.returncode}):\n{self.text()}")

    def stop(self, timeout=60):
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None

    def cpu_seconds(self):
        """User + system CPU time of our hub process so far (Linux /proc), or None."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    @property
    def db_path(self):
        return self.data_dir / DB_NAME

    def provision(self, count, prefix):
        try:
            out = subprocess.run(
                [
                    hub_binary(),
                    "provision",
                    "weatherstation",
                    "--count",
                    str(count),
                    "--prefix",
                    prefix,
                    "--format",
                    "json",
                ],
                env=hub_environment(self.data_dir),
                capture_output=True,
                text=True,
                timeout=PROVISION_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"provisioning {count} devices took more than {PROVISION_TIMEOUT}s") from None
        if out.returncode != 0:
            tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
            raise BenchError(f"hubserver provision failed (status {out.returncode}):\n{tail}")
        try:
            devices = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"hubserver provision printed no JSON list:\n{out.stdout[:2000]}") from None
        if len(devices) != count:
            raise BenchError(f"asked hubserver provision for {count} devices, got {len(devices)}")
        return devices


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


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def run_load(hub, devices, topic_prefix, args, processes):
    """One measured run with ``processes`` generator processes; returns the figures as a dict."""
    total = len(devices) * args.messages_per_device
    counter = RowCounter(hub.db_path, topic_prefix)
    rows_before = counter.total()
    context = multiprocessing.get_context("spawn")
    go, stop = context.Event(), context.Event()
    results = context.Queue()
    shares = [devices[i::processes] for i in range(processes)]
    workers = [
        context.Process(
            target=mqttload.run_worker,
            args=(
                index,
                hub.host,
                hub.mqtt_port,
                share,
                args.messages_per_device,
                args.qos,
                args.window,
                args.timeout,
                (None, go, stop),
                results,
            ),
            name=f"mqttload-{index}",
            daemon=True,
        )
        for index, share in enumerate(shares)
        if share
    ]
    try:
        for worker in workers:
            worker.start()
        ready = {}
        deadline = time.monotonic() + args.timeout
        while len(ready) < len(workers):
            report = mqttload.drain(results, 0.2)
            if report is not None:
                if report.get("error"):
                    raise BenchError(f"generator {report['index']} could not connect: {report['error']}")
                ready[report["index"]] = report
            hub.check_alive()
            dead = [w.name for w in workers if w.exitcode is not None]
            if dead and len(ready) < len(workers) and report is None:
                raise BenchError(f"generator process(es) {', '.join(dead)} exited before connecting")
            if time.monotonic() > deadline:
                raise BenchError(f"the devices did not all connect within {args.timeout:.0f}s")

        # Everything is connected: go, and watch the table fill up.
        hub_cpu_before = hub.cpu_seconds()
        go.set()
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
            while (report := mqttload.drain(results, 0)) is not None:
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
            report = mqttload.drain(results, 0.2)
            if report is not None:
                done[report["index"]] = report
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
        counter.close()
        results.close()

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
        f"ingest qos={f['qos']}",
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
    if args.devices < 1 or args.messages_per_device < 1 or args.processes < 1 or args.window < 1:
        parser.error("--devices, --messages-per-device, --processes and --window must be at least 1")
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


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    # Ctrl+C (even if our parent ignored SIGINT) and SIGTERM both stop everything we started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    hub = None
    temporary = None
    try:
        if args.hub_url:
            hub = external_hub(args.hub_url, args.data_dir)
        else:
            temporary = tempfile.mkdtemp(prefix="hubserver-bench-")
            print(f"starting hubserver run (data in {temporary})", flush=True)
            hub = Hub(temporary).start()
        prefix = f"bench-{secrets.token_hex(3)}-"
        started = time.monotonic()
        devices = hub.provision(args.devices, prefix)
        print(f"provisioned {len(devices)} devices in {time.monotonic() - started:.1f}s", flush=True)
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        counts = [args.processes, 2 * args.processes] if args.compare_processes else [args.processes]
        runs = []
        for processes in counts:
            print(
                f"running: qos={args.qos} devices={args.devices} messages/device={args.messages_per_device} "
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
    except BenchError as exc:
        print(f"ingest: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("ingest: interrupted; stopping", file=sys.stderr, flush=True)
        return 130
    finally:
        if hub is not None and hub.owned:
            with contextlib.suppress(Exception):
                hub.stop()
        if temporary and not args.keep_data:
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary:
            print(f"data kept in {temporary}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
