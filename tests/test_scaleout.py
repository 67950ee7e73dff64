"""Beyond one machine, with the real servers: Mosquitto (dynamic security), PostgreSQL and Redis, two
``hubserver listen`` workers and one ``hubserver run`` web process, and paho devices that know nothing but
the broker's host and port."""

import datetime
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import services
from tests.mqtt import free_port

pytestmark = pytest.mark.slow

BINARY = str(Path(sys.executable).parent / "hubserver")
HUB_ACCOUNT, HUB_PASSWORD = "hubserver", "hub-account-secret"
INFLIGHT = "max_inflight_messages 1000\nmax_queued_messages 0\n"


def environment(data_dir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_"))}
    env.update({"HUBSERVER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "HUBSERVER_LOG_LEVEL": "INFO"})
    env.update(extra)
    return env


class Process:
    """A ``hubserver`` process whose output is kept; ``ready`` is the line it prints once it serves."""

    def __init__(self, args, env, ready):
        self.args, self.env, self.ready = args, env, ready
        self.output = []
        self.process = None

    def start(self, timeout=60):
        self.output = []
        self.process = subprocess.Popen(
            [BINARY, *self.args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any(self.ready in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"hubserver {' '.join(self.args)} did not start:\n{self.text()}")
            time.sleep(0.05)
        return self

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)

    def text(self):
        return "".join(self.output)

    def stop(self, sig=signal.SIGTERM):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def hubserver(*args, env, check=True):
    done = subprocess.run([BINARY, *args], env=env, capture_output=True, text=True, timeout=180)
    if check and done.returncode:
        raise AssertionError(f"hubserver {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


class Cluster:
    """Mosquitto + PostgreSQL + Redis, the hub's account set up, 50 devices provisioned, one web process
    and two workers."""

    def __init__(self, tmp_path, mosquitto, database_url, redis_url):
        self.mosquitto = mosquitto
        self.port = mosquitto.extra["port"]
        self.database_url = database_url
        self.env = environment(
            tmp_path / "data",
            DATABASE_URL=database_url,
            HUBSERVER_REDIS_URL=redis_url,
            HUBSERVER_REDIS_PREFIX=f"test-{uuid.uuid4().hex[:8]}",
            HUBSERVER_BROKER_URL=f"mqtt://{HUB_ACCOUNT}:{HUB_PASSWORD}@127.0.0.1:{self.port}",
            HUBSERVER_PUBLIC_HOST="127.0.0.1",
            HUBSERVER_HEARTBEAT_TIMEOUT="0",
            HUBSERVER_BROKER_CLIENT_ID="test-web",  # the web process's own session; workers name theirs
        )
        self.http_port = free_port()
        self.web = Process(
            ["run", "--host", "127.0.0.1", "--http-port", str(self.http_port)], self.env, "hubserver is running"
        )
        self.workers = [
            Process(
                ["listen", "--client-id", f"test-worker-{n}", "--stats-interval", "1"],
                self.env,
                "storing messages from",
            )
            for n in (1, 2)
        ]

    def set_up(self):
        hubserver("migrate", "--no-input", env=self.env)
        setup_env = {**self.env, "HUBSERVER_BROKER_ADMIN_PASSWORD": self.mosquitto.extra["admin_password"]}
        hubserver("broker", "setup", "--admin-username", self.mosquitto.extra["admin_username"], env=setup_env)
        out = hubserver(
            "provision", "weatherstation", "--count", "50", "--prefix", "so-", "--format", "json", env=self.env
        )
        self.devices = json.loads(out.stdout)
        for process in (self.web, *self.workers):
            process.start()

    def stop(self):
        for process in (*self.workers, self.web):
            process.stop()

    def query(self, sql, *params):
        import psycopg

        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    def stored_seqs(self):
        rows = self.query(
            "SELECT payload_json->>'seq' FROM devicetypes_weatherstationmessage "
            "WHERE direction = '' AND topic LIKE '%%/data'"  # '': inbound, the usual direction
        )
        return [row[0] for row in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server, redis_url):
    directory = tmp_path_factory.mktemp("scaleout")
    try:
        mosquitto = services.start_mosquitto(directory / "mosquitto", extra=INFLIGHT)
    except services.ServiceUnavailable as exc:
        pytest.fail(f"this test needs mosquitto: {exc}", pytrace=False)
    name = f"test_{uuid.uuid4().hex[:12]}"
    database_url = services.create_postgres_database(postgres_server, name)
    cluster = Cluster(directory, mosquitto, database_url, redis_url)
    try:
        cluster.set_up()
        yield cluster
    finally:
        cluster.stop()
        mosquitto.stop()
        services.drop_postgres_database(postgres_server, name)


def _stored(output):
    """The last "N stored" a worker printed."""
    found = re.findall(r"(\d+) stored", output)
    return int(found[-1]) if found else 0


class Device:
    """A paho MQTT 3.1.1 device: its credentials, the broker's host and port, nothing else."""

    def __init__(self, credentials, port, **options):
        self.credentials = credentials
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"], **options)
        self.client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
        self.connack = None
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.commands = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, rc, p: (self.closed.set(), self.connected.set())
        self.client.on_message = lambda c, u, message: self.commands.append(message)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connected.set()

    def accepted(self):
        assert self.connected.wait(10), "no CONNACK"
        return self.connack is not None and not self.connack.is_failure

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_fifty_devices_through_two_workers_every_message_stored_exactly_once(cluster):
    per_device = 40
    devices = [Device(credentials, cluster.port) for credentials in cluster.devices]
    try:
        assert all(device.accepted() for device in devices)
        infos = []
        for seq in range(per_device):
            for device in devices:
                key = f"{device.credentials['device_id']}:{seq}"
                payload = json.dumps({"temperature": 20 + seq % 10, "seq": key})
                infos.append(device.client.publish(device.credentials["topics"]["data"], payload, qos=1))
        for info in infos:
            info.wait_for_publish(30)
        expected = {f"{d.credentials['device_id']}:{s}" for d in devices for s in range(per_device)}
        deadline = time.monotonic() + 30
        while len(cluster.stored_seqs()) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = cluster.stored_seqs()
        assert len(stored) == len(set(stored)), "a message was stored twice"
        assert set(stored) == expected
        time.sleep(1.5)  # the workers' next lines of figures
        shares = [_stored(worker.text()) for worker in cluster.workers]
        assert all(share > 0 for share in shares), f"each worker takes a share: {shares}"
    finally:
        for device in devices:
            device.close()


def test_wrong_password_other_devices_topic_and_deactivated_device_are_refused_by_mosquitto(cluster):
    sync = hubserver("broker", "sync", env=cluster.env)
    assert "matches the registry" in sync.stdout
    good, other, later = cluster.devices[0], cluster.devices[1], cluster.devices[2]

    wrong = Device({**good, "mqtt_password": "not-the-password"}, cluster.port)
    assert not wrong.accepted()
    wrong.close()

    device = Device(good, cluster.port, protocol=paho.MQTTv5)
    assert device.accepted()
    acked = threading.Event()
    codes = []
    device.client.on_publish = lambda c, u, mid, reason_code, p: (codes.append(reason_code), acked.set())
    device.client.publish(other["topics"]["data"], json.dumps({"temperature": 1, "seq": "intruder"}), qos=1)
    assert acked.wait(10)
    assert codes[0].getName() == "Not authorized"
    device.close()

    hubserver(
        "shell",
        "-c",
        "from hubserver.devicetypes.models import WeatherStationDevice as D\n"
        f"d = D.objects.get(device_id={later['device_id']!r}); d.is_active = False; d.save()",
        env=cluster.env,
    )
    deactivated = Device(later, cluster.port)
    assert not deactivated.accepted()
    deactivated.close()
    assert "intruder" not in cluster.stored_seqs()


def test_a_command_from_the_web_api_reaches_the_device_and_its_reply_shows_replied_live(cluster):
    credentials = cluster.devices[3]
    token = (
        hubserver(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model; from rest_framework.authtoken.models import Token\n"
            "u, _ = get_user_model().objects.get_or_create(username='operator', is_superuser=True, is_staff=True)\n"
            "print(Token.objects.get_or_create(user=u)[0].key)",
            env=cluster.env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    device = Device(credentials, cluster.port, protocol=paho.MQTTv5)
    assert device.accepted()
    device.client.subscribe(credentials["topics"]["cmd"], qos=1)
    time.sleep(0.5)

    base = f"http://127.0.0.1:{cluster.http_port}"
    stream = urllib.request.urlopen(
        urllib.request.Request(
            f"{base}/iot/stream/weatherstation/{credentials['device_id']}/",
            headers={"Authorization": f"Token {token}"},
        ),
        timeout=30,
    )
    events = []

    def read_stream():
        try:
            for raw in stream:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        except (OSError, ValueError):  # the stream is closed at the end of the test
            pass

    threading.Thread(target=read_stream, daemon=True).start()
    request = urllib.request.Request(
        f"{base}/api/weatherstation/devices/{credentials['device_id']}/commands/",
        data=json.dumps({"command": "reboot", "payload": {}}).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201, 202)
    deadline = time.monotonic() + 20
    while not device.commands and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device.commands, "the command did not reach the device"
    command = device.commands[0]
    envelope = json.loads(command.payload)
    assert envelope["command"] == "reboot"
    assert command.properties.CorrelationData.decode() == envelope["correlation_id"]
    reply = json.dumps({"correlation_id": envelope["correlation_id"], "status": "ok", "result": {"rebooted": True}})
    device.client.publish(credentials["topics"]["reply"], reply, qos=1).wait_for_publish(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(e.get("type") == "command" and e.get("command_status") == "replied" for e in events):
            break
        time.sleep(0.05)
    states = [e["command_status"] for e in events if e.get("type") == "command"]
    assert "replied" in states, f"the live stream showed {states}"
    device.close()


def test_a_worker_killed_under_load_and_restarted_loses_nothing_acknowledged(cluster):
    devices = [Device(credentials, cluster.port) for credentials in cluster.devices[10:30]]
    stop = threading.Event()
    sent = []

    def publish(device):
        seq = 0
        while not stop.is_set():
            key = f"kill-{device.credentials['device_id']}:{seq}"
            sent.append(
                (
                    key,
                    device.client.publish(
                        device.credentials["topics"]["data"], json.dumps({"temperature": 1, "seq": key}), 1
                    ),
                )
            )
            seq += 1
            if seq % 20 == 0:
                time.sleep(0.01)

    try:
        assert all(device.accepted() for device in devices)
        threads = [threading.Thread(target=publish, args=(d,), daemon=True) for d in devices]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        victim = cluster.workers[0]
        victim.stop(signal.SIGKILL)
        time.sleep(1.0)
        victim.start()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(10)
        acked = {key for key, info in sent if info.is_published()}
        assert len(acked) > 500, "the load must have been real"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            missing = acked - set(cluster.stored_seqs())
            if not missing:
                break
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages are not stored"
    finally:
        for device in devices:
            device.close()


# TLS and mutual TLS between a worker and Mosquitto -----------------------------------------------------


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hubserver test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.crt"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, san in (
        ("server", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("client", x509.DNSName("worker")),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), False)
            .sign(ca_key, hashes.SHA256())
        )
        files[f"{name}_crt"] = folder / f"{name}.crt"
        files[f"{name}_key"] = folder / f"{name}.key"
        files[f"{name}_crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def test_a_worker_stores_through_tls_and_mutual_tls(tmp_path, mosquitto_factory, postgres_url):
    files = _certificates(tmp_path)
    tls_port, mutual_port = free_port(), free_port()
    server_files = f"cafile {files['ca']}\ncertfile {files['server_crt']}\nkeyfile {files['server_key']}\n"
    listeners = [
        f"listener {tls_port} 127.0.0.1\n{server_files}",
        f"listener {mutual_port} 127.0.0.1\n{server_files}require_certificate true\n",
    ]
    server = mosquitto_factory(listeners=listeners)
    plain = {"HUBSERVER_BROKER_URL": f"mqtt://{HUB_ACCOUNT}:{HUB_PASSWORD}@127.0.0.1:{server.extra['port']}"}
    env = environment(tmp_path / "data", DATABASE_URL=postgres_url, **plain)
    hubserver("migrate", "--no-input", env=env)
    setup_env = {**env, "HUBSERVER_BROKER_ADMIN_PASSWORD": server.extra["admin_password"]}
    hubserver("broker", "setup", "--admin-username", server.extra["admin_username"], env=setup_env)
    credentials = json.loads(hubserver("provision", "weatherstation", "tls-1", "--format", "json", env=env).stdout)
    ca = {"HUBSERVER_BROKER_CA_CERTS": str(files["ca"])}
    client_files = {
        "HUBSERVER_BROKER_CERTFILE": str(files["client_crt"]),
        "HUBSERVER_BROKER_KEYFILE": str(files["client_key"]),
    }
    runs = [
        ("tls", {"HUBSERVER_BROKER_URL": f"mqtts://{HUB_ACCOUNT}:{HUB_PASSWORD}@127.0.0.1:{tls_port}", **ca}),
        (
            "mutual",
            {
                "HUBSERVER_BROKER_URL": f"mqtts://{HUB_ACCOUNT}:{HUB_PASSWORD}@127.0.0.1:{mutual_port}",
                **ca,
                **client_files,
            },
        ),
    ]
    # Without its certificate, the mutual-TLS listener refuses the worker: start-up says so.
    refused = hubserver(
        "listen",
        env={**env, **runs[1][1], "HUBSERVER_BROKER_CERTFILE": "", "HUBSERVER_BROKER_KEYFILE": ""},
        check=False,
    )
    assert refused.returncode != 0 and "broker 'default'" in refused.stderr, refused.stderr
    for name, tls in runs:
        # One session for both runs: a second client id would leave the first one a member of the share group.
        worker = Process(["listen", "--client-id", "tls-worker"], {**env, **tls}, "storing messages from").start()
        try:
            device = Device(credentials, server.extra["port"])
            assert device.accepted()
            payload = json.dumps({"temperature": 7, "seq": f"over-{name}"})
            device.client.publish(credentials["topics"]["data"], payload, 1).wait_for_publish(10)
            device.close()
            import psycopg

            deadline = time.monotonic() + 20
            rows = []
            while not rows and time.monotonic() < deadline:
                with psycopg.connect(postgres_url, autocommit=True) as connection:
                    rows = connection.execute(
                        "SELECT 1 FROM devicetypes_weatherstationmessage WHERE payload_json->>'seq' = %s",
                        (f"over-{name}",),
                    ).fetchall()
                time.sleep(0.1)
            assert rows, worker.text()
        finally:
            worker.stop()


def test_bad_broker_configuration_stops_the_worker_with_the_broker_and_key(tmp_path, mosquitto_factory):
    env = environment(tmp_path / "data")
    hubserver("migrate", "--no-input", env=env)
    cases = [
        (f"mqtt://{HUB_ACCOUNT}:{HUB_PASSWORD}@127.0.0.1:{free_port()}", {}, "['PORT']"),
        ("mqtts://x:y@127.0.0.1:1", {"HUBSERVER_BROKER_CA_CERTS": str(tmp_path / "missing-ca.crt")}, "['CA_CERTS']"),
    ]
    server = mosquitto_factory()
    cases.append((f"mqtt://{HUB_ACCOUNT}:wrong@127.0.0.1:{server.extra['port']}", {}, "['PASSWORD']"))
    plugin_less = mosquitto_factory(dynamic_security=False)
    cases.append((f"mqtt://127.0.0.1:{plugin_less.extra['port']}", {}, "dynamic-security plugin loaded"))
    for url, extra, named in cases:
        done = hubserver("listen", env={**env, "HUBSERVER_BROKER_URL": url, **extra}, check=False)
        assert done.returncode != 0
        assert "broker 'default'" in done.stderr and named in done.stderr, done.stderr


def test_a_worker_removed_for_good_is_drained_and_leaves_nothing_behind(cluster):
    """Scaling down: a worker that stops keeps its session, and the broker keeps dealing it a share of the
    messages; ``listen --drain`` stores what waits there and ends the session, so nothing is stranded."""
    extra = Process(["listen", "--client-id", "test-worker-3"], cluster.env, "storing messages from").start()
    extra.stop()  # SIGTERM: its session (a member of the share group) stays on the broker
    devices = [Device(credentials, cluster.port) for credentials in cluster.devices[30:40]]
    try:
        assert all(device.accepted() for device in devices)

        def burst(tag):
            infos = []
            for n in range(20):
                for device in devices:
                    key = f"{tag}-{device.credentials['device_id']}:{n}"
                    payload = json.dumps({"temperature": 3, "seq": key})
                    infos.append((key, device.client.publish(device.credentials["topics"]["data"], payload, 1)))
            for _, info in infos:
                info.wait_for_publish(20)
            return {key for key, _ in infos}

        before = burst("drain-before")  # a third of it waits for test-worker-3
        time.sleep(1.0)
        assert not before <= set(cluster.stored_seqs()), "the stopped worker's share should be waiting for it"
        drained = hubserver("listen", "--client-id", "test-worker-3", "--drain", env=cluster.env)
        assert "Stopped." in drained.stdout
        after = burst("drain-after")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (before | after) <= set(cluster.stored_seqs()):
            time.sleep(0.2)
        assert (before | after) <= set(cluster.stored_seqs())
    finally:
        for device in devices:
            device.close()
