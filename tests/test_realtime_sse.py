"""SSE streams (resume with Last-Event-ID, no gaps, no duplicates) and polling with a since cursor."""

import json

import orjson
import pytest
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator
from django.test import override_settings

from hubserver.realtime.events import type_group
from tests.conftest import device_client, provision_device
from tests.realtime_urls import VIEW, SSEClient, api_token, fanout_on, flush_layer, http_app, make_user, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

STORED = {"reading", "status"}


@pytest.fixture(autouse=True)
async def realtime_urls():
    await flush_layer()
    with override_settings(ROOT_URLCONF="tests.realtime_urls"):
        yield
    await flush_layer()


async def publish(device, device_id, payload, kind="data"):
    await device.publish(f"things/thermometer/{device_id}/{kind}", json.dumps(payload))


async def route(hub, device_id, payload, kind="data"):
    result = await hub.router.route(kind, "thermometer", device_id, json.dumps(payload))
    assert result.stored
    await hub.router.flush()
    return result


async def test_sse_resumes_after_a_reconnect_with_last_event_id_without_gaps_or_duplicates(hub, clients):
    user = await make_user("viewer", VIEW)
    cookie = await session_cookie(user)
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "t-1")
        stream = SSEClient("/iot/stream/thermometer/", [cookie])
        assert await stream.start() == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        await stream.ready()
        for i in range(5):
            await publish(device, "t-1", {"uptime": i})
        first = await stream.events(2, kinds=STORED)
        assert [e["readings"] for e in first] == [{"uptime": 0}, {"uptime": 1}]
        assert all(e["_id"] == e["id"] for e in first) and first[0]["id"] < first[1]["id"]
        resume_from = first[-1]["_id"]
        await stream.close()  # events 2..4 were sent but never read: lost with the connection

        await publish(device, "t-1", {"uptime": 5})
        await publish(device, "t-1", {"battery_level": 50}, kind="status")
        await publish(device, "t-1", {"uptime": 6})
        await hub.router.flush()

        stream = SSEClient("/iot/stream/thermometer/", [cookie, (b"last-event-id", str(resume_from).encode())])
        assert await stream.start() == 200
        missed = await stream.events(6, kinds=STORED)
        values = [e["readings"]["uptime"] if e["type"] == "reading" else ("status", e["battery_level"]) for e in missed]
        assert values == [2, 3, 4, 5, ("status", 50.0), 6]
        ids = [e["_id"] for e in missed]
        assert ids == sorted(set(ids)) and ids[0] > resume_from
        assert await stream.nothing(0.3, kinds=STORED)
    await stream.close()


async def test_sse_replays_exactly_the_missed_events_then_goes_live(hub, clients):
    user = await make_user("viewer", VIEW)
    cookie = await session_cookie(user)
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "t-1")
        stream = SSEClient("/iot/stream/thermometer/", [cookie])
        await stream.start()
        await stream.ready()
        for i in range(4):
            await publish(device, "t-1", {"uptime": i})
        seen = await stream.events(2, kinds=STORED)
        resume_from = seen[-1]["_id"]
        await stream.close()
        for i in range(4, 6):
            await publish(device, "t-1", {"uptime": i})
        await hub.router.flush()

        stream = SSEClient("/iot/stream/thermometer/", [cookie], query=f"last_event_id={resume_from}".encode())
        await stream.start()
        missed = await stream.events(4, kinds=STORED)
        assert [e["readings"]["uptime"] for e in missed] == [2, 3, 4, 5]
        assert await stream.nothing(0.3, kinds=STORED)  # nothing twice
        await publish(device, "t-1", {"uptime": 6})
        live = await stream.events(1, kinds=STORED)
        assert live[0]["readings"] == {"uptime": 6} and live[0]["_id"] > missed[-1]["_id"]
        assert await stream.nothing(0.3, kinds=STORED)
        await stream.close()


async def test_a_device_stream_with_an_api_token_and_heartbeats(hub):
    await provision_device("thermometer", "t-1")
    await provision_device("thermometer", "t-2")
    user = await make_user("script", VIEW)
    key = await api_token(user)
    with override_settings(HUBSERVER={"SSE_HEARTBEAT": 0.1}):
        async with fanout_on(hub.router):
            stream = SSEClient("/iot/stream/thermometer/t-2/", [(b"authorization", f"Token {key}".encode())])
            assert await stream.start() == 200
            await stream.ready()
            await route(hub, "t-1", {"uptime": 1})
            await route(hub, "t-2", {"uptime": 2})
            events = await stream.events(1, kinds=STORED)
            assert (events[0]["device_id"], events[0]["readings"]) == ("t-2", {"uptime": 2})
            assert await stream.nothing(0.3, kinds=STORED)
            assert ": keepalive" in stream.comments
            await stream.close()


async def test_a_stream_catches_up_from_the_database_when_the_channel_layer_drops_a_message(hub, monkeypatch):
    await provision_device("thermometer", "t-1")
    user = await make_user("viewer", VIEW)
    layer = get_channel_layer()
    original = layer.group_send
    dropped = []

    async def lossy(group, message):
        if group == type_group("thermometer") and not dropped:
            dropped.append(message)  # a full channel: the layer drops it silently
            return
        await original(group, message)

    async with fanout_on(hub.router):
        stream = SSEClient("/iot/stream/thermometer/", [await session_cookie(user)])
        await stream.start()
        await stream.ready()
        monkeypatch.setattr(layer, "group_send", lossy)
        await route(hub, "t-1", {"uptime": 1})
        await route(hub, "t-1", {"uptime": 2})
        events = await stream.events(2, kinds=STORED)
        assert dropped and [e["readings"]["uptime"] for e in events] == [1, 2]
        assert await stream.nothing(0.3, kinds=STORED)
        await stream.close()


async def _get(path, headers=(), query=""):
    communicator = HttpCommunicator(http_app(), "GET", f"{path}?{query}", headers=[(b"host", b"localhost"), *headers])
    response = await communicator.get_response(timeout=5)
    await communicator.wait(timeout=5)
    return response["status"], orjson.loads(response["body"])


async def test_streams_and_polls_check_the_apis_permissions(hub):
    await provision_device("thermometer", "t-1")
    nobody = await session_cookie(await make_user("nobody"))
    viewer = await session_cookie(await make_user("viewer", VIEW))
    for path in ("/iot/stream/thermometer/", "/iot/poll/thermometer/"):
        status, body = await _get(path)
        assert (status, body["code"]) == (401, "not_authenticated")
        status, body = await _get(path, [(b"authorization", b"Token nope")])
        assert status == 401
        status, body = await _get(path, [nobody])
        assert (status, body["code"]) == (403, "permission_denied")
        status, body = await _get(path.replace("thermometer", "toaster"), [viewer])
        assert (status, body["code"]) == (404, "unknown_device_type")
        status, body = await _get(path + "ghost/", [viewer])
        assert (status, body["code"]) == (404, "unknown_device")
    status, body = await _get("/iot/stream/thermometer/", [viewer, (b"last-event-id", b"yesterday")])
    assert (status, body["code"]) == (400, "bad_request")


async def test_polling_with_a_since_cursor(hub):
    await provision_device("thermometer", "t-1")
    await provision_device("thermometer", "t-2")
    cookie = await session_cookie(await make_user("viewer", VIEW))
    status, body = await _get("/iot/poll/thermometer/", [cookie], "since=0")
    assert (status, body) == (200, {"events": [], "cursor": 0})

    for i in range(5):
        await route(hub, "t-1", {"uptime": i})
    await route(hub, "t-1", {"status": "online", "battery_level": 75, "firmware_version": "1.2"}, kind="status")
    await route(hub, "t-2", {"uptime": 100})
    await route(hub, "t-1", {"label": 5}, kind="data")  # invalid: stored as failed, no event, moves the cursor

    status, page = await _get("/iot/poll/thermometer/", [cookie], "since=0&limit=3")
    assert status == 200 and [e["readings"]["uptime"] for e in page["events"]] == [0, 1, 2]
    assert page["cursor"] == page["events"][-1]["id"]
    status, page = await _get("/iot/poll/thermometer/", [cookie], f"since={page['cursor']}")
    kinds = [(e["type"], e["device_id"]) for e in page["events"]]
    assert kinds == [("reading", "t-1"), ("reading", "t-1"), ("status", "t-1"), ("reading", "t-2")]
    status_event = page["events"][2]
    assert (status_event["status"], status_event["battery_level"], status_event["firmware_version"]) == (
        "online",
        75.0,
        "1.2",
    )
    cursor = page["cursor"]
    assert cursor > page["events"][-1]["id"]  # the failed message moved it
    status, page = await _get("/iot/poll/thermometer/", [cookie], f"since={cursor}")
    assert page == {"events": [], "cursor": cursor}

    status, page = await _get("/iot/poll/thermometer/t-2/", [cookie], "since=0")
    assert [e["readings"] for e in page["events"]] == [{"uptime": 100}]
    status, page = await _get("/iot/poll/thermometer/t-1/", [cookie], "limit=3")  # no cursor: the latest rows
    assert [e["type"] for e in page["events"]] == ["reading", "status"]  # (the third row holds no event)
    assert page["cursor"] == cursor
    for query in ("since=-1", "since=x", "limit=0", "limit=100000"):
        status, body = await _get("/iot/poll/thermometer/", [cookie], query)
        assert (status, body["code"]) == (400, "bad_request"), query


async def test_a_batch_from_another_process_arriving_first_never_moves_the_cursor_past_an_unsent_row(hub, monkeypatch):
    """Two processes commit batches 1 then 2; their channel-layer messages arrive 2 then 1. The stream must
    not say ``id: <2>`` before it sent row 1 (a client resuming from there would never get row 1)."""
    await provision_device("thermometer", "t-1")
    user = await make_user("viewer", VIEW)
    layer = get_channel_layer()
    original = layer.group_send
    held = []

    async def reordering(group, message):
        if group != type_group("thermometer"):
            return
        if not held:
            held.append(message)  # batch 1 is still on its way from the first process
            return
        await original(group, {**message, "origin": "another-process", "seq": 1})
        await original(group, held.pop())

    async with fanout_on(hub.router):
        stream = SSEClient("/iot/stream/thermometer/", [await session_cookie(user)])
        await stream.start()
        await stream.ready()
        monkeypatch.setattr(layer, "group_send", reordering)
        first = await route(hub, "t-1", {"uptime": 1})
        second = await route(hub, "t-1", {"uptime": 2})
        events = await stream.events(2, kinds=STORED)
        assert [(e["id"], e["readings"]["uptime"]) for e in events] == [(first.message_id, 1), (second.message_id, 2)]
        assert await stream.nothing(0.3, kinds=STORED)  # the late message of batch 1 is not sent twice
        await stream.close()
