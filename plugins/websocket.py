"""MQTT over WebSocket on the HTTP port: a plain ASGI app (subprotocol ``mqtt``) that feeds amqtt's
``external`` listener. It is not a Channels consumer: Channels' dispatch hops to the ORM thread before
every frame, which would cap MQTT over WebSocket at a few hundred packets a second."""

import asyncio
import logging

from amqtt.adapters import StreamReaderAdapter, WriterAdapter

logger = logging.getLogger("hubserver.mqtt.websocket")


class ASGIWriter(WriterAdapter):
    """Buffers what amqtt writes and sends it as one binary WebSocket message per drain."""

    def __init__(self, send, peer):
        self._send = send
        self._peer = peer
        self._buffer = bytearray()
        self._closed = False

    def write(self, data):
        self._buffer.extend(data)

    async def drain(self):
        while self._buffer and not self._closed:  # what is written while a send is under way goes next
            data, self._buffer = bytes(self._buffer), bytearray()
            await self._send({"type": "websocket.send", "bytes": data})

    def get_peer_info(self):
        return self._peer

    def get_ssl_info(self):
        return None

    async def close(self):
        if not self._closed:
            try:
                await self.drain()
            finally:
                self._closed = True
                await self._send({"type": "websocket.close"})


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
        reader = asyncio.StreamReader()
        peer = tuple(scope.get("client") or ("websocket", 0))
        writer = ASGIWriter(send, peer)
        session = asyncio.ensure_future(engine.websocket_connected(StreamReaderAdapter(reader), writer))
        try:
            while not session.done():
                receiving = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait([receiving, session], return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    break
                event = receiving.result()
                if event["type"] == "websocket.receive":
                    reader.feed_data(event.get("bytes") or (event.get("text") or "").encode())
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
