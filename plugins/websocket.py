"""MQTT over WebSocket on the HTTP port: a plain ASGI app (subprotocol ``mqtt``) that feeds amqtt's
``external`` listener. It is not a Channels consumer: Channels' dispatch hops to the ORM thread before
every frame, which would cap MQTT over WebSocket at a few hundred packets a second."""

import asyncio
import logging

from amqtt.adapters import ReaderAdapter, WriterAdapter

from hubserver.web.send_buffer import daphne_transport

logger = logging.getLogger("hubserver.mqtt.websocket")


class ASGIWriter(WriterAdapter):
    """Buffers what amqtt writes and sends it as one binary WebSocket message per drain.

    A send waits while the client has not read what it was sent (``hubserver.web.send_buffer``), and one
    drain sends at a time, in order; meanwhile writes collect here, and the reader stops reading the
    client once they pass its mark (``get_write_buffer_size``), as for a TCP connection's transport."""

    def __init__(self, send, peer):
        self._send = send
        self._peer = peer
        self._buffer = bytearray()
        self._closed = False
        self._sending = asyncio.Lock()

    def write(self, data):
        if not self._closed:
            self._buffer.extend(data)

    def get_write_buffer_size(self):
        return len(self._buffer)

    async def drain(self):
        async with self._sending:
            while self._buffer and not self._closed:  # what is written while a send is under way goes next
                data, self._buffer = bytes(self._buffer), bytearray()
                await self._send({"type": "websocket.send", "bytes": data})

    def get_peer_info(self):
        return self._peer

    def get_ssl_info(self):
        return None

    def abort(self):
        """Close without sending what is buffered (a client that reads nothing would never take it)."""
        if not self._closed:
            self._closed = True
            self._buffer = bytearray()
            task = asyncio.ensure_future(self._send({"type": "websocket.close", "code": 1008}))
            task.add_done_callback(_retrieve)

    async def close(self):
        if not self._closed:
            try:
                await self.drain()
            finally:
                self._closed = True
                await self._send({"type": "websocket.close"})


def _retrieve(task):
    if not task.cancelled() and task.exception() is not None:
        logger.debug("closing a WebSocket failed: %r", task.exception())


class WebSocketReader(ReaderAdapter):
    """The bytes of a WebSocket's messages, read as amqtt's stream reader reads (``read(n)``: exactly n
    bytes), holding at most about ``limit`` bytes: ``over_limit`` tells the app to stop receiving.

    Before the connection is established the limit is MAX_CONNECT_SIZE; the reader loop raises it to
    MAX_PACKET_SIZE once the CONNECT is accepted (``established``)."""

    def __init__(self, limit):
        self.limit = limit
        self._buffer = bytearray()
        self._eof = False
        self._data = None  # resolved when bytes (or the end) arrive
        self._room = None  # resolved when the buffer falls below the limit

    def feed(self, data):
        self._buffer += data
        self._wake("_data")

    def feed_eof(self):
        self._eof = True
        self._wake("_data")
        self._wake("_room")

    def established(self, limit):
        self.limit = limit
        if not self.over_limit():
            self._wake("_room")

    def over_limit(self):
        return len(self._buffer) > self.limit and not self._eof

    async def room(self):
        """Wait until the MQTT side has read the buffer down to the limit."""
        while self.over_limit():
            self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def read(self, n=-1):
        buffer = self._buffer
        while len(buffer) < n or (n < 0 and not self._eof):
            if self._eof:
                raise asyncio.IncompleteReadError(bytes(buffer), n)
            self._data = asyncio.get_running_loop().create_future()
            await self._data
        if n < 0:
            n = len(buffer)
        data = bytes(buffer[:n])
        del buffer[:n]
        if self._room is not None and not self.over_limit():
            self._wake("_room")
        return data

    def _wake(self, name):
        future = getattr(self, name)
        if future is not None:
            setattr(self, name, None)
            if not future.done():
                future.set_result(None)


def mqtt_websocket_app(engine_getter):
    """An ASGI app for the MQTT WebSocket path; ``engine_getter()`` returns the running engine or None."""

    async def app(scope, receive, send):
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        engine = engine_getter()
        if engine is None or "mqtt" not in scope.get("subprotocols", ()):
            await send({"type": "websocket.close", "code": 1002 if engine else 1013})
            return
        await send({"type": "websocket.accept", "subprotocol": "mqtt"})
        limits = engine.broker.limits
        counters = engine.broker.limit_counters
        reader = WebSocketReader(limits.max_connect_size)
        peer = tuple(scope.get("client") or ("websocket", 0))
        writer = ASGIWriter(send, peer)
        transport = daphne_transport(send)  # to stop reading the socket while the MQTT side is behind
        session = asyncio.ensure_future(engine.websocket_connected(reader, writer))
        established = False
        try:
            while not session.done():
                if reader.over_limit():
                    # Upstream (an unbounded StreamReader, and daphne's unbounded queue of frames): a client
                    # could make the hub hold gigabytes. Here its socket is not read until the MQTT side
                    # has caught up; what daphne has already read waits in its queue.
                    counters.throttle(None, "websocket_buffer", 0.0, "a WebSocket from %s: reading paused", peer[0])
                    if transport is not None:
                        transport.pauseProducing()
                    room = asyncio.ensure_future(reader.room())
                    try:
                        await asyncio.wait([room, session], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        room.cancel()
                        if transport is not None:
                            transport.resumeProducing()
                    continue
                receiving = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait([receiving, session], return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    break
                event = receiving.result()
                if event["type"] == "websocket.receive":
                    data = event.get("bytes") or (event.get("text") or "").encode()
                    established = established or reader.limit > limits.max_connect_size
                    if not established and len(data) > limits.max_connect_size:
                        # Before its CONNECT is accepted a client has nothing bigger than a CONNECT to say.
                        counters.close(
                            None,
                            "connect_too_large",
                            "closed a WebSocket from %s: a %d-byte frame before CONNECT",
                            peer[0],
                            len(data),
                        )
                        await send({"type": "websocket.close", "code": 1009})
                        break
                    reader.feed(data)
                elif event["type"] == "websocket.disconnect":
                    break
        finally:
            reader.feed_eof()
            try:
                await asyncio.wait_for(asyncio.shield(session), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                session.cancel()
            except Exception:
                logger.exception("MQTT over WebSocket session from %s ended with an error", peer)

    return app
