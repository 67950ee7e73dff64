"""MQTT 5 with Debian's mosquitto clients (``mosquitto_pub``, ``mosquitto_sub``, ``mosquitto_rr`` with
``-V mqttv5``) against the in-process hub: properties, reason codes, session expiry, topic aliases,
shared subscriptions and request/response, as a user would type them."""

import asyncio
import json
import shutil

import pytest
from channels.db import database_sync_to_async

from tests.conftest import provision_device
from tests.mqtt import Client5, until
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which("mosquitto_sub"), reason="Debian's mosquitto-clients is not installed"),
]

SERVICE = ("svc", "svc-pass")
# mosquitto_sub's output: topic, QoS, retain, content type, correlation data, user properties, response
# topic, subscription identifier, payload
FORMAT = "%t|%q|%r|%C|%D|%P|%R|%S|%p"


class Process:
    def __init__(self, *argv):
        self.argv = argv
        self.proc = None
        self.lines = []
        self._reader = None

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))

    async def wait(self, timeout=15):
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code

    async def stderr(self):
        return (await self.proc.stderr.read()).decode()

    def stop(self):
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
def processes():
    made = []

    async def start(*argv):
        process = await Process(*argv).start()
        made.append(process)
        return process

    yield start
    for process in made:
        process.stop()


def sub(port, client_id, *args):
    return ("mosquitto_sub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-i", client_id, *_auth(), *args)


def pub(port, client_id, *args):
    return ("mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-i", client_id, *_auth(), *args)


def _auth():
    return ("-u", SERVICE[0], "-P", SERVICE[1])


async def subscribed(hub, client_id, count=1):
    await until(
        lambda: len(hub.engine.broker._filters_by_client.get(client_id, ())) >= count, message=f"{client_id} subscribed"
    )


async def test_properties_travel_from_mosquitto_pub_to_mosquitto_sub(hub, service, processes):
    receiver = await processes(
        *sub(
            hub.engine.port,
            "msub",
            "-t",
            "lab/#",
            "-q",
            "1",
            "-C",
            "1",
            "-W",
            "15",
            "-F",
            FORMAT,
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
        )
    )
    await subscribed(hub, "msub")
    sender = await processes(
        *pub(
            hub.engine.port,
            "mpub",
            "-t",
            "lab/props",
            "-q",
            "1",
            "-m",
            "hello",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "correlation-data",
            "req-9",
            "-D",
            "publish",
            "response-topic",
            "lab/answers",
            "-D",
            "publish",
            "user-property",
            "site",
            "roof",
        )
    )
    assert await sender.wait() == 0, await sender.stderr()
    assert await receiver.wait() == 0, await receiver.stderr()
    topic, qos, retain, content_type, correlation, user, response, sub_id, payload = receiver.lines[0].split("|")
    assert (topic, qos, retain, payload) == ("lab/props", "1", "0", "hello")
    assert (content_type, correlation, response, sub_id) == ("text/plain", "req-9", "lab/answers", "7")
    assert user == "site:roof"


async def test_a_refused_device_message_fails_mosquitto_pub_with_the_reason(hub, processes):
    _, credentials = await provision_device("thermometer", "t-1")
    username, password = credentials["mqtt_username"], credentials["mqtt_password"]
    base = (
        "mosquitto_pub",
        "-V",
        "mqttv5",
        "-h",
        "127.0.0.1",
        "-p",
        str(hub.engine.port),
        "-i",
        username,
        "-u",
        username,
        "-P",
        password,
        "-q",
        "1",
    )
    ok = await processes(*base, "-t", "things/thermometer/t-1/data", "-m", '{"temperature": 20}')
    assert await ok.wait() == 0, await ok.stderr()
    refused = await processes(*base, "-t", "things/thermometer/t-9/data", "-m", '{"temperature": 20}')
    await refused.wait()
    assert "not authorized" in (await refused.stderr()).lower()  # PUBACK 0x87, printed by mosquitto_pub
    wrong = await processes(*base[:-4], "-P", "wrong", "-t", "things/thermometer/t-1/data", "-m", "{}")
    assert await wrong.wait() != 0
    assert "bad user name or password" in (await wrong.stderr()).lower()  # CONNACK 0x86


async def test_session_expiry_with_mosquitto_sub(hub, service, processes):
    first = await processes(*sub(hub.engine.port, "keeper", "-c", "-x", "60", "-q", "1", "-t", "lab/kept", "-W", "2"))
    await subscribed(hub, "keeper")
    first.stop()
    await first.wait()
    await hub.engine.publish("lab/kept", b"queued while away", qos=1)
    again = await processes(
        *sub(hub.engine.port, "keeper", "-c", "-x", "60", "-q", "1", "-t", "lab/kept", "-C", "1", "-W", "15")
    )
    assert await again.wait() == 0, await again.stderr()
    assert again.lines == ["queued while away"]


async def test_topic_aliases_from_mosquitto_pub(hub, service, processes):
    receiver = await processes(
        *sub(hub.engine.port, "aliased-sub", "-t", "alias/#", "-C", "3", "-W", "15", "-F", "%t %p")
    )
    await subscribed(hub, "aliased-sub")
    sender = await processes(
        *pub(hub.engine.port, "aliaser", "-t", "alias/long/topic/name", "-l", "-D", "publish", "topic-alias", "1")
    )
    sender.proc.stdin.write(b"one\ntwo\nthree\n")
    await sender.proc.stdin.drain()
    sender.proc.stdin.close()
    assert await sender.wait() == 0, await sender.stderr()
    assert await receiver.wait() == 0, await receiver.stderr()
    assert receiver.lines == ["alias/long/topic/name one", "alias/long/topic/name two", "alias/long/topic/name three"]


async def test_shared_subscription_between_mosquitto_subs(hub, service, processes):
    members = [
        await processes(*sub(hub.engine.port, f"share-{n}", "-t", "$share/grp/work/#", "-q", "1", "-W", "10"))
        for n in range(2)
    ]
    for n in range(2):
        await subscribed(hub, f"share-{n}")
    for n in range(6):
        await hub.engine.publish(f"work/{n}", str(n).encode(), qos=1)
    await until(lambda: sum(len(m.lines) for m in members) >= 6, message="six shared deliveries")
    await asyncio.sleep(0.3)
    assert sorted(line for m in members for line in m.lines) == [str(n) for n in range(6)]
    assert all(m.lines for m in members)


async def test_request_response_with_mosquitto_rr(hub, service, processes):
    responder = Client5(hub.engine.port, "responder", *service)
    await responder.connect()
    await responder.subscribe("svc/requests", qos=1)

    async def answer():
        (request,) = await responder.wait_messages(1, timeout=15)
        correlation = request.prop("CorrelationData")
        extra = {"CorrelationData": correlation} if correlation is not None else {}
        await responder.publish(request.prop("ResponseTopic"), b"pong:" + request.payload, **extra)

    task = asyncio.ensure_future(answer())
    try:
        rr = await processes(
            "mosquitto_rr",
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            str(hub.engine.port),
            "-i",
            "asker",
            *_auth(),
            "-t",
            "svc/requests",
            "-e",
            "svc/responses/asker",
            "-m",
            "ping",
            "-W",
            "15",
        )
        code = await rr.wait()
        assert code == 0, (await rr.stderr(), responder.messages, task)
        assert rr.lines == ["pong:ping"]
        await task
    finally:
        task.cancel()
        responder.stop()


# --- what the hub does with a device's MQTT 5 messages, from Debian's clients --------------------------


def device_args(port, credentials):
    username = credentials["mqtt_username"]
    return ("-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-i", username, "-u", username, "-P",
            credentials["mqtt_password"])  # fmt: skip


@database_sync_to_async
def inbound(device_id):
    return list(ThermometerMessage.objects.filter(device__device_id=device_id, direction="inbound").order_by("pk"))


async def test_a_devices_properties_from_mosquitto_pub_are_stored_on_its_message_row(hub, processes):
    _, credentials = await provision_device("thermometer", "mp-1")
    sender = await processes(
        "mosquitto_pub",
        *device_args(hub.engine.port, credentials),
        "-q", "1", "-t", "things/thermometer/mp-1/data", "-m", '{"temperature": 19.5}',
        "-D", "publish", "content-type", "application/vnd.example+json",
        "-D", "publish", "correlation-data", "batch-3",
        "-D", "publish", "user-property", "site", "roof",
        "-D", "publish", "user-property", "tag", "a",
        "-D", "publish", "user-property", "tag", "b",
    )  # fmt: skip
    assert await sender.wait() == 0, await sender.stderr()
    (row,) = await inbound("mp-1")  # stored before mosquitto_pub got its PUBACK and exited
    assert row.payload_json == {"temperature": 19.5}
    assert row.content_type == "application/vnd.example+json"
    assert row.correlation_id == "batch-3"
    assert row.user_properties == {"site": "roof", "tag": ["a", "b"]}
    assert row.processing_status == "completed"


async def test_a_command_reaches_mosquitto_sub_with_correlation_data_and_its_reply_is_matched_by_it(hub, processes):
    device, credentials = await provision_device("thermometer", "mc-1")
    args = device_args(hub.engine.port, credentials)
    listener = await processes(
        "mosquitto_sub", *args, "-q", "1", "-t", "things/thermometer/mc-1/cmd", "-C", "1", "-W", "15",
        "-F", "%R|%D|%C|%P|%p",
    )  # fmt: skip
    await subscribed(hub, credentials["mqtt_username"])
    message = await Thermometer.asend_command(device, "set_mode", {"mode": "manual"})
    assert await listener.wait() == 0, await listener.stderr()
    response_topic, correlation, content_type, user, payload = listener.lines[0].split("|", 4)
    assert response_topic == "things/thermometer/mc-1/reply"
    assert correlation == message.correlation_id
    assert content_type == "application/json"
    assert user == "command:set_mode"
    assert json.loads(payload)["payload"] == {"mode": "manual"}  # the JSON envelope is there too
    # The reply names its command by Correlation Data alone, as mosquitto_pub sends it.
    reply = await processes(
        "mosquitto_pub", *args, "-q", "1", "-t", response_topic, "-m", '{"status": "ok", "result": "manual"}',
        "-D", "publish", "correlation-data", correlation,
    )  # fmt: skip
    assert await reply.wait() == 0, await reply.stderr()
    for _ in range(200):
        row = await database_sync_to_async(ThermometerMessage.objects.get)(pk=message.pk)
        if row.command_status == "replied":
            break
        await asyncio.sleep(0.05)
    assert (row.command_status, row.command_result) == ("replied", "manual")


@pytest.mark.parametrize("hub_settings_override", [{"MAX_PAYLOAD_SIZE": 64}], indirect=True)
async def test_refusals_reach_mosquitto_pub_as_reason_codes(hub, processes, tmp_path):
    _, credentials = await provision_device("thermometer", "mr-1")
    args = (*device_args(hub.engine.port, credentials), "-q", "1", "-t", "things/thermometer/mr-1/data")
    not_utf8 = tmp_path / "not-utf8"
    not_utf8.write_bytes(b'{"temperature": "\xff\xfe"}')
    bad_format = await processes(
        "mosquitto_pub", *args, "-f", str(not_utf8), "-D", "publish", "payload-format-indicator", "1"
    )
    await bad_format.wait()
    assert "payload format invalid" in (await bad_format.stderr()).lower()  # PUBACK 0x99
    too_big = await processes("mosquitto_pub", *args, "-m", '{"temperature": 1, "note": "' + "x" * 80 + '"}')
    await too_big.wait()
    assert "quota exceeded" in (await too_big.stderr()).lower()  # PUBACK 0x97
    ok = await processes("mosquitto_pub", *args, "-m", '{"temperature": 1}')
    assert await ok.wait() == 0, await ok.stderr()
    assert [row.payload_json for row in await inbound("mr-1")] == [{"temperature": 1}]  # nothing refused stored


async def test_mosquitto_pub_speaking_mqtt_3_1_is_refused_with_connack_0x01(hub, service, processes):
    old = await processes(
        "mosquitto_pub", "-V", "mqttv31", "-h", "127.0.0.1", "-p", str(hub.engine.port), "-i", "old-client",
        *_auth(), "-t", "lab/old", "-m", "x",
    )  # fmt: skip
    assert await old.wait() != 0
    assert "unacceptable protocol version" in (await old.stderr()).lower()
