"""Helpers for the DASF topic broker's tests: topics with permissions, users with tokens, WebSocket clients
on the hub's own ASGI application, and a running service."""

import asyncio
import base64
import time
import uuid

import orjson
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

# Imported here, not in a test: building the ASGI app sets Django up, which configures logging again and
# would take pytest's log capture off the root logger in the middle of a test.
from hubserver.asgi import application


@database_sync_to_async
def make_topic(slug, *, consumers=(), producers=(), viewers=(), anonymous=False, **fields):
    """A topic with object permissions for the given users (User objects or None for the anonymous user)."""
    from guardian.shortcuts import assign_perm

    from hubserver.dasf.grants import anonymous_user
    from hubserver.dasf.models import BrokerTopic

    topic = BrokerTopic.objects.create(slug=slug, **fields)
    for perm, users in (("can_consume", consumers), ("can_produce", producers), ("can_view_status", viewers)):
        for user in users:
            assign_perm(perm, user, topic)
    if anonymous:
        topic.is_public = True
        topic.save()
        assign_perm("can_consume", anonymous_user(), topic)
    return topic


@database_sync_to_async
def make_user(username, *codenames):
    """A user with an API token (``user.token``) and the given global permissions (``app.codename``)."""
    from django.contrib.auth.models import Permission, User
    from rest_framework.authtoken.models import Token

    user = User.objects.create_user(username, password="pw")
    for name in codenames:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    user.token = Token.objects.create(user=user).key
    return user


async def open_ws(path, user=None, token=None, headers=(), app=None):
    """A connected WebSocket client on the hub's ASGI app; ``user`` authenticates with their API token."""
    headers = list(headers)
    key = token or (user.token if user is not None else None)
    if key:
        headers.append((b"authorization", f"Token {key}".encode()))
    communicator = WebsocketCommunicator(app or application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def receive(ws, timeout=5):
    return orjson.loads(await ws.receive_from(timeout))


async def send(ws, message):
    await ws.send_to(text_data=orjson.dumps(message).decode())


def request(payload="hello", context=1, response_topic=None, message_type="request", **extra):
    """A message as a DASF client sends it."""
    properties = {"requestContext": context, "messageType": message_type}
    if response_topic:
        properties["response_topic"] = response_topic
    return {
        "properties": properties,
        "payload": base64.b64encode(payload.encode()).decode(),
        "context": context,
        **extra,
    }


async def produce(ws, message):
    """Send a message and return the broker's acknowledgement."""
    await send(ws, message)
    return await receive(ws)


async def next_message(ws, timeout=5, skip_broker=True):
    """The next message a consumer gets (the broker's own api_info requests and pings skipped)."""
    while True:
        message = await receive(ws, timeout)
        kind = message.get("properties", {}).get("messageType")
        if (
            skip_broker
            and kind in ("api_info", "ping")
            and message["properties"].get("response_topic") == "status-ping"
        ):
            continue
        return message


async def nothing_but_broker_requests(ws, wait=0.3):
    """True when the consumer gets nothing but the broker's own requests within ``wait`` seconds."""
    while not await ws.receive_nothing(timeout=wait):
        message = await receive(ws)
        if not _from_broker(message):
            raise AssertionError(f"unexpected message {message}")
    return True


def _from_broker(message):
    properties = message.get("properties", {})
    return properties.get("messageType") in ("api_info", "ping") and properties.get("response_topic") == "status-ping"


async def closed_with(ws, timeout=5):
    """The close code the server sent (after any frames still queued)."""
    while True:
        output = await ws.receive_output(timeout)
        if output["type"] == "websocket.close":
            return output.get("code")


async def received_results(ws, timeout=5):
    """Frames up to the close: ``(frames, close code)``."""
    frames = []
    while True:
        output = await ws.receive_output(timeout)
        if output["type"] == "websocket.close":
            return frames, output.get("code")
        frames.append(orjson.loads(output["text"]))


@database_sync_to_async
def stored(slug):
    """The message ids stored for a topic."""
    from hubserver.dasf.models import BrokerMessage

    return sorted(str(m) for m in BrokerMessage.objects.filter(topic__slug=slug).values_list("message_id", flat=True))


@database_sync_to_async
def refresh(topic):
    topic.refresh_from_db()
    topic.__dict__.pop("availability", None)
    return topic


def new_id():
    return str(uuid.uuid4())


async def eventually(check, timeout=10.0, message="condition"):
    """Wait until the coroutine function ``check()`` returns true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.02)
