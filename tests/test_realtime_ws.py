"""The WebSocket protocol at /ws/hub/: MQTT readings reach viewers, structured errors keep the connection
open, authentication, slow viewers, and the WebSocket-driven command round trip."""

import asyncio
import json
import logging

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from hubserver.realtime.consumers import HubConsumer
from tests.conftest import device_client, provision_device
from tests.mqtt import until
from tests.realtime_urls import (
    CHANGE,
    VIEW,
    api_token,
    drain,
    fanout_on,
    flush_layer,
    make_user,
    next_event,
    open_ws,
    request,
    session_cookie,
    viewer,
    websocket_app,
)
from tests.testapp.models import ThermometerReading

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def clean_layer():
    await flush_layer()
    yield
    await flush_layer()


async def test_a_websocket_viewer_receives_a_reading_published_over_mqtt(hub, clients):
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "t-1")
        ws = await viewer()
        answer = await request(ws, {"type": "subscribe", "device_type": "Thermometer", "request_id": "s1"})
        assert answer == {"type": "subscribed", "device_type": "thermometer", "device_id": None, "request_id": "s1"}
        await device.publish("things/thermometer/t-1/data", json.dumps({"temperature": 21.5, "uptime": 7}))
        event = await next_event(ws, "reading")
        assert event["device_type"] == "thermometer" and event["device_id"] == "t-1"
        assert event["readings"] == {"temperature": 21.5, "uptime": 7}
        assert isinstance(event["id"], int) and event["timestamp"].endswith("Z")

        await device.publish(
            "things/thermometer/t-1/status", json.dumps({"battery_level": 80, "firmware_version": "2"})
        )
        status = await next_event(ws, "status")
        assert (status["battery_level"], status["firmware_version"], status["id"] > event["id"]) == (80.0, "2", True)

        await device.disconnect()
        offline = await next_event(ws, "connection")
        assert (offline["device_id"], offline["state"]) == ("t-1", "offline")
        await ws.disconnect()


async def test_a_device_subscription_gets_only_its_device(hub, clients):
    async with fanout_on(hub.router):
        one, _ = await device_client(hub, clients, "thermometer", "t-1")
        two, _ = await device_client(hub, clients, "thermometer", "t-2")
        ws = await viewer()
        answer = await request(ws, {"type": "subscribe", "device_type": "thermometer", "device_id": "t-2"})
        assert answer["type"] == "subscribed" and answer["device_id"] == "t-2"
        await one.publish("things/thermometer/t-1/data", json.dumps({"temperature": 1}))
        await two.publish("things/thermometer/t-2/data", json.dumps({"temperature": 2}))
        await hub.router.flush()
        readings = [e for e in await drain(ws) if e["type"] == "reading"]
        assert [(e["device_id"], e["readings"]) for e in readings] == [("t-2", {"temperature": 2.0})]

        answer = await request(ws, {"type": "unsubscribe", "device_type": "thermometer", "device_id": "t-2"})
        assert answer["type"] == "unsubscribed"
        await two.publish("things/thermometer/t-2/data", json.dumps({"temperature": 3}))
        await hub.router.flush()
        assert not [e for e in await drain(ws) if e["type"] == "reading"]
        await ws.disconnect()


async def test_refused_subscriptions_get_structured_errors_and_the_connection_stays_usable():
    await provision_device("thermometer", "t-1")
    ws = await viewer("nobody", codenames=())
    answer = await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": 7})
    assert answer["type"] == "error" and answer["code"] == "permission_denied" and answer["request_id"] == 7
    assert answer["message"]
    answer = await request(ws, {"type": "subscribe", "device_type": "toaster", "request_id": "x"})
    assert (answer["code"], answer["request_id"]) == ("unknown_device_type", "x")
    assert await request(ws, {"type": "ping", "request_id": "p"}) == {"type": "pong", "request_id": "p"}
    await ws.disconnect()

    ws = await viewer("watcher")
    answer = await request(
        ws, {"type": "subscribe", "device_type": "thermometer", "device_id": "ghost", "request_id": 1}
    )
    assert (answer["type"], answer["code"], answer["request_id"]) == ("error", "unknown_device", 1)
    answer = await request(ws, {"type": "subscribe", "device_type": "thermometer", "device_id": "t-1", "request_id": 2})
    assert answer["type"] == "subscribed"
    assert await request(ws, {"type": "ping", "request_id": 3}) == {"type": "pong", "request_id": 3}
    await ws.disconnect()


async def test_malformed_frames_are_answered_and_the_connection_stays_open():
    ws = await viewer()
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from())["code"] == "bad_json"
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from())["code"] == "bad_json"
    await ws.send_to(text_data="[1, 2]")
    assert (await ws.receive_json_from())["code"] == "bad_request"
    answer = await request(ws, {"type": "launch", "request_id": "l"})
    assert (answer["code"], answer["request_id"]) == ("unknown_event", "l")
    answer = await request(ws, {"type": "subscribe", "request_id": "s"})
    assert (answer["code"], answer["request_id"]) == ("bad_request", "s")
    answer = await request(ws, {"type": "subscribe", "device_type": "thermometer", "device_id": 5, "request_id": "d"})
    assert answer["code"] == "bad_request"
    answer = await request(ws, {"type": "command", "device_type": "thermometer", "request_id": "c"})
    assert answer["code"] in ("bad_request", "permission_denied")
    assert await request(ws, {"type": "ping", "request_id": None}) == {"type": "pong", "request_id": None}
    await ws.disconnect()


async def _closed_with(ws):
    message = await ws.receive_output(timeout=5)
    assert message["type"] == "websocket.close"
    return message.get("code")


async def test_unauthenticated_connections_are_closed_with_4401():
    ws = await open_ws()
    assert await _closed_with(ws) == 4401
    ws = await open_ws(path="/ws/hub/?token=not-a-token")
    assert await _closed_with(ws) == 4401


async def test_api_tokens_authenticate_scripts():
    user = await make_user("script", VIEW)
    key = await api_token(user)
    for ws in (
        await open_ws(path=f"/ws/hub/?token={key}"),
        await open_ws([(b"authorization", f"Token {key}".encode())]),
    ):
        answer = await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
        assert answer["type"] == "subscribed"
        await ws.disconnect()


HUB_HOST = (b"host", b"localhost:8000")


@pytest.mark.parametrize(
    "origin",
    [
        b"https://evil.example",
        b"http://localhost:9999",  # same host, another port: browsers send the cookie there too
        b"https://localhost:8000",  # same host and port, another scheme
        b"http://localhost",  # the default port is another port
        b"http://127.0.0.1:8000",  # an allowed host, but not the one this socket was opened on
        b"http://localhost:8000.evil.example",
        b"null",  # sandboxed frames and file:// pages
        b"",
    ],
)
async def test_session_sockets_from_another_origin_are_closed_with_4403(origin, caplog):
    """A page on another origin (scheme, host or port) opening /ws/hub/ with the user's session cookie is
    accepted and then closed with 4403, the code the page's ``onclose`` sees; nothing is served."""
    user = await make_user("browser", VIEW)
    ws = await open_ws([await session_cookie(user), HUB_HOST, (b"origin", origin)])
    assert await _closed_with(ws) == 4403
    assert "foreign origin" in caplog.text


async def test_session_sockets_from_the_hubs_own_origin_are_served():
    user = await make_user("browser", VIEW)
    cookie = await session_cookie(user)
    for headers in (
        [cookie, HUB_HOST, (b"origin", b"http://localhost:8000")],
        [cookie, (b"host", b"LOCALHOST:8000"), (b"origin", b"http://localhost:8000")],
        [cookie, (b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")],
        [cookie, (b"host", b"[::1]:8000"), (b"origin", b"http://[::1]:8000")],
        [cookie, HUB_HOST],  # no Origin: not a browser, which always sends one on a WebSocket handshake
    ):
        ws = await open_ws(headers)
        assert await request(ws, {"type": "ping", "request_id": 1}) == {"type": "pong", "request_id": 1}
        await ws.disconnect()


async def test_the_own_origin_needs_an_allowed_host_and_the_same_scheme():
    user = await make_user("browser", VIEW)
    cookie = await session_cookie(user)
    # A Host outside ALLOWED_HOSTS is not the hub's own origin, whatever the Origin says.
    ws = await open_ws([cookie, (b"host", b"evil.example"), (b"origin", b"http://evil.example")])
    assert await _closed_with(ws) == 4403
    # A TLS socket (wss) is the https origin, not the http one.
    communicator = WebsocketCommunicator(
        websocket_app, "/ws/hub/", headers=[cookie, HUB_HOST, (b"origin", b"http://localhost:8000")]
    )
    communicator.scope["scheme"] = "wss"
    assert (await communicator.connect(timeout=5))[0]
    assert await _closed_with(communicator) == 4403
    communicator = WebsocketCommunicator(
        websocket_app, "/ws/hub/", headers=[cookie, HUB_HOST, (b"origin", b"https://localhost:8000")]
    )
    communicator.scope["scheme"] = "wss"
    assert (await communicator.connect(timeout=5))[0]
    assert await request(communicator, {"type": "ping", "request_id": 1}) == {"type": "pong", "request_id": 1}
    await communicator.disconnect()


async def test_csrf_trusted_origins_are_matched_whole_and_by_subdomain_pattern():
    user = await make_user("browser", VIEW)
    cookie = await session_cookie(user)
    trusted = ["https://hub.example.com", "https://*.corp.example"]
    with override_settings(CSRF_TRUSTED_ORIGINS=trusted):
        for origin, served in (
            (b"https://hub.example.com", True),
            (b"http://hub.example.com", False),
            (b"https://hub.example.com:8443", False),
            (b"https://a.corp.example", True),
            (b"https://a.b.corp.example", True),
            (b"http://a.corp.example", False),
            (b"https://corp.example.evil", False),
        ):
            ws = await open_ws([cookie, HUB_HOST, (b"origin", origin)])
            if served:
                assert await request(ws, {"type": "ping", "request_id": 1}) == {"type": "pong", "request_id": 1}
                await ws.disconnect()
            else:
                assert await _closed_with(ws) == 4403, origin


async def test_token_sockets_need_no_origin_check():
    """A script's token is not ambient: a page on another origin would have to know it."""
    key = await api_token(await make_user("script", VIEW))
    ws = await open_ws([(b"authorization", f"Token {key}".encode()), (b"origin", b"https://elsewhere.example")])
    assert await request(ws, {"type": "ping", "request_id": 1}) == {"type": "pong", "request_id": 1}
    await ws.disconnect()


class StalledConsumer(HubConsumer):
    """A viewer whose socket stops draining: every frame after the first waits until the gate opens."""

    gate = None
    instances = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        StalledConsumer.instances.append(self)
        self.frames = 0

    async def transmit(self, text):
        self.frames += 1
        if self.frames > 1:
            await StalledConsumer.gate.wait()
        await super().transmit(text)


async def test_a_stalled_viewer_is_dropped_as_too_slow_and_never_slows_ingest(hub, clients, caplog):
    from channels.routing import URLRouter
    from django.urls import path

    from hubserver.realtime.auth import HubAuthMiddlewareStack

    StalledConsumer.gate = asyncio.Event()
    StalledConsumer.instances = []
    app = HubAuthMiddlewareStack(URLRouter([path("ws/hub/", StalledConsumer.as_asgi())]))
    caplog.set_level(logging.WARNING, logger="hubserver.realtime")
    with override_settings(HUBSERVER={"REALTIME_QUEUE_SIZE": 3, "REALTIME_SLOW_CLOSE_TIMEOUT": 30}):
        try:
            await _stall_one_viewer(hub, clients, app, caplog)
        finally:
            StalledConsumer.gate.set()


async def _stall_one_viewer(hub, clients, app, caplog):
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "t-1")
        ws = await viewer(app=app)
        healthy = await viewer("healthy")
        await request(healthy, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
        await ws.send_json_to({"type": "subscribe", "device_type": "thermometer", "request_id": 1})
        assert (await ws.receive_json_from())["type"] == "subscribed"  # the first frame passes
        consumer = StalledConsumer.instances[-1]
        for i in range(20):  # the stalled viewer holds the socket; ingest goes on
            await device.publish("things/thermometer/t-1/data", json.dumps({"uptime": i}))
        await hub.router.flush()
        count = await database_sync_to_async(ThermometerReading.objects.filter(device__device_id="t-1").count)()
        assert count == 20
        await until(lambda: consumer._closing, message="the stalled viewer to be dropped")
        assert "fell" in caplog.text and "too_slow" in caplog.text
        readings = [e for e in await drain(healthy) if e["type"] == "reading"]
        assert [e["readings"]["uptime"] for e in readings] == list(range(20))  # the healthy one got all

        StalledConsumer.gate.set()
        frames = [await ws.receive_json_from(timeout=5)]
        if frames[0]["type"] != "error":  # the one frame the socket was stuck on goes out first
            frames.append(await ws.receive_json_from(timeout=5))
        assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "too_slow")
        assert await _closed_with(ws) == 4429
        await ws.disconnect()
        await healthy.disconnect()


async def test_a_viewer_that_never_drains_is_closed_after_the_timeout(caplog):
    from channels.routing import URLRouter
    from django.urls import path

    from hubserver.realtime.auth import HubAuthMiddlewareStack
    from hubserver.realtime.fanout import publish_events

    await provision_device("thermometer", "t-1")
    StalledConsumer.gate = asyncio.Event()  # never opened
    StalledConsumer.instances = []
    app = HubAuthMiddlewareStack(URLRouter([path("ws/hub/", StalledConsumer.as_asgi())]))
    with override_settings(HUBSERVER={"REALTIME_QUEUE_SIZE": 2, "REALTIME_SLOW_CLOSE_TIMEOUT": 0.2}):
        try:
            ws = await viewer(app=app)
            await ws.send_json_to({"type": "subscribe", "device_type": "thermometer", "request_id": 1})
            assert (await ws.receive_json_from())["type"] == "subscribed"
            events = [{"type": "reading", "device_type": "thermometer", "device_id": "t-1", "id": i} for i in range(5)]
            await publish_events("thermometer", "t-1", events)
            assert await _closed_with(ws) == 4429  # the sender was stuck: a hard close, no error frame
            assert "stalled" in caplog.text
            await ws.disconnect()
        finally:
            StalledConsumer.gate.set()


async def test_a_websocket_command_round_trip_with_a_device_answering_on_reply(hub, clients):
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "c-1")
        await device.subscribe("things/thermometer/c-1/cmd", qos=1)
        onlooker = await viewer("onlooker")
        await request(onlooker, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
        reader = await viewer("reader", codenames=VIEW)
        answer = await request(
            reader,
            {"type": "command", "device_type": "thermometer", "device_id": "c-1", "command": "reboot", "request_id": 9},
        )
        assert (answer["type"], answer["code"], answer["request_id"]) == ("error", "permission_denied", 9)

        ws = await viewer("operator", codenames=CHANGE)
        answer = await request(
            ws,
            {
                "type": "command",
                "device_type": "thermometer",
                "device_id": "c-1",
                "command": "set_mode",
                "payload": {"mode": "turbo"},
                "request_id": "bad",
            },
        )
        assert (answer["code"], answer["request_id"]) == ("invalid_command", "bad")

        answer = await request(
            ws,
            {
                "type": "command",
                "device_type": "thermometer",
                "device_id": "c-1",
                "command": "set_mode",
                "payload": {"mode": "manual"},
                "request_id": "go",
            },
        )
        assert answer["type"] == "command" and answer["command_status"] == "pending"
        assert answer["request_id"] == "go" and answer["command"] == "set_mode" and answer["device_id"] == "c-1"
        correlation_id = answer["correlation_id"]

        received = await device.wait_messages(1)
        assert json.loads(received[0].payload)["correlation_id"] == correlation_id
        await device.publish(
            "things/thermometer/c-1/reply",
            json.dumps({"correlation_id": correlation_id, "status": "ok", "result": {"mode": "manual"}}),
        )
        states, replied = [answer["command_status"]], None
        while states[-1] != "replied":
            event = await ws.receive_json_from(timeout=5)
            if event["type"] == "command":
                assert event["correlation_id"] == correlation_id
                states.append(event["command_status"])
                replied = event
        # The issuer saw each state once, in order, though it subscribed to nothing.
        assert states == ["pending", "sent", "delivered", "replied"]
        assert replied["result"] == {"mode": "manual"} and "request_id" not in replied
        await hub.router.flush()
        seen = [e for e in await drain(onlooker) if e["type"] == "command"]
        assert [e["command_status"] for e in seen] == ["pending", "sent", "delivered", "replied"]
        assert await drain(ws) == []
        await ws.disconnect()
        await onlooker.disconnect()
        await reader.disconnect()


async def test_the_issuer_sees_every_command_state_once_when_subscribed_twice(hub, clients):
    async with fanout_on(hub.router):
        device, _ = await device_client(hub, clients, "thermometer", "c-2")
        await device.subscribe("things/thermometer/c-2/cmd", qos=1)
        ws = await viewer("operator", codenames=CHANGE)
        # Subscribed to the type AND the device: still one copy of each state.
        await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": 1})
        await request(ws, {"type": "subscribe", "device_type": "thermometer", "device_id": "c-2", "request_id": 2})
        answer = await request(
            ws,
            {"type": "command", "device_type": "thermometer", "device_id": "c-2", "command": "reboot", "request_id": 3},
        )
        received = await device.wait_messages(1)
        correlation_id = json.loads(received[0].payload)["correlation_id"]
        assert correlation_id == answer["correlation_id"]
        await device.publish(
            "things/thermometer/c-2/reply",
            json.dumps({"correlation_id": correlation_id, "status": "error", "result": 1}),
        )
        await next_event(ws, "command", command_status="failed")
        await hub.router.flush()
        await asyncio.sleep(0.1)
        rest = await drain(ws)
        assert not [e for e in rest if e["type"] == "command"]
        await ws.disconnect()


async def test_the_hubs_own_routes_carry_their_authentication():
    from channels.routing import URLRouter

    from hubserver.realtime.routing import hub_websocket_urlpatterns

    user = await make_user("script", VIEW)
    key = await api_token(user)
    app = URLRouter(hub_websocket_urlpatterns)  # what hubserver.asgi mounts next to /mqtt
    ws = await open_ws([(b"authorization", f"Token {key}".encode())], app=app)
    assert (await request(ws, {"type": "subscribe", "device_type": "thermometer", "request_id": 1}))[
        "type"
    ] == "subscribed"
    await ws.disconnect()
    ws = await open_ws([await session_cookie(user)], app=app)
    assert await request(ws, {"type": "ping", "request_id": 2}) == {"type": "pong", "request_id": 2}
    await ws.disconnect()
    assert await _closed_with(await open_ws(app=app)) == 4401
