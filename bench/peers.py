"""Peers benchmark: the same QoS 1 load against the hub, the classic pipeline and bare amqtt, in one run.

1. the hub: ``hubserver run`` on free ports with a fresh data directory, devices provisioned as
   ``bench/ingest.py`` does; figure = messages committed per second (rows in its database);
2. the classic pipeline (django-devicehub's design): Debian's Mosquitto on a free port (anonymous, 127.0.0.1 only) plus
   ``bench/classic_listener.py``, a separate paho process that saves each message through the ORM, one at
   a time, into its own fresh data directory; figure = rows committed per second. Mosquitto acknowledges
   before anything is stored, so the clock runs until the last row is in the database;
3. bare amqtt (``bench/bare_amqtt.py``): the stock broker, no storage; figure = messages the broker
   processed per second (it counts them); the PUBACK rate at the generator is printed too.

Each peer gets the same devices and the same load from ``bench/mqttload.py`` (N devices, one connection
each, M messages each, QoS 1, up to W unacknowledged per device, P generator processes), one peer at a
time. The last line is

    peers hub=R classic=R bare=R hub/classic=X hub/bare=Y

Needs Debian's ``mosquitto`` (``apt-get install -y mosquitto``); it installs nothing itself. Traffic goes to
127.0.0.1 only. Ctrl+C or SIGTERM stops everything it started.
"""

import argparse
import json
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import ingest  # noqa: E402


def find_mosquitto():
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise common.BenchError(
            "Debian's mosquitto is not installed, and the classic pipeline needs it: "
            "run 'apt-get install -y mosquitto' (as root), then this benchmark again"
        )
    return found


def wait_for_port(port, process, timeout=common.HUB_START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise common.BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


class Classic:
    """Mosquitto + the classic listener, shaped like ``common.Hub`` for ``ingest.run_load``."""

    host = "127.0.0.1"

    def __init__(self, directory):
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.mqtt_port = None
        self.broker = None
        self.listener = None

    def start(self, devices, topic_prefix):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mqtt_port = common.free_port()
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    "per_listener_settings false",
                    f"listener {self.mqtt_port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence false",
                    # The listener lags far behind the publishers: keep every QoS 1 message queued for it
                    # (the default of 1,000 would drop the rest).
                    "max_queued_messages 0",
                    "max_queued_bytes 0",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        os.chmod(self.directory, 0o755)
        os.chmod(config, 0o644)
        self.broker = common.Process("mosquitto", [find_mosquitto(), "-c", str(config)]).start()
        wait_for_port(self.mqtt_port, self.broker)
        devices_file = self.directory / "devices.json"
        devices_file.write_text(json.dumps([d["device_id"] for d in devices]))
        self.listener = common.Process(
            "classic listener",
            [
                sys.executable,
                str(HERE / "classic_listener.py"),
                "--port",
                str(self.mqtt_port),
                "--data-dir",
                str(self.data_dir),
                "--devices-file",
                str(devices_file),
                "--topic-prefix",
                topic_prefix.split("/", 1)[0],
            ],
            env=common.hub_environment(self.data_dir),
        ).start()
        self.listener.wait_for("classic_listener ready")
        return self

    @property
    def db_path(self):
        return self.data_dir / common.DB_NAME

    def check_alive(self):
        self.broker.check_alive()
        self.listener.check_alive()

    def cpu_seconds(self):
        values = [self.broker.cpu_seconds(), self.listener.cpu_seconds()]
        return None if None in values else sum(values)

    def stop(self):
        for process in (self.listener, self.broker):
            if process is not None:
                process.stop()


class BareBroker(common.Process):
    """bench/bare_amqtt.py; follows its ``received=N last=T`` lines."""

    def __init__(self, port):
        super().__init__(
            "bare amqtt",
            [sys.executable, str(HERE / "bare_amqtt.py"), "--port", str(port), "--report", "0.05"],
        )
        self.port = port
        self.received = 0
        self.last = None

    def on_line(self, line):
        if line.startswith("bare_amqtt received="):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            self.received = int(fields["received"])
            self.last = float(fields["last"])


def run_bare(broker, devices, args):
    """The load against bare amqtt: like ``ingest.run_load``, counting at the broker instead of a database."""
    total = len(devices) * args.messages_per_device
    generators = ingest.load_generators("127.0.0.1", broker.port, devices, args, args.processes, 1)
    workers, results = generators.workers, generators.results
    done = {}
    try:
        generators.start(args.timeout, broker.check_alive)
        received_before = broker.received
        cpu_before = broker.cpu_seconds()
        generators.go.set()
        deadline = time.monotonic() + args.timeout
        while len(done) < len(workers) and time.monotonic() < deadline:
            report = common.drain(results, 0.1)
            if report is not None:
                if report["phase"] == "crash":
                    raise common.BenchError(f"generator {report['index']} crashed: {report['error']}")
                done[report["index"]] = report
            broker.check_alive()
        last_progress, last_count = time.monotonic(), broker.received
        while broker.received - received_before < total and time.monotonic() < deadline:
            if broker.received != last_count:
                last_progress, last_count = time.monotonic(), broker.received
            elif time.monotonic() - last_progress > args.settle:
                break
            time.sleep(0.01)
        time.sleep(0.1)  # the broker reports every 50 ms: take its line for the last message
        cpu = broker.cpu_seconds()
    finally:
        generators.close()
    errors = [r["error"] for r in done.values() if r.get("error")]
    firsts = [r["first_publish"] for r in done.values() if r.get("first_publish") is not None]
    lasts = [r["last_ack"] for r in done.values() if r.get("last_ack") is not None]
    if not firsts:
        raise common.BenchError("no generator reported publishing: " + "; ".join(errors or ["no report"]))
    first = min(firsts)
    acked = sum(r.get("acked", 0) for r in done.values())
    received = broker.received - received_before
    elapsed = (broker.last - first) if broker.last else 0.0
    latencies = sorted(x for r in done.values() for x in r.get("latencies", ()))
    return {
        "messages": total,
        "received": received,
        "complete": received >= total,
        "elapsed": elapsed,
        "rate": received / elapsed if elapsed > 0 else 0.0,
        "acked": acked,
        "publish_rate": acked / (max(lasts) - first) if lasts and max(lasts) > first else 0.0,
        "p50": common.percentile(latencies, 0.50),
        "p99": common.percentile(latencies, 0.99),
        "errors": errors,
        "generator_cpu": sum(r.get("cpu", 0.0) for r in done.values()),
        "cpu": None if cpu is None or cpu_before is None else cpu - cpu_before,
    }


def load_args(args):
    return argparse.Namespace(
        messages_per_device=args.messages_per_device,
        qos=1,
        window=args.window,
        timeout=args.timeout,
        settle=args.settle,
        processes=args.processes,
    )


def ms(value):
    return "-" if value is None else f"{value * 1000:.1f}ms"


def secs(value):
    return "-" if value is None else f"{value:.2f}s"


def stored_line(name, f):
    return (
        f"peers-run peer={name} messages={f['messages']} committed={f['committed']} elapsed={f['elapsed']:.2f}s "
        f"rate={f['rate']:.0f} msg/s puback_rate={f['publish_rate']:.0f} msg/s puback_p50={ms(f['p50'])} "
        f"puback_p99={ms(f['p99'])} generator_cpu={secs(f['generator_cpu'])} server_cpu={secs(f['hub_cpu'])}"
    )


def bare_line(f):
    return (
        f"peers-run peer=bare messages={f['messages']} delivered={f['received']} elapsed={f['elapsed']:.2f}s "
        f"rate={f['rate']:.0f} msg/s puback_rate={f['publish_rate']:.0f} msg/s puback_p50={ms(f['p50'])} "
        f"puback_p99={ms(f['p99'])} generator_cpu={secs(f['generator_cpu'])} server_cpu={secs(f['cpu'])}"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="The same QoS 1 load against the hub, the classic pipeline and bare amqtt (bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=100, help="publishing devices, one connection each")
    parser.add_argument("--messages-per-device", type=int, default=300, help="messages each device publishes")
    parser.add_argument("--window", type=int, default=20, help="unacknowledged QoS 1 messages per device")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for connecting, and per peer")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="after the last PUBACK, seconds without progress before giving up"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    common.check_positive(
        parser,
        args,
        "devices",
        "messages_per_device",
        "window",
        "processes",
        message="--devices, --messages-per-device, --window and --processes must be at least 1",
    )
    if args.window > 65535:
        parser.error("--window must be at most 65535")
    return args


def main(argv=None):
    args = parse_args(argv)
    with common.Main("peers") as run:
        find_mosquitto()  # before anything else: say clearly that it is missing
        temporary = Path(run.temporary("hubserver-peers-", keep=args.keep_data))
        load = load_args(args)
        print(
            f"load: qos=1 devices={args.devices} messages/device={args.messages_per_device} window={args.window} "
            f"generator_processes={args.processes} (data in {temporary})",
            flush=True,
        )

        # 1. the hub
        hub = run.stop(common.Hub(temporary / "hub")).start()
        prefix = f"bench-{secrets.token_hex(3)}-"
        devices = hub.provision(args.devices, prefix)
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        print(f"hub: provisioned {len(devices)} devices; running the load", flush=True)
        hub_figures = ingest.run_load(hub, devices, topic_prefix, load, args.processes)
        hub.stop()
        print(stored_line("hub", hub_figures), flush=True)

        # 2. the classic pipeline
        classic = run.stop(Classic(temporary / "classic"))
        classic.start(devices, topic_prefix)
        print("classic: mosquitto and the listener are up; running the load", flush=True)
        classic_figures = ingest.run_load(classic, devices, topic_prefix, load, args.processes)
        classic.stop()
        print(stored_line("classic", classic_figures), flush=True)

        # 3. bare amqtt
        bare = run.stop(BareBroker(common.free_port())).start()
        bare.wait_for("bare_amqtt listening")
        print("bare: amqtt is up; running the load", flush=True)
        bare_figures = run_bare(bare, devices, load)
        bare.stop()
        print(bare_line(bare_figures), flush=True)

        for name, figures in (("hub", hub_figures), ("classic", classic_figures), ("bare", bare_figures)):
            for error in figures["errors"]:
                print(f"warning: {name}: {error}", file=sys.stderr, flush=True)
            if not figures["complete"]:
                print(f"warning: {name}: not every message arrived", file=sys.stderr, flush=True)
        hub_rate, classic_rate, bare_rate = hub_figures["rate"], classic_figures["rate"], bare_figures["rate"]
        print(
            f"peers hub={hub_rate:.0f} classic={classic_rate:.0f} bare={bare_rate:.0f} msg/s "
            f"hub/classic={hub_rate / classic_rate if classic_rate else 0:.2f} "
            f"hub/bare={hub_rate / bare_rate if bare_rate else 0:.2f}",
            flush=True,
        )
        return 0 if all(f["complete"] for f in (hub_figures, classic_figures, bare_figures)) else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
