"""Scale-out benchmark: the same QoS 1 load, in one run, on one Mosquitto and one PostgreSQL, through

1. one ``hubserver listen`` worker (Mosquitto, shared subscription, acknowledged after commit),
2. two workers (every message must be stored exactly once),
3. the embedded hub (``hubserver run``, its own MQTT port) storing into the same PostgreSQL,
4. the classic pipeline (``bench/classic_listener.py``: paho + one ORM save per message) on the same
   Mosquitto and PostgreSQL.

Each gets a fresh database on the same server and the same devices and load (``bench/mqttload.py``
processes). Printed per run: messages stored per second (counted in PostgreSQL), CPU seconds per 1,000
messages of the hub's processes (workers, or the embedded hub, or the classic listener), of Mosquitto, of
PostgreSQL and of the load generators (they share the machine's cores with the rest); and at the end one
``scaleout ...`` line with the ratios the goals are about:

    scaleout one=R msg/s two=R msg/s embedded=R msg/s classic=R msg/s worker_cpu/embedded_cpu=X dup=0 lost=0

PostgreSQL: ``--postgres-url`` (a user that may create databases) or ``HUBSERVER_TEST_POSTGRES_URL``,
else one started from Debian's binaries for the run. Mosquitto: always our own (dynamic security,
``max_inflight_messages 1000``), started from Debian's binaries.
"""

import argparse
import json
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ingest  # noqa: E402
from common import BenchError, Main, Process, check_positive, cpu_seconds, free_port, hub_binary  # noqa: E402

from tests import services  # noqa: E402  (standard library only: starts Debian's servers)

MESSAGE_TABLE = "devicetypes_weatherstationmessage"
HUB_ACCOUNT = "hubserver-bench"


class PostgresCounter:
    """Message rows of our devices in one PostgreSQL database (ingest.run_load's row counter)."""

    def __init__(self, url, topic_prefix):
        import psycopg

        self.connection = psycopg.connect(url, autocommit=True)
        self.pattern = topic_prefix + "%/data"
        self.base = self.connection.execute(f"SELECT COALESCE(MAX(id), 0) FROM {MESSAGE_TABLE}").fetchone()[0]

    def total(self):
        return self.connection.execute(f"SELECT COUNT(*) FROM {MESSAGE_TABLE}").fetchone()[0]

    def new(self):
        return self.connection.execute(
            f"SELECT COUNT(*) FROM {MESSAGE_TABLE} WHERE id > %s AND topic LIKE %s", (self.base, self.pattern)
        ).fetchone()[0]

    def close(self):
        self.connection.close()


def tree_cpu(root_pid):
    """CPU seconds of a process and all its descendants (PostgreSQL's backends)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0.0, [root_pid]
    while stack:
        pid = stack.pop()
        total += cpu_seconds(pid) or 0.0
        stack.extend(children.get(pid, ()))
    return total


class Target:
    """What ``ingest.run_load`` drives: where devices publish, which processes' CPU counts, the counter."""

    host = "127.0.0.1"

    def __init__(self, name, mqtt_port, database_url, processes):
        self.name = name
        self.mqtt_port = mqtt_port
        self.database_url = database_url
        self.processes = processes

    def row_counter(self, topic_prefix):
        return PostgresCounter(self.database_url, topic_prefix)

    def check_alive(self):
        for process in self.processes:
            process.check_alive()

    def cpu_seconds(self):
        values = [p.cpu_seconds() for p in self.processes]
        return None if None in values else sum(values)


class Bench:
    def __init__(self, run, args):
        self.run = run
        self.args = args
        self.directory = Path(run.temporary("hubserver-scaleout-"))
        os.chmod(self.directory, 0o755)  # PostgreSQL runs as its own account and must reach its directory
        self.postgres_url = args.postgres_url or os.environ.get(services.ENV_POSTGRES)
        self.postgres_pid = None
        if not self.postgres_url:
            server = services.start_postgres(self.directory / "postgres")
            run.stop(server)
            self.postgres_url, self.postgres_pid = server.url, server.pid
        mosquitto = services.start_mosquitto(
            self.directory / "mosquitto", extra="max_inflight_messages 1000\nmax_queued_messages 0\n"
        )
        run.stop(mosquitto)
        self.mosquitto = mosquitto
        self.broker_port = mosquitto.extra["port"]
        self.broker_password = secrets.token_hex(8)
        self.prefix = f"so-{secrets.token_hex(3)}-"
        self.devices = None
        self.broker_devices = None

    def database(self):
        name = f"bench_{uuid.uuid4().hex[:10]}"
        url = services.create_postgres_database(self.postgres_url, name)
        self.run.callback(services.drop_postgres_database, self.postgres_url, name)
        return url

    def env(self, database_url, data_dir, external=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_", "DATABASE_URL"))}
        env.update({"HUBSERVER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "DATABASE_URL": database_url})
        env["HUBSERVER_HEARTBEAT_TIMEOUT"] = "0"
        if external:
            env["HUBSERVER_BROKER_URL"] = f"mqtt://{HUB_ACCOUNT}:{self.broker_password}@127.0.0.1:{self.broker_port}"
        return env

    def hubserver(self, env, *args):
        import subprocess

        done = subprocess.run([hub_binary(), *args], env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise BenchError(f"hubserver {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return done.stdout

    def prepare(self, env, setup_broker):
        self.hubserver(env, "migrate", "--no-input")
        if setup_broker:
            admin = {**env, "HUBSERVER_BROKER_ADMIN_PASSWORD": self.mosquitto.extra["admin_password"]}
            self.hubserver(admin, "broker", "setup", "--admin-username", self.mosquitto.extra["admin_username"])
        devices = json.loads(
            self.hubserver(
                env,
                "provision",
                "weatherstation",
                "--count",
                str(self.args.devices),
                "--prefix",
                self.prefix,
                "--format",
                "json",
            )
        )
        self.devices = devices
        if setup_broker:
            self.broker_devices = devices  # their accounts are on Mosquitto
        return devices

    def measure(self, target):
        topic_prefix = self.devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + self.prefix
        broker_before = cpu_seconds(self.mosquitto.pid) or 0.0
        postgres_before = tree_cpu(self.postgres_pid) if self.postgres_pid else None
        figures = ingest.run_load(target, self.devices, topic_prefix, self.args, self.args.processes)
        figures["broker_cpu"] = (cpu_seconds(self.mosquitto.pid) or 0.0) - broker_before
        figures["postgres_cpu"] = tree_cpu(self.postgres_pid) - postgres_before if postgres_before is not None else None
        time.sleep(self.args.settle)  # duplicates would arrive after the count was reached
        counter = target.row_counter(topic_prefix)
        counter.base = 0
        figures["rows"] = counter.new()
        counter.close()
        figures["name"] = target.name
        return figures

    def workers(self, count):
        data_dir = self.run.temporary("hubserver-scaleout-workers-")
        database_url = self.database()
        env = self.env(database_url, data_dir)
        self.prepare(env, setup_broker=True)
        processes = []
        for n in range(count):
            client_id = f"bench-worker-{n}"  # its session is ended after the run (forget_session)
            process = Process(f"worker {n + 1}", [hub_binary(), "listen", "--client-id", client_id], env)
            self.run.stop(process.start())
            process.wait_for("storing messages from")
            processes.append((process, client_id))
        target = Target(f"{count} worker(s)", self.broker_port, database_url, [p for p, _ in processes])
        figures = self.measure(target)
        for process, client_id in processes:
            process.stop()
            figures_line = [line for line in process.output if " stored, " in line]
            print(f"{process.name}: {figures_line[-1].strip() if figures_line else process.text(5)}", flush=True)
            self.forget_session(client_id)
        return figures

    def forget_session(self, client_id):
        """End a worker's persistent session, so the next runs' messages are not queued for it."""
        import paho.mqtt.client as paho
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.username_pw_set(HUB_ACCOUNT, self.broker_password)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        client.connect("127.0.0.1", self.broker_port, clean_start=True, properties=properties)
        client.loop_start()
        time.sleep(0.3)
        client.disconnect()
        client.loop_stop()

    def embedded(self):
        data_dir = self.run.temporary("hubserver-scaleout-embedded-")
        database_url = self.database()
        env = self.env(database_url, data_dir, external=False)
        self.prepare(env, setup_broker=False)
        mqtt_port = free_port()
        command = [hub_binary(), "run", "--host", "127.0.0.1", "--http-port", str(free_port())]
        hub = Process("the embedded hub", [*command, "--mqtt-port", str(mqtt_port)], env)
        self.run.stop(hub.start())
        hub.wait_for("hubserver is running")
        figures = self.measure(Target("embedded", mqtt_port, database_url, [hub]))
        hub.stop()
        return figures

    def classic(self):
        if self.broker_devices is None:  # the devices need accounts on Mosquitto: the workers' provisioning
            self.prepare(self.env(self.database(), self.run.temporary("hubserver-scaleout-accounts-")), True)
        self.devices = self.broker_devices
        data_dir = Path(self.run.temporary("hubserver-scaleout-classic-"))
        database_url = self.database()
        devices_file = data_dir / "devices.json"
        devices_file.write_text(json.dumps([d["device_id"] for d in self.devices]))
        env = self.env(database_url, data_dir, external=False)
        listener = Process(
            "classic listener",
            [
                sys.executable,
                str(HERE / "classic_listener.py"),
                "--port",
                str(self.broker_port),
                "--data-dir",
                str(data_dir),
                "--devices-file",
                str(devices_file),
                "--username",
                HUB_ACCOUNT,
                "--password",
                self.broker_password,
            ],
            env,
        )
        self.run.stop(listener.start())
        listener.wait_for("classic_listener ready")
        figures = self.measure(Target("classic", self.broker_port, database_url, [listener]))
        listener.stop()
        return figures


def line(f):
    per_k = lambda cpu: f"{1000 * cpu / f['committed']:.3f}" if cpu is not None and f["committed"] else "-"  # noqa: E731
    return (
        f"scaleout-run {f['name']}: stored={f['committed']}/{f['messages']} rows={f['rows']} "
        f"rate={f['rate']:.0f} msg/s hub_cpu_per_1k={per_k(f['hub_cpu'])} s "
        f"broker_cpu_per_1k={per_k(f['broker_cpu'])} s postgres_cpu_per_1k={per_k(f['postgres_cpu'])} s "
        f"generators_cpu_per_1k={per_k(f['generator_cpu'])} s "
        f"publish_p50={1000 * (f['p50'] or 0):.1f} ms p99={1000 * (f['p99'] or 0):.1f} ms"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Workers on Mosquitto + PostgreSQL vs the embedded hub vs the classic pipeline (bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=100, help="publishing devices, one connection each")
    parser.add_argument("--messages-per-device", type=int, default=300, help="messages each device publishes")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument("--window", type=int, default=20, help="unacknowledged QoS 1 messages per device")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per run")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds without a new row that end a run (a busy machine pauses)"
    )
    parser.add_argument("--postgres-url", help="a PostgreSQL server (user may create databases); default: our own")
    parser.add_argument(
        "--runs",
        default="one,two,embedded,classic",
        help="which runs, in this order: one (worker), two (workers), embedded, classic",
    )
    args = parser.parse_args(argv)
    args.qos, args.protocol = 1, 4
    args.runs = [run.strip() for run in args.runs.split(",") if run.strip()]
    unknown = sorted(set(args.runs) - {"one", "two", "embedded", "classic"})
    if unknown or not args.runs:
        parser.error(f"--runs takes one, two, embedded, classic; got {', '.join(unknown) or 'nothing'}")
    check_positive(parser, args, "devices", "messages_per_device", "processes", "window", message="must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    with Main("scaleout") as run:
        bench = Bench(run, args)
        makers = {
            "one": ("one worker", lambda: bench.workers(1)),
            "two": ("two workers", lambda: bench.workers(2)),
            "embedded": ("embedded hub", bench.embedded),
            "classic": ("classic pipeline", bench.classic),
        }
        runs = {}
        for key in args.runs:
            label, make = makers[key]
            print(f"running: {label}, {args.devices} devices x {args.messages_per_device} QoS 1 messages", flush=True)
            runs[key] = make()
            print(line(runs[key]), flush=True)
        per_msg = lambda f: f["hub_cpu"] / f["committed"] if f and f["committed"] and f["hub_cpu"] else None  # noqa: E731
        one, embedded = runs.get("one"), runs.get("embedded")
        ratio = per_msg(one) / per_msg(embedded) if per_msg(one) and per_msg(embedded) else None
        workers = [runs[key] for key in ("one", "two") if key in runs]
        lost = sum(max(0, f["messages"] - f["rows"]) for f in workers)
        duplicated = sum(max(0, f["rows"] - f["messages"]) for f in workers)
        rates = " ".join(f"{key}={runs[key]['rate']:.0f}" for key in args.runs)
        print(
            f"scaleout {rates} msg/s "
            + (f"worker_cpu/embedded_cpu={ratio:.2f} " if ratio else "")
            + f"dup={duplicated} lost={lost}",
            flush=True,
        )
        return 0 if lost == 0 and duplicated == 0 else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
