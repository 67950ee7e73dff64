"""dasf-broker-django's names for the DASF WebSocket authentication. ``hubserver.dasf.routing``'s
``websocket_urlpatterns`` already apply it to each route, so a project of your own includes them as they
are::

    from hubserver.dasf.routing import websocket_urlpatterns

    application = ProtocolTypeRouter({"websocket": URLRouter(websocket_urlpatterns)})

``TokenAuthMiddleware`` (``TokenAuthMiddlewareStack(inner)``, for consumers of your own) takes
``Authorization: Token <key>`` or ``Bearer <key>`` (and ``?token=``), else the session; ``get_user(scope)``
is the user a scope's token names, or the anonymous user.
"""

from django.contrib.auth.models import AnonymousUser

from ..realtime.auth import user_for_token
from .auth import DasfAuthMiddleware, DasfAuthMiddlewareStack, token_from_scope

TokenAuthMiddleware = DasfAuthMiddleware
TokenAuthMiddlewareStack = DasfAuthMiddlewareStack


async def get_user(scope):
    """The user a scope's API token names; the anonymous user without a (valid) token."""
    key = token_from_scope(scope)
    if key is None:
        return AnonymousUser()
    return await user_for_token(key)


__all__ = ["TokenAuthMiddleware", "TokenAuthMiddlewareStack", "get_user"]
