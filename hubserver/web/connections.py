"""The database connections an HTTP request opened are closed when the request finishes.

Under ASGI, Django runs each request's synchronous work (a sync view, sync middleware, thread-sensitive
``database_sync_to_async`` calls) in a thread made for that request, and a connection opened there
belongs to that thread. With persistent connections (``CONN_MAX_AGE`` None or above 0, which the hub's
long-lived threads want: the writer, the authentication lookups) such a connection outlives its request:
nothing ever uses it again, and it is closed only when the garbage collector breaks its reference cycle.
A burst of 6,000 unauthenticated ingest requests left 3,110 SQLite descriptors open that way. Closing
it at the end of the request bounds the connections by the requests in flight, whatever the rate.

Only requests served by Django's ASGI handler are concerned (under WSGI a worker thread serves many
requests, and its persistent connection is worth keeping); a connection inside a transaction (a test's
atomic block) is left alone.
"""

from django.core.handlers.asgi import ASGIHandler
from django.db import connections

DISPATCH_UID = "hubserver.web.connections"


def close_request_connections(sender, **kwargs):
    """``request_finished`` receiver; runs in the thread that served the request."""
    if not (isinstance(sender, type) and issubclass(sender, ASGIHandler)):
        return
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def connect():
    from django.core.signals import request_finished

    request_finished.connect(close_request_connections, dispatch_uid=DISPATCH_UID)
