"""A command sent from the REST API, the admin, a WebSocket and ``send_command()`` (in another process)
reaches a WebSocket viewer of a running ``hubserver run`` as ``pending``, ``sent``, ``delivered``,
``replied``: a real process, a real WebSocket client (``websockets``), a real device (paho) answering."""

import json
import re
import sqlite3
import subprocess
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar

import paho.mqtt.client as paho
import pytest
from websockets.sync.client import connect as ws_connect

from tests.test_run import BINARY, RunningHub, environment

pytestmark = pytest.mark.slow

STATES = ["pending", "sent", "delivered", "replied"]
DEVICE = "plug-1"


class AnsweringPlug:
    """A smart plug that answers every command on its reply topic."""

    def __init__(self, credentials, port):
        self.topics = credentials["topics"]
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"])
        self.client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(self.topics["cmd"], qos=1)

    def _on_message(self, client, userdata, message):
        correlation_id = json.loads(message.payload)["correlation_id"]
        reply = {"correlation_id": correlation_id, "status": "ok", "result": {"relay": "on"}}
        client.publish(self.topics["reply"], json.dumps(reply), qos=1)

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


class Live:
    def __init__(self, hub):
        self.hub = hub
        self.base = f"http://127.0.0.1:{hub.http_port}"
        self.admin_password = re.search(r"with password\s+(\S+)", hub.text()).group(1)
        self.token = self.manage("drf_create_token", "admin").split()[2]
        self.credentials = json.loads(self.manage("provision", "smartplug", DEVICE, "--format", "json"))
        with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
            (self.device_pk,) = db.execute(
                "SELECT id FROM devicetypes_smartplugdevice WHERE device_id = ?", (DEVICE,)
            ).fetchone()

    def manage(self, *args):
        out = subprocess.run(
            [BINARY, *args], env=environment(self.hub.data_dir), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def viewer(self):
        ws = ws_connect(f"ws://127.0.0.1:{self.hub.http_port}/ws/hub/?token={self.token}", open_timeout=10)
        ws.send(json.dumps({"type": "subscribe", "device_type": "smartplug", "device_id": DEVICE, "request_id": 1}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        return ws


def command_states(ws, timeout=15):
    """The states of the first command the viewer hears of, until it is replied."""
    events = []
    while not events or events[-1]["command_status"] != "replied":
        event = json.loads(ws.recv(timeout=timeout))
        if event["type"] == "command" and "request_id" not in event:
            events.append(event)
    assert len({event["correlation_id"] for event in events}) == 1, events
    return [event["command_status"] for event in events]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    hub = RunningHub(tmp_path_factory.mktemp("live") / "data").start()
    try:
        setup = Live(hub)
        plug = AnsweringPlug(setup.credentials, hub.mqtt_port)
        try:
            yield setup
        finally:
            plug.stop()
    finally:
        assert hub.stop() == 0


def test_rest_api(live):
    ws = live.viewer()
    request = urllib.request.Request(
        f"{live.base}/api/smartplug/devices/{DEVICE}/commands/",
        data=json.dumps({"command": "switch", "payload": {"state": "on"}}).encode(),
        headers={"Authorization": f"Token {live.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
    assert command_states(ws) == STATES
    ws.close()


def test_admin_action(live):
    ws = live.viewer()
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.open(f"{live.base}/admin/login/", timeout=10).read()

    def post(path, fields):
        csrf = next(cookie.value for cookie in jar if cookie.name == "csrftoken")  # logging in rotates it
        body = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": csrf}, doseq=True).encode()
        with browser.open(f"{live.base}{path}", body, timeout=10) as response:
            return response.status, response.read().decode()

    status, _ = post("/admin/login/", {"username": "admin", "password": live.admin_password, "next": "/admin/"})
    assert status == 200
    status, page = post(
        "/admin/devicetypes/smartplugdevice/",
        {
            "action": "send_command",
            "_selected_action": [live.device_pk],
            "apply": "yes",
            "command": "switch",
            "payload": '{"state": "on"}',
        },
    )
    assert status == 200 and "Queued command switch for 1 device" in page
    assert command_states(ws) == STATES
    ws.close()


def test_websocket_command(live):
    ws = live.viewer()
    operator = live.viewer()
    operator.send(
        json.dumps(
            {
                "type": "command",
                "device_type": "smartplug",
                "device_id": DEVICE,
                "command": "switch",
                "payload": {"state": "toggle"},
                "request_id": "go",
            }
        )
    )
    answer = json.loads(operator.recv(timeout=10))
    assert (answer["type"], answer["command_status"], answer["request_id"]) == ("command", "pending", "go")
    assert command_states(ws) == STATES
    assert command_states(operator) == STATES[1:]  # the sender got pending as its answer, then each state once
    ws.close()
    operator.close()


def test_send_command_from_another_process(live):
    ws = live.viewer()
    live.manage(
        "shell",
        "-c",
        "from hubserver.devicetypes.devices import SmartPlug; "
        f"plug = SmartPlug._device_model.objects.get(device_id={DEVICE!r}); "
        "SmartPlug.send_command(plug, 'switch', {'state': 'off'})",
    )
    assert command_states(ws) == STATES  # the hub's dispatcher finds it on its poll and announces it
    ws.close()
