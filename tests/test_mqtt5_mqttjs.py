"""MQTT 5 with MQTT.js (``npm install mqtt``, the JavaScript client nobody here wrote), over TCP against the
in-process hub and over WebSocket (``/mqtt`` on the HTTP port) against ``hubserver run``: message
properties, reason codes, session expiry, topic aliases, shared subscriptions and request/response, the
hub's commands included. The scenarios are ``tests/mqttjs/scenarios.cjs``; this module asserts on what
the clients saw and on the database.

MQTT.js is installed by the ``mqttjs`` session fixture into a cache directory of its own
(``HUBSERVER_TEST_NODE_CACHE``, default ``~/.cache/hubserver-tests/node``) when it is not there yet.
"""

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from channels.db import database_sync_to_async

from tests.conftest import provision_device
from tests.test_run import BINARY, environment, running  # noqa: F401  (the fixture)
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("node") or not shutil.which("npm"), reason="Node.js and npm are not installed"),
]

MQTTJS = "mqtt@5"  # the major version the scenarios are written for
SCENARIOS = Path(__file__).parent / "mqttjs" / "scenarios.cjs"
SERVICE = {"username": "svc", "password": "svc-pass"}


@pytest.fixture(scope="session")
def mqttjs():
    """The ``node_modules`` directory holding MQTT.js, installed with npm on first use."""
    cache = Path(os.environ.get("HUBSERVER_TEST_NODE_CACHE") or Path.home() / ".cache" / "hubserver-tests" / "node")
    modules = cache / "node_modules"
    if not (modules / "mqtt" / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache), MQTTJS],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return modules


class Scenarios:
    """``node scenarios.cjs`` as a subprocess: its JSON lines by scenario; ``on_ready`` answers "ready"."""

    def __init__(self, mqttjs, config, on_ready=None):
        self.mqttjs = mqttjs
        self.config = config
        self.on_ready = on_ready
        self.results = {}

    async def run(self, timeout=120):
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCENARIOS),
            json.dumps(self.config),
            env={**os.environ, "NODE_PATH": str(self.mqttjs)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(timeout):
                while line := await process.stdout.readline():
                    item = json.loads(line)
                    if item["scenario"] == "ready":
                        await self.on_ready()
                        process.stdin.write(b"go\n")
                        await process.stdin.drain()
                    else:
                        self.results[item["scenario"]] = item
                await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        stderr = (await process.stderr.read()).decode()
        assert process.returncode == 0, stderr
        return self

    def __getitem__(self, name):
        item = self.results[name]
        assert "error" not in item, f"{name}: {item['error']}"
        return item["result"]


def check_client_side(results, device_topics):
    """What MQTT.js saw, the same over TCP and WebSocket."""
    properties = results["properties"]
    assert properties["granted"] == [1] and properties["code"] == 0
    message = properties["message"]
    assert message["topic"] == device_topics["data"]
    assert message["properties"]["subscriptionIdentifier"] == 42
    assert message["properties"]["contentType"] == "application/json"
    assert message["properties"]["correlationData"] == "batch-7"
    assert message["properties"]["userProperties"] == {"site": "north", "shift": "night"}

    codes = results["reasonCodes"]
    assert (codes["refused"], codes["badFormat"], codes["stored"]) == (0x87, 0x99, 0)
    assert codes["connected"] is True  # refusals do not close the connection
    assert codes["connack"] == 0x86  # bad user name or password

    expiry = results["sessionExpiry"]
    assert expiry["sessionPresent"] is True
    assert expiry["message"]["payload"] == "while you were away"

    aliases = results["topicAliases"]
    assert aliases["maximum"] >= 1 and aliases["codes"] == [0, 0, 0]
    received = aliases["received"]
    assert [m["topic"] for m in received] == ["lab/alias/long/topic/name"] * 3  # resolved by MQTT.js
    assert [m["payload"] for m in received] == ["1", "2", "3"]
    assert all(m["properties"].get("topicAlias") for m in received[1:])  # the hub sent them aliased

    shared = results["sharedSubscriptions"]["counts"]
    assert sorted(shared[0] + shared[1]) == [f"lab/shared/{n}" for n in range(6)]  # each once
    assert shared[0] and shared[1]  # both members got some

    request = results["requestResponse"]
    assert request["reply"]["payload"] == "answer to what time is it"
    assert request["reply"]["properties"]["correlationData"] == "req-1"
    command = request["command"]
    assert command["properties"]["responseTopic"] == device_topics["reply"]
    assert command["properties"]["contentType"] == "application/json"
    assert command["properties"]["userProperties"] == {"command": command_name(command)}
    assert command["properties"]["correlationData"] == json.loads(command["payload"])["correlation_id"]
    assert request["responseInformation"] == device_topics["reply"]
    assert request["replyCode"] == 0


def command_name(command):
    return json.loads(command["payload"])["command"]


async def test_mqttjs_over_tcp(hub, service, mqttjs):
    device, credentials = await provision_device("thermometer", "js-1")
    await provision_device("thermometer", "js-2")
    topics = {kind: f"things/thermometer/js-1/{kind}" for kind in ("data", "status", "cmd", "reply")}
    sent = []

    async def send_command():
        sent.append(await Thermometer.asend_command(device, "set_mode", {"mode": "manual"}))

    config = {
        "url": f"mqtt://127.0.0.1:{hub.engine.port}",
        "device": {
            "username": credentials["mqtt_username"],
            "password": credentials["mqtt_password"],
            "topics": topics,
        },
        "service": SERVICE,
        "other": "things/thermometer/js-2/data",
    }
    results = await Scenarios(mqttjs, config, send_command).run()
    check_client_side(results, topics)

    rows = await database_sync_to_async(list)(
        ThermometerMessage.objects.filter(device__device_id="js-1", direction="inbound").order_by("pk")
    )
    with_properties = rows[0]
    assert with_properties.payload_json == {"temperature": 21.5}
    assert (with_properties.content_type, with_properties.correlation_id) == ("application/json", "batch-7")
    assert with_properties.user_properties == {"site": "north", "shift": "night"}
    command = await database_sync_to_async(ThermometerMessage.objects.get)(pk=sent[0].pk)
    for _ in range(100):
        if command.command_status == "replied":
            break
        await asyncio.sleep(0.05)
        await database_sync_to_async(command.refresh_from_db)()
    assert (command.command_status, command.command_result) == ("replied", "done")


def shell(data_dir, code):
    subprocess.run(
        [BINARY, "shell", "-c", code], env=environment(data_dir), check=True, capture_output=True, timeout=120
    )


async def test_mqttjs_over_websocket(running, mqttjs):  # noqa: F811
    hub = running()
    first, second = hub.provision(2, prefix="jsws-")
    shell(
        hub.data_dir,
        "from django.contrib.auth.models import User, Permission; "
        "u = User.objects.create_user('svc', password='svc-pass'); "
        "u.user_permissions.add(Permission.objects.get(codename='mqtt_service'))",
    )

    async def send_command():
        code = (
            "from hubserver import registry; t = registry.get('weatherstation'); "
            f"t.send_command(registry.get_models('weatherstation')[0].objects.get(device_id={first['device_id']!r}), "
            "'reboot')"
        )
        await asyncio.to_thread(shell, hub.data_dir, code)

    config = {
        "url": f"ws://127.0.0.1:{hub.http_port}/mqtt",
        "device": {"username": first["mqtt_username"], "password": first["mqtt_password"], "topics": first["topics"]},
        "service": SERVICE,
        "other": second["topics"]["data"],
    }
    results = await Scenarios(mqttjs, config, send_command).run()
    check_client_side(results, first["topics"])
    assert command_name(results["requestResponse"]["command"]) == "reboot"
    assert hub.stop() == 0, hub.text()
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        stored = db.execute(
            # Raw SQL sees the usual direction (inbound) and content type (application/json) stored as ''.
            "SELECT content_type, correlation_id, user_properties FROM devicetypes_weatherstationmessage "
            "WHERE direction = '' AND topic LIKE '%/data' ORDER BY id"
        ).fetchall()
        assert stored[0][:2] == ("", "batch-7")
        assert json.loads(stored[0][2]) == {"site": "north", "shift": "night"}
        replied = db.execute(
            "SELECT command_status, command_result FROM devicetypes_weatherstationmessage WHERE direction = 'outbound'"
        ).fetchall()
        assert replied == [("replied", '"done"')]
