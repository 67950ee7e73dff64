"""WebSocket routing, for an ASGI app of your own::

    from channels.routing import ProtocolTypeRouter, URLRouter
    from hubserver.realtime.auth import HubAuthMiddlewareStack
    from hubserver.realtime.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": HubAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    })

``HubAuthMiddlewareStack`` is channels' ``AuthMiddlewareStack`` (session) plus API tokens; plain
``AuthMiddlewareStack`` works too (session only). ``hub_websocket_urlpatterns`` are the same routes with
``HubAuthMiddlewareStack`` already applied per route, to sit next to routes that must not pay for session
auth (the hub's MQTT-over-WebSocket endpoint) in one ``URLRouter``.

Events reach consumers once the hub runs in the process: ``hubserver.hub.Hub`` registers the fan-out on the
router (``fanout.on_commit``) and on the command dispatcher (``fanout.on_command_change``).
"""

from django.urls import path

from .auth import HubAuthMiddlewareStack
from .consumers import HubConsumer

websocket_urlpatterns = [
    path("ws/hub/", HubConsumer.as_asgi(), name="realtime-ws"),
]

hub_websocket_urlpatterns = [
    path("ws/hub/", HubAuthMiddlewareStack(HubConsumer.as_asgi()), name="realtime-ws"),
]
