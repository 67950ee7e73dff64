"""The DASF WebSocket routes, under ``DASF_WEBSOCKET_URL_ROUTE`` (``ws/``), with session and token auth::

    ws/status-ping/                 backends answer pings and API-info requests (PongConsumer)
    ws/<slug>/                      producers (TopicProducer)
    ws/<slug>/<subscription>/       consumers (TopicConsumer)

The trailing ``/`` is optional (DASF clients leave it out). Names that are not topic names still reach a
consumer, which says what is wrong with them instead of failing the handshake. Put these routes after
``ws/hub/`` (the hub's live stream), whose name DASF topics may not take.
"""

from django.urls import path, re_path

from . import app_settings
from .auth import DasfAuthMiddlewareStack
from .consumers import PongConsumer, TopicConsumer, TopicProducer


def __getattr__(name):
    """``websocket_urlpatterns`` (dasf-broker-django's name): the routes, built when asked, so they follow
    the ``DASF_WEBSOCKET_URL_ROUTE`` of that moment."""
    if name == "websocket_urlpatterns":
        return build_websocket_urlpatterns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_websocket_urlpatterns():
    """The routes, built with the current ``DASF_WEBSOCKET_URL_ROUTE``."""
    from channels.routing import URLRouter

    return [
        path(
            app_settings.DASF_WEBSOCKET_URL_ROUTE,
            URLRouter(
                [
                    re_path(r"^status-ping/?$", DasfAuthMiddlewareStack(PongConsumer.as_asgi())),
                    re_path(r"^(?P<slug>[^/]+)/?$", DasfAuthMiddlewareStack(TopicProducer.as_asgi())),
                    re_path(
                        r"^(?P<slug>[^/]+)/(?P<subscription>[^/]+)/?$",
                        DasfAuthMiddlewareStack(TopicConsumer.as_asgi()),
                    ),
                ]
            ),
        )
    ]
