"""DASF software against ``hubserver run``, unchanged: a demessaging backend module (tests/dasf_backend.py,
started with demessaging's own ``listen`` command) and demessaging's client (``MessageProducer``), on real
ports, with API tokens in the header, as a DASF user would configure them."""

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.test_run import BINARY, RunningHub, environment

pytestmark = pytest.mark.slow

BACKEND = str(Path(__file__).with_name("dasf_backend.py"))

SETUP = """
import json
from django.contrib.auth.models import User
from guardian.shortcuts import assign_perm
from rest_framework.authtoken.models import Token
from hubserver.dasf.models import BrokerTopic

tokens = {}
for name in ("backend", "client", "nobody"):
    user = User.objects.create_user(name)
    tokens[name] = Token.objects.create(user=user).key
for slug, store in (("calc", "cache"), ("cached", "cache"), ("cacheall", "cacheall"), ("disabled", "disabled")):
    topic = BrokerTopic.objects.create(slug=slug, store_messages=store)
    assign_perm("can_consume", User.objects.get(username="backend"), topic)
    assign_perm("can_produce", User.objects.get(username="client"), topic)
    assign_perm("can_view_status", User.objects.get(username="client"), topic)
from django.contrib.auth.models import Permission

mqtt = User.objects.create_user("mqtt-service", password="mqtt-secret")
mqtt.user_permissions.add(Permission.objects.get(codename="mqtt_service"))
for perm in ("can_produce", "can_consume"):
    assign_perm(perm, mqtt, BrokerTopic.objects.get(slug="calc"))
outsider = User.objects.create_user("mqtt-outsider", password="mqtt-secret")
outsider.user_permissions.add(Permission.objects.get(codename="mqtt_service"))
print(json.dumps(tokens))
"""


class Hub:
    """``hubserver run`` with fast pings, its users' tokens, and backends started on demand."""

    def __init__(self, data_dir):
        self.hub = RunningHub(
            data_dir, env={"HUBSERVER_DASF_PING_INTERVAL": "1", "HUBSERVER_DASF_PONG_TIMEOUT": "0.5"}
        ).start()
        out = subprocess.run(
            [BINARY, "shell", "-c", SETUP],
            env=environment(data_dir),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        self.tokens = json.loads(out.stdout.strip().splitlines()[-1])
        self.url = f"ws://127.0.0.1:{self.hub.http_port}/ws"
        self.backends = []

    def backend(self, topic, record):
        """Start tests/dasf_backend.py on ``topic`` as the user ``backend``."""
        process = subprocess.Popen(
            [
                sys.executable,
                BACKEND,
                "--websocket-url",
                self.url,
                "--topic",
                topic,
                "--header",
                json.dumps({"Authorization": f"Token {self.tokens['backend']}"}),
                "listen",
            ],
            env={**environment(self.hub.data_dir), "DASF_TEST_RECORD": str(record)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.backends.append(process)
        return process

    def http(self, path, token=None):
        """``(status, body, location)`` of a GET, without following redirects."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.hub.http_port}{path}")
        if token:
            request.add_header("Authorization", f"Token {token}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read().decode(), None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.headers.get("Location")

    def close(self):
        for process in self.backends:
            stop(process)
        self.hub.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = Hub(tmp_path_factory.mktemp("dasf") / "data")
    try:
        yield running
    finally:
        running.close()


class Client:
    """demessaging's client (its MessageProducer), as a DASF frontend uses it."""

    def __init__(self, hub, topic, user="client"):
        from demessaging.config import WebsocketURLConfig
        from demessaging.messaging.producer import MessageProducer

        config = WebsocketURLConfig(
            topic=topic, websocket_url=hub.url, header={"Authorization": f"Token {hub.tokens[user]}"}
        )
        self.producer = MessageProducer(config)
        self.producer.connect()
        assert self.producer.wait_for_connection(10)

    def start(self, request=None, message_type=None):
        """Send a request; returns a function that waits for (and returns) the answer."""
        message = {"properties": {}, "payload": ""}
        if message_type:
            message["properties"]["messageType"] = message_type
        if request is not None:
            message["payload"] = base64.b64encode(json.dumps(request).encode()).decode()
        answer = {}
        thread = threading.Thread(
            target=lambda: answer.update(result=asyncio.run(self.producer.send_request(message))), daemon=True
        )
        thread.start()

        def wait(timeout=30):
            thread.join(timeout)
            assert "result" in answer, f"no answer within {timeout}s"
            return answer["result"]

        return wait

    def call(self, request=None, message_type=None, timeout=30):
        return self.start(request, message_type)(timeout)

    def close(self):
        self.producer.disconnect()


def until(check, timeout=30, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.1)


def test_requests_answers_errors_and_api_info(hub, tmp_path):
    hub.backend("calc", tmp_path / "record")
    client = Client(hub, "calc")
    try:
        answer = client.call({"func_name": "add", "a": 2, "b": 3})
        assert answer == {"status": "success", "msg": "5"}

        failed = client.call({"func_name": "fail", "message": "boom"})
        assert failed["status"] == "error" and "boom" in failed["error"]

        info = client.call(message_type="api_info")
        assert info["status"] == "success"
        assert {f["name"] for f in json.loads(info["msg"])["functions"]} == {"add", "fail", "record"}
    finally:
        client.close()


def test_a_client_without_can_produce_is_refused_clearly(hub):
    client = Client(hub, "calc", user="nobody")
    try:
        answer = client.call({"func_name": "add", "a": 1, "b": 1})
    finally:
        client.close()
    assert answer["status"] == "error"
    assert answer["msg"]["result"].startswith("error: user 'nobody' may not publish to topic 'calc'")


@pytest.mark.parametrize("topic", ["cached", "cacheall"])
def test_a_reconnecting_backend_gets_the_requests_stored_for_it(hub, tmp_path, topic):
    record = tmp_path / "record"
    backend = hub.backend(topic, record)
    client = Client(hub, topic)
    try:
        assert client.call({"func_name": "record", "note": "first"}) == {"status": "success", "msg": '"first"'}
        stop(backend)  # the backend goes away; a request arrives meanwhile
        waiting = client.start({"func_name": "record", "note": "while away"})
        hub.backend(topic, record)  # and comes back
        assert waiting() == {"status": "success", "msg": '"while away"'}
        assert record.read_text().splitlines() == ["first", "while away"]
    finally:
        client.close()


def test_disabled_storage_keeps_nothing_for_a_reconnecting_backend(hub, tmp_path):
    record = tmp_path / "record"
    client = Client(hub, "disabled")
    try:
        client.start({"func_name": "record", "note": "lost"})  # nobody listens, nothing is kept
        hub.backend("disabled", record)
        until(lambda: hub.http("/disabled/status/", hub.tokens["client"])[0] == 200, message="the backend")
        assert client.call({"func_name": "record", "note": "live"}) == {"status": "success", "msg": '"live"'}
        assert record.read_text().splitlines() == ["live"]
    finally:
        client.close()


def test_availability_moves_online_and_offline_with_the_status_and_ping_views(hub, tmp_path):
    token = hub.tokens["client"]
    backend = hub.backend("calc", tmp_path / "record")
    assert until(lambda: hub.http("/calc/status/", token)[0] == 200, message="the topic to be online")
    assert hub.http("/calc/status/", token)[1] == "Consumer connected"
    stop(backend)
    until(lambda: hub.http("/calc/status/", token)[0] == 503, message="the topic to be offline")
    assert hub.http("/calc/status/", token)[1] == "Consumer could not be reached"

    status, _, location = hub.http("/calc/ping/", token)
    assert (status, location) == (302, "/calc/status/")
    assert hub.http("/calc/ping/", hub.tokens["nobody"])[0] == 403
    assert hub.http("/calc/status/")[0] == 302  # anonymous: to the login page
    assert hub.http("/nope/status/", token)[0] == 404


class MqttClient:
    """A paho client of the hub's MQTT port, as the MQTT service user."""

    def __init__(self, hub, username="mqtt-service"):
        import queue

        import paho.mqtt.client as paho

        self.messages = queue.Queue()
        self.subscribed = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"dasf-test-{time.monotonic_ns()}")
        self.client.username_pw_set(username, "mqtt-secret")
        self.client.on_message = lambda client, userdata, message: self.messages.put(
            (message.topic, json.loads(message.payload))
        )
        self.client.on_subscribe = lambda client, userdata, mid, codes, properties: self.subscribed.put(codes[0].value)
        self.client.connect("127.0.0.1", hub.hub.mqtt_port)
        self.client.loop_start()

    def subscribe(self, topic):
        """The SUBACK's code (1: granted QoS 1; 0x80: refused)."""
        self.client.subscribe(topic, qos=1)
        return self.subscribed.get(timeout=20)

    def publish(self, topic, message):
        info = self.client.publish(topic, json.dumps(message), qos=1)
        info.wait_for_publish(20)
        assert info.is_published()

    def next(self, timeout=30):
        return self.messages.get(timeout=timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def test_the_mqtt_bridge_both_ways(hub, tmp_path):
    hub.backend("calc", tmp_path / "record")
    mqtt = MqttClient(hub)
    outsider = MqttClient(hub, "mqtt-outsider")  # a service client without the topic's permissions
    client = Client(hub, "calc")
    try:
        # MQTT -> DASF -> MQTT: a request published on dasf/calc reaches the demessaging backend, whose
        # answer comes back on dasf/<the response topic>.
        assert mqtt.subscribe("dasf/calc_over_mqtt") == 1
        request = base64.b64encode(json.dumps({"func_name": "add", "a": 20, "b": 22}).encode()).decode()
        mqtt.publish(
            "dasf/calc",
            {
                "properties": {"requestContext": 7, "messageType": "request", "response_topic": "calc_over_mqtt"},
                "context": 7,
                "payload": request,
            },
        )
        topic, answer = mqtt.next()
        assert topic == "dasf/calc_over_mqtt"
        assert answer["properties"]["messageType"] == "response" and answer["properties"]["status"] == "success"
        assert base64.b64decode(answer["payload"]).decode() == "42"

        # DASF -> MQTT: a demessaging client's request is seen by the MQTT subscriber of dasf/calc.
        assert mqtt.subscribe("dasf/calc") == 1
        assert client.call({"func_name": "add", "a": 1, "b": 1}) == {"status": "success", "msg": "2"}
        while True:
            topic, seen = mqtt.next()
            if topic == "dasf/calc" and seen["properties"].get("messageType") == "request":
                break
        assert json.loads(base64.b64decode(seen["payload"])) == {"func_name": "add", "a": 1, "b": 1}

        # Without can_consume / can_produce: the subscription is refused, the publish dropped; both counted.
        assert outsider.subscribe("dasf/calc") == 0x80
        outsider.publish("dasf/calc", {"properties": {"requestContext": 1, "messageType": "request"}, "payload": ""})
        status, body, _ = hub.http("/metrics")  # from localhost
        assert status == 200
        assert 'hubserver_dasf_mqtt_messages_total{outcome="dropped"} 1.0' in body
        assert "hubserver_dasf_mqtt_subscriptions_refused_total 1.0" in body
    finally:
        client.close()
        mqtt.close()
        outsider.close()
