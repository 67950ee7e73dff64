"""HTTP request bodies refused from their headers, before they are read: a limit per route, and chunked
bodies capped as they arrive.

The rule, ``body_limit(path)``: the limit of the URL the path resolves to (``HTTP_BODY_LIMITS``, by URL name;
the hub's own routes have built-in limits: the broker endpoints a few KB, device ingestion
``MAX_PAYLOAD_SIZE``), else ``HTTP_MAX_BODY_SIZE``. Two adapters apply it:

- ``BoundedHTTPFactory`` for daphne, which ``hubserver run`` serves with. Twisted's HTTP channel would
  otherwise take in a whole body (in memory, or a temporary file above 100 KB) before daphne hands the
  request to the application, which then gets all of it queued at once: ten 200 MB POSTs took a gigabyte.
  Here the declared ``Content-Length`` is checked as soon as the headers are in, and a chunked body is
  counted chunk by chunk. Over the limit, the client gets ``413`` with ``Connection: close`` at once (no
  ``100 Continue``), nothing more of the body is kept, and the connection is closed after a short linger
  that lets a client still sending read its answer instead of a reset.
- ``BodyLimitMiddleware``, the same rule as ASGI middleware in front of Django, for other ASGI servers
  (uvicorn, hypercorn: they stream bodies to the application): a declared length over the limit is
  answered 413 before the first body message is read, a streamed body as soon as its total passes it.

Refusals are counted per route (``hubserver_http_bodies_refused_total``) and logged at most once a
minute per route, with the count since the last line.
"""

import logging
import threading
import time
from collections import Counter, OrderedDict
from urllib.parse import unquote

import orjson

from ..conf import hub_settings

logger = logging.getLogger("hubserver.http")

# Built-in limits of the hub's own routes, by URL name (``HTTP_BODY_LIMITS`` overrides them). An external
# broker's auth and ACL requests are a few short strings; device ingestion takes one message.
BROKER_BODY_LIMIT = 16 * 1024
BUILT_IN_LIMITS = {
    "hubserver:broker-auth": BROKER_BODY_LIMIT,
    "hubserver:broker-acl": BROKER_BODY_LIMIT,
}
PAYLOAD_ROUTES = ("hubserver:device-data", "hubserver:device-status")  # limited by MAX_PAYLOAD_SIZE
OTHER = "other"  # the route label of paths that resolve to no named URL

LINGER_SECONDS = 2.0  # how long a refused connection's remaining body is read and dropped before closing
LOG_EVERY = 60.0  # seconds between two log lines about one route
_CACHE_SIZE = 1024


class _Limits:
    """``path -> (route, limit)``, resolved with Django's URL resolver and cached (bounded) per path."""

    def __init__(self):
        self._cache = OrderedDict()
        self._lock = threading.Lock()
        self._key = None

    def _settings_key(self):
        return (
            hub_settings.HTTP_MAX_BODY_SIZE,
            hub_settings.MAX_PAYLOAD_SIZE,
            tuple(sorted(hub_settings.HTTP_BODY_LIMITS.items())),
        )

    def get(self, path):
        key = self._settings_key()
        with self._lock:
            if key != self._key:
                self._cache.clear()
                self._key = key
            found = self._cache.get(path)
            if found is not None:
                self._cache.move_to_end(path)
                return found
        found = self._resolve(path)
        with self._lock:
            self._cache[path] = found
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    @staticmethod
    def _resolve(path):
        from django.urls import Resolver404, resolve

        try:
            route = resolve(path).view_name or OTHER
        except Resolver404:
            route = OTHER
        except Exception:  # a broken URLconf is Django's to report, on the request itself
            route = OTHER
        return route, limit_of(route)

    def clear(self):
        with self._lock:
            self._cache.clear()


def limit_of(route):
    """The body limit of a URL name."""
    configured = hub_settings.HTTP_BODY_LIMITS
    if route in configured:
        return configured[route]
    if route in PAYLOAD_ROUTES:
        return hub_settings.MAX_PAYLOAD_SIZE
    return BUILT_IN_LIMITS.get(route, hub_settings.HTTP_MAX_BODY_SIZE)


_limits = _Limits()


def body_limit(path):
    """``(route, limit)`` for a request path (a raw request target: its query string is ignored)."""
    if isinstance(path, bytes):
        path = path.decode("latin1")
    return _limits.get(unquote(path.split("?", 1)[0]))


class RefusalStats:
    """Bodies refused per route, and the once-a-minute log line."""

    def __init__(self):
        self._lock = threading.Lock()
        self.refused = Counter()
        self._unlogged = Counter()
        self._logged_at = {}

    def refuse(self, route, limit, declared, client):
        now = time.monotonic()
        with self._lock:
            self.refused[route] += 1
            self._unlogged[route] += 1
            if now - self._logged_at.get(route, -LOG_EVERY) < LOG_EVERY:
                return
            self._logged_at[route] = now
            count, self._unlogged[route] = self._unlogged[route], 0
        size = "a chunked body" if declared is None else f"{declared} bytes"
        logger.warning(
            "refused an HTTP body over the %d-byte limit of %s: %s from %s (%d refused since the last such line)",
            limit,
            route,
            size,
            client or "?",
            count,
        )

    def snapshot(self):
        with self._lock:
            return dict(self.refused)

    def clear(self):
        with self._lock:
            self.refused.clear()
            self._unlogged.clear()
            self._logged_at.clear()


stats = RefusalStats()


def refusal_body(limit):
    return orjson.dumps({"error": f"request body too large: this URL takes at most {limit} bytes", "limit": limit})


# -- daphne (Twisted) ------------------------------------------------------------------------------------


def bounded_http_factory(server):
    """daphne's HTTPFactory, making ``BoundedRequest``s."""
    from daphne.http_protocol import HTTPFactory

    class BoundedHTTPFactory(HTTPFactory):
        def buildProtocol(self, addr):
            protocol = super().buildProtocol(addr)
            if protocol is not None:
                protocol.requestFactory = bounded_request_class()
            return protocol

    return BoundedHTTPFactory(server)


_request_class = None


def bounded_request_class():
    """daphne's WebRequest with the body limit (built on first use: importing daphne installs a reactor)."""
    global _request_class
    if _request_class is not None:
        return _request_class
    from daphne.http_protocol import WebRequest
    from twisted.internet import reactor
    from twisted.web import http

    class BoundedRequest(WebRequest):
        refused = False
        _route = OTHER
        _limit = None
        _received = 0

        def gotLength(self, length):
            # Called by the channel once every header is in, before any byte of the body is read.
            self._route, self._limit = body_limit(self.channel._path)
            if length is not None and length > self._limit:
                self._refuse(length)
                return
            super().gotLength(length)

        def handleContentChunk(self, data):
            if self.refused:
                return
            self._received += len(data)
            if self._received > self._limit:  # a chunked body (a declared length never gets here)
                self._refuse(None)
                return
            super().handleContentChunk(data)

        def requestReceived(self, command, path, version):
            if not self.refused:
                super().requestReceived(command, path, version)

        def _refuse(self, declared):
            self.refused = True
            if getattr(self, "content", None) is not None:
                self.content.close()  # what was kept of a chunked body so far
            self.content = _Nothing()
            self.requestHeaders.removeHeader(b"expect")  # no "100 Continue" for a body we refuse
            client = self.channel.transport.getPeer()
            stats.refuse(self._route, self._limit, declared, getattr(client, "host", None))
            body = refusal_body(self._limit)
            transport = self.channel.transport
            transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.channel.persistent = False
            # Half-close: the client reads the answer and an end of stream; what it still sends is read and
            # dropped until it closes or the linger ends, so its socket is not reset before it reads the 413.
            if hasattr(transport, "loseWriteConnection"):
                transport.loseWriteConnection()
                reactor.callLater(LINGER_SECONDS, _close, self.channel)
            else:
                self.channel.loseConnection()
            self.server.protocol_disconnected(self)  # no application will ever run for this request

        def connectionLost(self, reason):
            if self.refused:  # daphne's bookkeeping was done in _refuse
                http.Request.connectionLost(self, reason)
            else:
                super().connectionLost(reason)

        def finish(self):
            if not self.refused:
                super().finish()

    _request_class = BoundedRequest
    return _request_class


def _close(channel):
    transport = channel.transport
    if transport is not None and getattr(transport, "connected", False):
        transport.loseConnection()


class _Nothing:
    """A request's content sink that keeps nothing."""

    closed = False

    def write(self, data):
        pass

    def read(self, size=-1):
        return b""

    def seek(self, *args):
        return 0

    def tell(self):
        return 0

    def close(self):
        self.closed = True


# -- any ASGI server -------------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """ASGI middleware applying ``body_limit`` to HTTP requests before the inner application reads them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, limit = body_limit(scope.get("path") or "/")
        declared = _declared_length(scope)
        client = (scope.get("client") or ("?",))[0]
        if declared is not None and declared > limit:
            stats.refuse(route, limit, declared, client)
            return await _send_413(send, limit)
        received = 0
        refused = False

        async def bounded_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    stats.refuse(route, limit, None, client)
                    raise _TooLarge()
            return message

        try:
            return await self.app(scope, bounded_receive, send)
        except _TooLarge:
            if refused:
                return await _send_413(send, limit)
            raise


class _TooLarge(Exception):
    pass


def _declared_length(scope):
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send, limit):
    body = refusal_body(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
