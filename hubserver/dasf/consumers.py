"""The DASF WebSocket protocol (what ``demessaging`` speaks), under ``DASF_WEBSOCKET_URL_ROUTE``:

| route | consumer | |
|---|---|---|
| ``<slug>/`` | ``TopicProducer`` | send messages, each answered ``{"messageId", "context"?, "result"}`` |
| ``<slug>/<subscription>/`` | ``TopicConsumer`` | receive the messages; acknowledge each with ``{"messageId"}`` |
| ``status-ping/`` | ``PongConsumer`` | backends answer the broker's pings and API-info requests here |

``result`` is ``"ok"`` or a sentence starting with ``error:`` that says what was refused and why (DASF
clients treat a result containing "error" as a failed request). A consumer that may not consume a topic,
names a reserved topic or brings an invalid token gets ``{"result": "error: ..."}`` and is closed (4403,
or 4401 for the token). A consumer that falls ``DASF_CONSUMER_QUEUE_SIZE`` messages behind is sent
``{"result": "error: too slow ..."}`` and closed with 4429; messages its topic stores reach it again when it
reconnects. Those stored messages go out at the pace the client reads them, however many there are: a
backlog larger than the queue is no reason to close a consumer that reads.

Costs per message: no ORM hop per frame (``dispatch`` is overridden), no database query for permissions
(the service's snapshot), JSON parsed once (orjson) and serialized once for every consumer.
"""

import asyncio
import logging
import uuid

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.utils import timezone

from ..conf import hub_settings
from ..routing.throttle import ThrottledLog
from . import app_settings
from .auth import principal_of
from .constants import MessageType, PropertyKeys, slug_problem
from .grants import CAN_CONSUME
from .service import DISABLED, ORIGIN, broker_request, ensure_service, group_name

logger = logging.getLogger("hubserver.dasf")
_log = ThrottledLog(logger)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_SLOW = 4429

SLOW_CLOSE_TIMEOUT = 5.0  # seconds a connection that fell behind gets to take its refusal before a hard close


class DasfConnection(AsyncWebsocketConsumer):
    """What producers and consumers share: the principal, no ORM hop per frame, a bounded outgoing queue."""

    channel_layer_alias = None  # only consumers on a cross-process layer listen to it

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.service = None
        self.principal = None
        self.refusal = None
        self.slug = None
        self._queue = None
        self._sender = None
        self._closing = False
        self._watchdog = None
        self._room = None  # set when a sender waiting for room in the queue may go on

    async def __call__(self, scope, receive, send):
        """Without a channel layer to listen to, frames are read in a plain loop: channels' own loop makes a
        task and an ``asyncio.wait`` per frame to also watch a layer channel this connection does not have."""
        if get_channel_layer(self.channel_layer_alias) is not None:
            return await super().__call__(scope, receive, send)
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass

    async def dispatch(self, message):
        """Channels' dispatch without its hop to the ORM thread before every frame."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.service = await ensure_service()
        self.principal, self.refusal = principal_of(self.scope, self.service.grants.anonymous_id)
        self.slug = self.scope["url_route"]["kwargs"].get("slug")
        limit = app_settings.DASF_CONSUMER_QUEUE_SIZE
        self._limit = limit
        self._max_size = app_settings.DASF_MAX_MESSAGE_SIZE
        self._queue = asyncio.Queue(maxsize=limit + 2)  # room for the refusal and the close after an overflow
        await self.accept()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name=f"dasf-sender {self.describe()}")

    async def disconnect(self, code):
        self._closing = True
        self._wake()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

    def describe(self):
        client = self.scope.get("client") or ("?", 0)
        return f"{self.principal}@{client[0]}:{client[1]} on {self.slug}"

    # Outgoing ---------------------------------------------------------------------------------------

    def enqueue(self, text):
        """Queue a frame; never waits. Returns False when the connection is closing or fell behind."""
        if self._closing or self._queue is None:
            return False
        if self._queue.qsize() >= self._limit:
            self._too_slow()
            return False
        self._queue.put_nowait(text)
        return True

    async def put(self, text):
        """Queue a frame, waiting while the queue is half full (stored messages, sent at the client's pace;
        live ones keep the other half). Returns False when the connection is closing."""
        queue = self._queue
        while not self._closing and queue.qsize() >= max(1, self._limit // 2):
            self._room = asyncio.Event()
            await self._room.wait()
        if self._closing:
            return False
        queue.put_nowait(text)
        return True

    def _wake(self):
        if self._room is not None:
            self._room.set()

    def send_result(self, result, **fields):
        self.enqueue(orjson.dumps({**fields, "result": result}).decode())

    def refuse_and_close(self, result, code):
        """Tell the client why (a ``result``), then close with ``code``."""
        if self._closing or self._queue is None:
            return
        self.send_result(result)
        self._closing = True
        self._wake()
        self._queue.put_nowait((code, result))
        _log.warning("refused", (self.principal, self.slug, code), "DASF: %s refused: %s", self.describe(), result)

    def _too_slow(self):
        queue = self._queue
        dropped = queue.qsize()
        while not queue.empty():
            queue.get_nowait()
        result = f"error: too slow: more than {self._limit} messages waited for this connection; closing"
        queue.put_nowait(orjson.dumps({"result": result}).decode())
        queue.put_nowait((CLOSE_TOO_SLOW, "too slow"))
        self._closing = True
        self._wake()
        self._watchdog = asyncio.get_running_loop().call_later(SLOW_CLOSE_TIMEOUT, self._force_close)
        self.service.counts["too_slow"] += 1
        _log.warning(
            "too_slow", self.slug, "DASF connection %s fell %d messages behind: closed (4429)", self.describe(), dropped
        )

    def _force_close(self):
        """The sender is stuck on a client that reads nothing: close the socket without the refusal."""
        if self._sender is not None and not self._sender.done():
            _log.warning("stalled", self.slug, "DASF connection %s is stalled: closing its socket", self.describe())
            self._sender.cancel()
            asyncio.get_running_loop().create_task(self.close(code=CLOSE_TOO_SLOW))

    async def transmit(self, text):
        """Write one frame to the socket (the only place that waits for the client)."""
        await self.send(text_data=text)

    async def _send_loop(self):
        queue = self._queue
        while True:
            item = await queue.get()
            if self._room is not None and queue.qsize() < max(1, self._limit // 2):
                self._room.set()
            if type(item) is tuple:  # (close code, reason): everything before it went out
                code, reason = item
                await self.close(code=code, reason=reason[:120])
                if self._watchdog is not None:
                    self._watchdog.cancel()
                return
            await self.transmit(item)

    # Incoming ---------------------------------------------------------------------------------------

    def parse(self, text_data, bytes_data):
        """The frame as a JSON object, or a refusal text."""
        if text_data is None:
            if bytes_data is None:
                return None, "error: empty frame"
            try:
                text_data = bytes_data.decode()
            except UnicodeDecodeError:
                return None, "error: frames must be JSON text"
        limit = self._max_size
        if len(text_data) > limit:
            return None, f"error: message of {len(text_data)} bytes is larger than DASF_MAX_MESSAGE_SIZE ({limit})"
        try:
            content = orjson.loads(text_data)
        except orjson.JSONDecodeError as exc:
            return None, f"error: the message is not valid JSON ({exc})"
        if not isinstance(content, dict):
            return None, "error: a message must be a JSON object"
        return content, None


class TopicProducer(DasfConnection):
    """Sends messages to the topic ``slug``; every message is acknowledged (after its commit when stored)."""

    async def connect(self):
        await super().connect()
        problem = slug_problem(self.slug)
        if problem and self.refusal is None:
            self.refusal = f"error: {problem}"

    def acknowledge(self, ack):
        self.enqueue(orjson.dumps(ack).decode())

    async def receive(self, text_data=None, bytes_data=None):
        if self._closing:
            return
        content, problem = self.parse(text_data, bytes_data)
        if problem is not None:
            self.service.counts["refused"] += 1
            self.send_result(problem)
            return
        if self.refusal is not None:
            self.service.counts["refused"] += 1
            ack = {"messageId": content.get("messageId"), "result": self.refusal}
            if "context" in content:
                ack["context"] = content["context"]
            self.acknowledge(ack)
            return
        await self.service.produce(self, content)


class TopicConsumer(DasfConnection):
    """Receives the messages of the topic ``slug`` (stored ones first, when reconnecting)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        layer = get_channel_layer(hub_settings.CHANNEL_LAYER)
        if layer is not None and not isinstance(layer, InMemoryChannelLayer):
            self.channel_layer_alias = hub_settings.CHANNEL_LAYER  # other hub processes' messages
        self.topic = None
        self._checked = None  # (service.epoch, topic id) the permission was last checked at
        self._held = None  # live messages that arrive while the stored ones are being sent
        self._missed = False  # some of those were let go: they are stored, and read again
        self._registered = False

    async def connect(self):
        await super().connect()
        service = self.service
        problem = slug_problem(self.slug)
        if problem:
            self.refuse_and_close(f"error: {problem}", CLOSE_FORBIDDEN)
            return
        if self.refusal is not None:
            self.refuse_and_close(self.refusal, CLOSE_NOT_AUTHENTICATED)
            return
        topic, allowed = await service.allowed(self.principal.user_id, CAN_CONSUME, self.slug)
        if topic is not None and not allowed:
            self.refuse_and_close(self._not_allowed(), CLOSE_FORBIDDEN)
            return
        self.topic = topic
        self._held = []
        service.register(self)
        self._registered = True
        if self.channel_layer is not None:
            await self.channel_layer.group_add(group_name(self.slug), self.channel_name)
        sent = 0
        if topic is not None:
            self._checked = (service.epoch, topic.id)
            await service.consumer_connected(topic)
            sent = await self._catch_up(topic)
        self._held = None
        if topic is not None and not topic.is_response and topic.supports_dasf and not sent:
            # Ask the backend to describe its API (stored on the topic when it answers on status-ping).
            self.enqueue(broker_request(MessageType.API_INFO, timezone.now(), str(uuid.uuid4())))

    async def disconnect(self, code):
        await super().disconnect(code)
        if not self._registered:
            return
        self._registered = False
        service = self.service
        service.unregister(self)
        if self.channel_layer is not None:
            try:
                await self.channel_layer.group_discard(group_name(self.slug), self.channel_name)
            except Exception:
                logger.exception("leaving the channel-layer group of %s failed", self.slug)
        topic = service.grants.topics.get(self.slug)
        if topic is not None and service.running:
            try:
                await service.consumer_left(topic)
            except Exception as exc:
                _log.warning("left", self.slug, "DASF: after a consumer of %s left: %s", self.slug, exc)

    @property
    def caught_up(self):
        """Registered, and its stored messages queued: what it gets from now on is live."""
        return self._registered and self._held is None

    async def _catch_up(self, topic):
        """Send the stored messages this consumer still has to get, then the live ones that came meanwhile;
        returns how many. Live messages wait in ``_held``, bounded like the queue: when more come, on a topic
        that stores them (each is committed before it is delivered), they are let go and the stored messages
        read again; on a topic that stores nothing the consumer fell behind."""
        sent_ids = set()
        sent = 0
        while True:
            self._missed = False
            for message_id, payload in await self.service.outstanding(topic, self.principal.user_id):
                if message_id not in sent_ids:
                    sent_ids.add(message_id)
                    if not await self.put(payload):
                        return sent
                    sent += 1
            while self._held and not self._missed:
                held, self._held = self._held, []
                for message_id, payload in held:
                    if message_id not in sent_ids:
                        sent_ids.add(message_id)
                        if not await self.put(payload):
                            return sent
                        sent += 1
            if not self._missed:
                return sent
            self._held = []

    def _not_allowed(self):
        return f"error: {self.principal} may not consume topic {self.slug!r} (it needs the can_consume permission)"

    def deliver(self, topic, message_id, payload):
        """A message for this consumer (from the service): permitted? then queue it. Returns 1 if queued."""
        if self._closing:
            return 0
        service = self.service
        if self._checked is None or self._checked[0] != service.epoch or self._checked[1] != topic.id:
            if not service.grants.allows(self.principal.user_id, CAN_CONSUME, topic):
                self.refuse_and_close(self._not_allowed(), CLOSE_FORBIDDEN)
                return 0
            self._checked = (service.epoch, topic.id)
            self.topic = topic
        if self._held is not None:  # stored messages are being sent first: these wait, counted like the queue
            if len(self._held) >= self._limit:
                if topic.store == DISABLED:
                    self._too_slow()
                    return 0
                self._missed = True  # stored: _catch_up reads them again
                self._held.clear()
                return 0
            self._held.append((message_id, payload))
            return 1
        return 1 if self.enqueue(payload) else 0

    async def receive(self, text_data=None, bytes_data=None):
        if self._closing:
            return
        content, problem = self.parse(text_data, bytes_data)
        if problem is None and not isinstance(content.get("messageId"), str):
            problem = 'error: a consumer sends acknowledgements: {"messageId": "<the message\'s messageId>"}'
        if problem is not None:
            self.send_result(problem)
            return
        topic = self.topic or self.service.grants.topics.get(self.slug)
        if topic is not None:
            await self.service.consumer_ack(self, topic, content["messageId"])

    async def dasf_deliver(self, message):
        """Messages another hub process committed (cross-process channel layer)."""
        if message.get("origin") == ORIGIN or self._closing:
            return
        topic = self.service.grants.topics.get(message["slug"]) or await self.service.topic(message["slug"])
        if topic is None:
            return
        for message_id, payload in message["messages"]:
            self.deliver(topic, message_id, payload)


class PongConsumer(DasfConnection):
    """``status-ping/``: a backend's pong (``messageType: pong``) or its API description (``messageType:
    response`` with ``api_info``), naming its topic in ``properties.source_topic``. Only a consumer of that
    topic may answer for it."""

    async def receive(self, text_data=None, bytes_data=None):
        if self._closing:
            return
        content, problem = self.parse(text_data, bytes_data)
        if problem is not None:
            self.send_result(problem)
            return
        ack = {"messageId": content.get("messageId")}
        if "context" in content:
            ack["context"] = content["context"]
        ack["result"] = await self._answer(content)
        self.enqueue(orjson.dumps(ack).decode())

    async def _answer(self, content):
        if self.refusal is not None:
            return self.refusal
        props = content.get("properties")
        if not isinstance(props, dict) or not props.get(PropertyKeys.SOURCE_TOPIC.value):
            return "error: no source_topic in the message's properties"
        slug = props[PropertyKeys.SOURCE_TOPIC.value]
        if not isinstance(slug, str):
            return "error: source_topic must be a topic name"
        service = self.service
        topic, allowed = await service.allowed(self.principal.user_id, CAN_CONSUME, slug)
        if topic is None:
            return f"error: topic {slug[:80]!r} does not exist"
        if not allowed:
            return f"error: {self.principal} may not answer for topic {slug!r} (it needs the can_consume permission)"
        message_type = props.get(PropertyKeys.MESSAGE_TYPE.value)
        if message_type == MessageType.PONG.value:
            service.pong(topic)
        elif message_type == MessageType.RESPONSE.value and "api_info" in props:
            api_info = props["api_info"]
            if isinstance(api_info, str):
                try:
                    api_info = orjson.loads(api_info)
                except orjson.JSONDecodeError:
                    return "error: api_info is not valid JSON"
            service.pong(topic)
            await service.set_api_info(topic, api_info)
        return "ok"
