"""The realtime layer wired the way the hub wires it, for tests: a URLconf (``override_settings(
ROOT_URLCONF="tests.realtime_urls")``), the WebSocket and HTTP ASGI apps, users, and stream readers."""

import asyncio
import contextlib

import orjson
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import include, path

from hubserver.realtime.auth import HubAuthMiddlewareStack
from hubserver.realtime.routing import websocket_urlpatterns

urlpatterns = [path("iot/", include("hubserver.realtime.urls"))]

websocket_app = HubAuthMiddlewareStack(URLRouter(websocket_urlpatterns))

VIEW = ["view_thermometerdevice", "view_thermometerreading", "view_thermometermessage"]
CHANGE = [*VIEW, "change_thermometerdevice"]


def http_app():
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


@database_sync_to_async
def make_user(username, codenames=()):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password="pw")
    if codenames:
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames, content_type__app_label="testapp"))
    return user


@database_sync_to_async
def session_cookie(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@database_sync_to_async
def api_token(user):
    from rest_framework.authtoken.models import Token

    return Token.objects.create(user=user).key


async def open_ws(headers=(), path="/ws/hub/", app=None):
    communicator = WebsocketCommunicator(app or websocket_app, path, headers=list(headers))
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def viewer(username="viewer", codenames=VIEW, app=None):
    """A logged-in WebSocket client (session cookie)."""
    user = await make_user(username, codenames)
    return await open_ws([await session_cookie(user)], app=app)


async def request(ws, event, timeout=5):
    """Send a client event and return the answer that echoes its request_id."""
    await ws.send_json_to(event)
    while True:
        answer = await ws.receive_json_from(timeout)
        if answer.get("request_id") == event.get("request_id") and answer["type"] in (
            "subscribed",
            "unsubscribed",
            "pong",
            "error",
            "command",
        ):
            return answer


async def next_event(ws, kind, timeout=5, **match):
    """The next server event of type ``kind`` (others are skipped) whose fields match ``match``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await ws.receive_json_from(max(0.01, deadline - loop.time()))
        if event["type"] == kind and all(event.get(key) == value for key, value in match.items()):
            return event


async def drain(ws, wait=0.2):
    """Every message the client has received within ``wait`` seconds of quiet."""
    out = []
    while not await ws.receive_nothing(timeout=wait):
        out.append(await ws.receive_json_from())
    return out


@contextlib.asynccontextmanager
async def fanout_on(router):
    """Register the realtime commit listener on a router for the block, unless the hub already did
    (its wiring: ``router.add_commit_listener(on_commit)`` in ``Hub.start()``)."""
    from hubserver.realtime.fanout import on_commit

    if on_commit in router._dispatcher.commit_listeners:
        yield
        return
    router.add_commit_listener(on_commit)
    try:
        yield
    finally:
        router.remove_commit_listener(on_commit)


async def flush_layer():
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        await layer.flush()


# SSE -------------------------------------------------------------------------------------------------


class SSEClient:
    """An SSE request against the Django ASGI app, read incrementally (the response never ends)."""

    def __init__(self, path, headers=(), query=b""):
        from asgiref.testing import ApplicationCommunicator

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "headers": [(b"host", b"localhost"), *headers],
            "client": ("127.0.0.1", 5000),
            "server": ("localhost", 80),
        }
        self.communicator = ApplicationCommunicator(http_app(), scope)
        self.status = None
        self.headers = {}
        self.buffer = ""
        self.last_id = None
        self.comments = []

    async def start(self, timeout=5):
        await self.communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await self._output(timeout)
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        return self.status

    async def _output(self, timeout):
        async with asyncio.timeout(timeout):
            return await self.communicator.output_queue.get()

    async def body(self, timeout=5):
        """The whole body of a response that ends (an error)."""
        chunks = []
        while True:
            message = await self._output(timeout)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return orjson.loads(b"".join(chunks))

    def _blocks(self):
        while "\n\n" in self.buffer:
            block, self.buffer = self.buffer.split("\n\n", 1)
            yield block

    async def events(self, count, timeout=5, kinds=None):
        """The next ``count`` events (dicts, with ``_id`` = their SSE id or None); tracks ``last_id``."""
        found = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < count:
            for block in self._blocks():
                fields = {}
                for line in block.split("\n"):
                    if line.startswith(":"):
                        self.comments.append(line)
                        continue
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
                if "id" in fields:
                    self.last_id = int(fields["id"])
                if "data" in fields:
                    event = orjson.loads(fields["data"])
                    event["_id"] = int(fields["id"]) if "id" in fields else None
                    if kinds is None or event["type"] in kinds:
                        found.append(event)
                        if len(found) >= count:
                            break
            if len(found) >= count:
                break
            message = await self._output(max(0.01, deadline - loop.time()))
            self.buffer += message.get("body", b"").decode()
        return found

    async def ready(self, timeout=5):
        """Wait for the stream's first ``id:`` (a fresh stream's mark, or the end of a replay)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last_id is None:
            if "\n\n" in self.buffer:
                block, _, rest = self.buffer.partition("\n\n")
                if "data:" in block:
                    return  # an event came first (a replay): the caller reads it with events()
                self.buffer = rest
                for line in block.split("\n"):
                    if line.startswith("id:"):
                        self.last_id = int(line[3:])
                continue
            message = await self._output(max(0.01, deadline - loop.time()))
            self.buffer += message.get("body", b"").decode()
        return self.last_id

    async def nothing(self, wait=0.3, kinds=None):
        """True if no (matching) event arrives within ``wait`` seconds."""
        try:
            await self.events(1, timeout=wait, kinds=kinds)
        except TimeoutError:
            return True
        return False

    async def close(self):
        await self.communicator.send_input({"type": "http.disconnect"})
        with contextlib.suppress(Exception):
            await self.communicator.wait(timeout=5)
