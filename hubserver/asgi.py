"""The hub's ASGI application: Django over HTTP (request bodies limited per route before Django reads
them, ``hubserver.web.bodies``); on WebSocket the MQTT endpoint (subprotocol ``mqtt``, no session lookup),
the live-view protocol at ``/ws/hub/`` and the DASF topic broker under ``DASF_WEBSOCKET_URL_ROUTE`` (both
with session or token auth, applied per route), each holding at most ``WEBSOCKET_SEND_BUFFER`` bytes its client
has not read (``hubserver.web.send_buffer``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubserver.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from hubserver.conf import hub_settings  # noqa: E402
from hubserver.dasf.routing import build_websocket_urlpatterns as dasf_websocket_urlpatterns  # noqa: E402
from hubserver.hub import running_hub  # noqa: E402
from hubserver.plugins.websocket import mqtt_websocket_app  # noqa: E402
from hubserver.realtime.routing import hub_websocket_urlpatterns  # noqa: E402
from hubserver.web.bodies import BodyLimitMiddleware  # noqa: E402
from hubserver.web.send_buffer import SendBufferMiddleware  # noqa: E402


def _websocket_engine():
    hub = running_hub()
    return hub.websocket_engine() if hub is not None else None


def websocket_endpoint(scope):
    """``mqtt``, ``live`` or ``dasf``: which endpoint a WebSocket is on (a label of metrics and logs)."""
    route = (scope.get("path") or "/").lstrip("/")
    if route.rstrip("/") == hub_settings.MQTT_WEBSOCKET_PATH.strip("/"):
        return "mqtt"
    if any(route.startswith(str(pattern.pattern)) for pattern in hub_websocket_urlpatterns):
        return "live"
    return "dasf"


websocket_urlpatterns = [
    path(hub_settings.MQTT_WEBSOCKET_PATH.strip("/"), mqtt_websocket_app(_websocket_engine)),
    *hub_websocket_urlpatterns,
    *dasf_websocket_urlpatterns(),  # after ws/hub/: the slug "hub" is the hub's own
]

application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_application),
        # What a WebSocket holds for a client that does not read is bounded (WEBSOCKET_SEND_BUFFER).
        "websocket": SendBufferMiddleware(URLRouter(websocket_urlpatterns), websocket_endpoint),
    }
)
