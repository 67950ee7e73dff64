"""``HubConsumer``: the WebSocket protocol at ``/ws/hub/``.

Built in four steps: ``receive()`` parses the frame -> ``EVENT_MAP`` names the handler -> permission
decorators (``@requires_view`` / ``@requires_change``) resolve and check the target off the loop and inject
it -> the handler. ``@exception_handler`` turns every failure into ``{"type": "error", "code", "message",
"request_id"}`` and the connection stays open.

Client events (each may carry ``request_id``, echoed by every answer):

| event | fields | answer |
|---|---|---|
| ``subscribe`` | ``device_type``, ``device_id``? | ``subscribed`` (then live events) |
| ``unsubscribe`` | ``device_type``, ``device_id``? | ``unsubscribed`` |
| ``command`` | ``device_type``, ``device_id``, ``command``, ``payload``? | ``command`` (pending), then changes |
| ``ping`` | | ``pong`` |

Costs: no ORM hop per frame (``dispatch`` is overridden: Channels' hops to the ORM thread before every
message); database work only in subscribe (one permission check) and command (the check and the insert).

Back-pressure: the channel-layer handler ``hub_events`` only filters and enqueues into a bounded queue
(``QUEUE_SIZE``) that one sender task drains to the socket, so it never waits for the client; the sender
does, while the client has ``WEBSOCKET_SEND_BUFFER`` bytes unread (``hubserver.web.send_buffer``). A viewer whose
queue overflows loses its pending events, gets ``too_slow``, is closed with 4429 and logged; if it cannot
even take that within ``SLOW_CLOSE_TIMEOUT`` seconds the sender is cancelled and the socket closed.
"""

import asyncio
import functools
import logging
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError

from ..conf import hub_settings
from ..exceptions import ValidationError as HubValidationError
from ..vocabulary import CommandState
from .auth import TOKEN, origin_allowed
from .errors import (
    BAD_JSON,
    BAD_REQUEST,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_NOT_AUTHENTICATED,
    CLOSE_TOO_SLOW,
    INTERNAL_ERROR,
    INVALID_COMMAND,
    LIMIT_EXCEEDED,
    PERMISSION_DENIED,
    TOO_SLOW,
    UNKNOWN_EVENT,
    EventError,
    error_event,
)
from .events import COMMAND, command_event, device_group, resolve_type, type_group
from .permissions import event_target, requires_change, requires_view

logger = logging.getLogger("hubserver.realtime")

MAX_FRAME = 64 * 1024
MAX_REQUEST_ID = 128
MAX_WATCHED_COMMANDS = 1000
FINAL_COMMAND_STATES = CommandState.FINAL

stats = Counter()  # "too_slow": viewers closed for falling behind (hubserver_realtime_slow_viewers_total)


@dataclass(frozen=True, slots=True)
class Subscription:
    can_view_commands: bool


def request_id_of(event):
    """The event's ``request_id`` when it is a string or an integer (anything else is not echoed)."""
    if not isinstance(event, dict):
        return None
    request_id = event.get("request_id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        return None
    if isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID:
        return None
    return request_id


def exception_handler(handler):
    """Answer every exception of a handler as a structured error; the connection stays open."""

    @functools.wraps(handler)
    async def wrapper(self, event, **kwargs):
        request_id = request_id_of(event)
        try:
            return await handler(self, event, **kwargs)
        except asyncio.CancelledError:
            raise
        except EventError as exc:
            self.send_error(exc.code, exc.message, request_id)
        except PermissionDenied as exc:
            self.send_error(PERMISSION_DENIED, str(exc) or "permission denied", request_id)
        except DjangoValidationError as exc:
            self.send_error(BAD_REQUEST, "; ".join(exc.messages), request_id)
        except KeyError as exc:
            self.send_error(BAD_REQUEST, f"missing field {exc.args[0]!r}", request_id)
        except (HubValidationError, ValueError) as exc:
            self.send_error(BAD_REQUEST, str(exc), request_id)
        except Exception:
            logger.exception("realtime event %r failed", event.get("type"))
            self.send_error(INTERNAL_ERROR, "internal error", request_id)

    return wrapper


class HubConsumer(AsyncWebsocketConsumer):
    """One browser or script watching devices; see the module docstring for the protocol."""

    EVENT_MAP = {
        "subscribe": "on_subscribe",
        "unsubscribe": "on_unsubscribe",
        "command": "on_command",
        "ping": "on_ping",
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.channel_layer_alias = hub_settings.CHANNEL_LAYER
        self._queue = None
        self._sender = None
        self._watchdog = None
        self._closing = False
        self._dropped = False  # fell behind: close once the too_slow error is out
        self._types = {}  # type name -> Subscription
        self._devices = {}  # (type name, device id) -> Subscription
        self._watched = OrderedDict()  # correlation id -> [type name, device id, last status sent]
        self._joined = set()
        self._type_batches = deque(maxlen=64)  # (type, batch) delivered through a type group
        self._tasks = set()

    # Channels plumbing -------------------------------------------------------------------------------

    async def dispatch(self, message):
        """Channels' dispatch without its per-message hop to the ORM thread (which caps a consumer at a few
        hundred frames a second): handlers that need the database use database_sync_to_async, which manages
        connections itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    @property
    def user(self):
        return self.scope.get("user")

    def describe(self):
        user = self.user
        client = self.scope.get("client") or ("?", 0)
        name = user.get_username() if user is not None and user.is_authenticated else "anonymous"
        return f"{name}@{client[0]}:{client[1]}"

    async def connect(self):
        user = self.user
        if user is None or not user.is_authenticated:
            self._closing = True
            await self.accept()
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        if self.scope.get("auth") != TOKEN and not origin_allowed(self.scope):
            logger.warning("refused a session WebSocket from a foreign origin (%s)", self.describe())
            self._closing = True
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN_ORIGIN)
            return
        self._queue = asyncio.Queue(maxsize=hub_settings.REALTIME_QUEUE_SIZE)
        await self.accept()
        self._sender = asyncio.create_task(self._send_loop(), name=f"realtime-sender {self.describe()}")

    async def disconnect(self, code):
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._leave_all()

    # Outgoing ----------------------------------------------------------------------------------------

    def enqueue(self, event):
        """Queue an event for the client; never waits. Overflow drops the viewer (``too_slow``)."""
        if self._closing or self._queue is None:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._fell_behind()

    def answer(self, event, kind, **fields):
        """Queue the answer ``{"type": kind, **fields, "request_id"}`` to a client event."""
        self.enqueue({"type": kind, **fields, "request_id": request_id_of(event)})

    def send_error(self, code, message, request_id=None):
        self.enqueue(error_event(code, message, request_id))

    async def transmit(self, text):
        """Write one frame to the socket (the only place that waits for the client)."""
        await self.send(text_data=text)

    async def _send_loop(self):
        queue = self._queue
        while True:
            item = await queue.get()
            await self.transmit(orjson.dumps(item).decode())
            if self._dropped and queue.empty():  # the too_slow error went out: close
                await self.close(code=CLOSE_TOO_SLOW)
                if self._watchdog is not None:
                    self._watchdog.cancel()
                return

    def _fell_behind(self):
        self._closing = True
        queue = self._queue
        dropped = queue.qsize()
        while not queue.empty():
            queue.get_nowait()
        self._dropped = True
        stats["too_slow"] += 1
        queue.put_nowait(error_event(TOO_SLOW, f"fell more than {queue.maxsize} events behind; closing"))
        logger.warning(
            "realtime viewer %s fell %d events behind: dropping its events and closing it (too_slow)",
            self.describe(),
            dropped,
        )
        self._watchdog = asyncio.get_running_loop().call_later(
            hub_settings.REALTIME_SLOW_CLOSE_TIMEOUT, self._force_close
        )
        self._spawn(self._leave_all())

    def _force_close(self):
        if self._sender is not None and not self._sender.done():
            logger.warning("realtime viewer %s is stalled: closing its socket", self.describe())
            self._sender.cancel()
            self._spawn(self.close(code=CLOSE_TOO_SLOW))

    def _spawn(self, coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Groups ------------------------------------------------------------------------------------------

    async def _join(self, group):
        if group not in self._joined:
            self._joined.add(group)
            await self.channel_layer.group_add(group, self.channel_name)

    async def _leave(self, group):
        if group in self._joined:
            self._joined.discard(group)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _leave_all(self):
        for group in list(self._joined):
            try:
                await self._leave(group)
            except Exception:
                logger.exception("leaving %s failed", group)

    def _needs_device_group(self, type_name, device_id):
        key = (type_name, device_id)
        return key in self._devices or any(tuple(watch[:2]) == key for watch in self._watched.values())

    async def _release_device_group(self, type_name, device_id):
        if not self._needs_device_group(type_name, device_id):
            await self._leave(device_group(type_name, device_id))

    # Incoming ----------------------------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        """Frame -> JSON object -> ``EVENT_MAP`` -> handler (decorated: permissions, exceptions)."""
        if self._closing:
            return
        if text_data is None:
            self.send_error(BAD_JSON, "binary frames are not supported: send JSON text")
            return
        if len(text_data) > MAX_FRAME:
            self.send_error(BAD_REQUEST, f"frame larger than {MAX_FRAME} bytes")
            return
        try:
            event = orjson.loads(text_data)
        except orjson.JSONDecodeError as exc:
            self.send_error(BAD_JSON, f"invalid JSON: {exc}")
            return
        request_id = request_id_of(event)
        if not isinstance(event, dict):
            self.send_error(BAD_REQUEST, "an event must be a JSON object")
            return
        kind = event.get("type")
        if not isinstance(kind, str):
            if "payload" in event or "properties" in event:  # a DASF message sent to ws/hub/
                message = "ws/hub/ is the hub's live stream: 'hub' is a reserved name, not a DASF topic"
                self.send_error(BAD_REQUEST, message, request_id)
                return
            self.send_error(BAD_REQUEST, "an event needs a string 'type'", request_id)
            return
        name = self.EVENT_MAP.get(kind)
        if name is None:
            known = ", ".join(self.EVENT_MAP)
            self.send_error(UNKNOWN_EVENT, f"unknown event type {kind!r}; known: {known}", request_id)
            return
        await getattr(self, name)(event)

    @exception_handler
    async def on_ping(self, event):
        self.answer(event, "pong")

    @exception_handler
    @requires_view
    async def on_subscribe(self, event, target):
        type_name, device_id = target.type_name, target.device_id
        key = type_name if device_id is None else (type_name, device_id)
        table = self._types if device_id is None else self._devices
        if key not in table and len(self._types) + len(self._devices) >= hub_settings.REALTIME_MAX_SUBSCRIPTIONS:
            raise EventError(LIMIT_EXCEEDED, f"at most {hub_settings.REALTIME_MAX_SUBSCRIPTIONS} subscriptions")
        if self._closing:
            return
        table[key] = Subscription(target.can_view_commands)
        await self._join(type_group(type_name) if device_id is None else device_group(type_name, device_id))
        self.answer(event, "subscribed", device_type=type_name, device_id=device_id)

    @exception_handler
    async def on_unsubscribe(self, event):
        type_name, device_id = event_target(event, require_device=False)
        type_name = resolve_type(type_name)[0].type_name()
        if device_id is None:
            if self._types.pop(type_name, None) is not None:
                await self._leave(type_group(type_name))
        elif self._devices.pop((type_name, device_id), None) is not None:
            await self._release_device_group(type_name, device_id)
        self.answer(event, "unsubscribed", device_type=type_name, device_id=device_id)

    @exception_handler
    @requires_change
    async def on_command(self, event, target):
        name = event.get("command")
        if not isinstance(name, str) or not name:
            raise EventError(BAD_REQUEST, "'command' must be a non-empty string")
        payload = event.get("payload")
        type_name, device_id = target.type_name, target.device_id
        # Join first: the dispatcher may move the command on before we get to run again.
        await self._join(device_group(type_name, device_id))
        try:
            message = await database_sync_to_async(_send_command)(target.device, name, payload)
        except HubValidationError as exc:
            await self._release_device_group(type_name, device_id)
            raise EventError(INVALID_COMMAND, str(exc)) from None
        except BaseException:
            await self._release_device_group(type_name, device_id)
            raise
        # The answer; the hub's command dispatcher announces the same "pending" to every viewer (this one
        # sees each state once: _deliver_watched).
        event_out = command_event(type_name, device_id, message)
        self._watch(message.correlation_id, type_name, device_id, event_out["command_status"])
        self.enqueue({**event_out, "request_id": request_id_of(event)})

    def _watch(self, correlation_id, type_name, device_id, status):
        self._watched[correlation_id] = [type_name, device_id, status]
        while len(self._watched) > MAX_WATCHED_COMMANDS:
            self._watched.popitem(last=False)

    # From the channel layer --------------------------------------------------------------------------

    async def hub_events(self, message):
        """One batch of events for one group: filter for this viewer and enqueue. Never awaits the client."""
        if self._closing:
            return
        type_name = message["device_type"]
        batch = (type_name, message.get("batch"))
        type_sub = self._types.get(type_name)
        duplicate = False
        if message["scope"] == "type":
            subscription = type_sub
            if subscription is not None:
                self._type_batches.append(batch)
        else:
            # A viewer in the type group already got this batch from it (the type message goes first).
            duplicate = type_sub is not None and batch in self._type_batches
            subscription = self._devices.get((type_name, message["device_id"])) or type_sub
        for event in message["events"]:
            if event["type"] == COMMAND and event.get("correlation_id") in self._watched:
                self._deliver_watched(event)
                continue
            if duplicate or subscription is None:
                continue
            if event["type"] == COMMAND and not subscription.can_view_commands:
                continue
            self.enqueue(event)

    def _deliver_watched(self, event):
        """A command this connection sent: each state once, whatever groups it arrives through."""
        correlation_id = event["correlation_id"]
        watch = self._watched[correlation_id]
        status = event.get("command_status")
        if watch[2] == status:
            return
        watch[2] = status
        self.enqueue(event)
        if status in FINAL_COMMAND_STATES:
            del self._watched[correlation_id]
            self._spawn(self._release_device_group(watch[0], watch[1]))


def _send_command(device, name, payload):
    from ..commands import send_command

    return send_command(device, name, payload)
