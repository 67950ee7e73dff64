"""What the hub writes to a WebSocket client is bounded by what the client reads.

Under daphne, an application's ``send({"type": "websocket.send", ...})`` hands the frame to Twisted and
returns at once; Twisted keeps in its transport whatever the client has not read yet, without limit. A client
that stops reading (a live viewer of a busy hub, an MQTT subscriber over WebSocket, a DASF consumer) made the
hub hold every frame meant for it: nothing ever waited, so no queue of the hub's ever filled.

``SendBufferMiddleware`` wraps the ``send`` of every WebSocket: while the connection holds more than
``WEBSOCKET_SEND_BUFFER`` bytes its client has not read, a ``websocket.send`` waits until the client has
read them. The sender's own bounded queue then applies its policy: a live viewer is closed as too slow
(``REALTIME_QUEUE_SIZE``), a DASF connection too (``DASF_CONSUMER_QUEUE_SIZE``), an MQTT client's socket
is no longer read and its deliveries beyond ``MAX_QUEUED_MESSAGES`` are dropped. Closing frames never wait
(Twisted's WebSocket layer aborts a connection whose close handshake does not complete).

How it knows: Twisted tells a transport's registered producer when the transport holds more than its
``bufferSize`` (``pauseProducing``) and when it has written everything (``resumeProducing``). A ``_Gate``
takes the producer's place (passing each call on to daphne's HTTP channel, which was there), and the
transport's ``bufferSize`` becomes the setting. Under another ASGI server (whose ``send`` waits for the
socket already) or a transport without Twisted's producer API, sends pass through unchanged.

Each wait is counted per endpoint (``hubserver_websocket_send_paused_total{endpoint}``), the sends waiting
now are a gauge (``hubserver_websocket_send_waiting``), and it is logged at most once a minute per endpoint,
with the count since the last line.
"""

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import Counter

from ..conf import hub_settings
from ..logsafe import clip

logger = logging.getLogger("hubserver.websocket")

LOG_EVERY = 60.0  # seconds between two log lines about one endpoint
RECHECK = 1.0  # seconds between two looks at a waiting connection, should a notification be missed


def daphne_transport(send):
    """The Twisted transport under daphne's ``send`` (a partial of its server's ``handle_reply`` with the
    connection's protocol), or None under another server. A ``send`` this module wrapped names the transport
    it wraps, so that the application under it can still pause reading the socket."""
    wrapped = getattr(send, "daphne_transport", None)
    if wrapped is not None:
        return wrapped
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(protocol, "transport", None)
    return transport if hasattr(transport, "pauseProducing") else None


class _Gate:
    """Stands in for a Twisted transport's producer, to learn when its buffer is full and when it is empty."""

    def __init__(self, transport, inner):
        self._transport = transport
        self._inner = inner
        self._room = asyncio.Event()
        self._room.set()

    @classmethod
    def install(cls, transport, limit):
        """The gate of ``transport`` (made on first use), or None when it cannot have one."""
        producer = getattr(transport, "producer", None)
        if isinstance(producer, cls):
            return producer
        if not hasattr(transport, "producerPaused") or (producer is not None and not transport.streamingProducer):
            return None  # not a Twisted FileDescriptor, or a pull producer the gate could not stand for
        gate = cls(transport, producer)
        transport.producer = gate
        transport.streamingProducer = True
        transport.bufferSize = limit
        return gate

    def full(self):
        transport = self._transport
        return bool(transport.producer is self and transport.producerPaused and transport.connected)

    async def room(self):
        """Wait until the client has read what the transport holds (or the connection is gone)."""
        while self.full():
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), RECHECK)

    # IPushProducer, called by the transport; daphne's HTTP channel (the producer before) hears them too.

    def pauseProducing(self):
        self._room.clear()
        if self._inner is not None:
            self._inner.pauseProducing()

    def resumeProducing(self):
        self._room.set()
        if self._inner is not None:
            self._inner.resumeProducing()

    def stopProducing(self):
        self._room.set()
        if self._inner is not None:
            self._inner.stopProducing()


class SendStats:
    """Sends that had to wait, per endpoint; those waiting now; the once-a-minute log line."""

    def __init__(self):
        self._lock = threading.Lock()
        self.paused = Counter()
        self.waiting = Counter()
        self._unlogged = Counter()
        self._logged_at = {}

    def pause(self, endpoint, client, limit):
        now = time.monotonic()
        with self._lock:
            self.paused[endpoint] += 1
            self.waiting[endpoint] += 1
            self._unlogged[endpoint] += 1
            if now - self._logged_at.get(endpoint, -LOG_EVERY) < LOG_EVERY:
                return
            self._logged_at[endpoint] = now
            count, self._unlogged[endpoint] = self._unlogged[endpoint], 0
        logger.warning(
            "a %s WebSocket client (%s) does not read what it is sent: more than %d bytes wait for it, sending "
            "paused "
            "(WEBSOCKET_SEND_BUFFER; %d pauses since the last such line)",
            endpoint,
            clip(client),
            limit,
            count,
        )

    def resume(self, endpoint):
        with self._lock:
            self.waiting[endpoint] -= 1

    def snapshot(self):
        with self._lock:
            return {"paused": dict(self.paused), "waiting": dict(self.waiting)}

    def clear(self):
        with self._lock:
            self.paused.clear()
            self.waiting.clear()
            self._unlogged.clear()
            self._logged_at.clear()


stats = SendStats()


class SendBufferMiddleware:
    """ASGI middleware bounding what each WebSocket holds for its client; ``endpoint(scope)`` names the
    endpoint in metrics and logs."""

    def __init__(self, app, endpoint):
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope, receive, send):
        transport = daphne_transport(send) if scope["type"] == "websocket" else None
        if transport is None:
            return await self.app(scope, receive, send)
        limit = hub_settings.WEBSOCKET_SEND_BUFFER
        endpoint = self.endpoint(scope)
        host, port = (scope.get("client") or ("?", 0))[:2]
        client = f"{host}:{port}"
        gate = None

        async def bounded_send(message):
            nonlocal gate
            if message["type"] == "websocket.send":
                if gate is None:
                    gate = _Gate.install(transport, limit) or False
                if gate and gate.full():
                    stats.pause(endpoint, client, limit)
                    try:
                        await gate.room()
                    finally:
                        stats.resume(endpoint)
            await send(message)

        bounded_send.daphne_transport = transport
        return await self.app(scope, receive, bounded_send)
