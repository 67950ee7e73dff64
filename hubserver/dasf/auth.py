"""Who is on a DASF WebSocket: a DRF token (``Authorization: Token <key>`` or ``Bearer <key>``, as DASF
clients send it in their ``header`` setting, or ``?token=<key>``), else the browser session, else the
anonymous user (django-guardian's anonymous user then holds the permissions).

A token that is given but unknown is not quietly downgraded to anonymous: the connection is refused with
that reason. A session-authenticated socket must come from an allowed Origin (cross-site WebSocket
hijacking), exactly like ``/ws/hub/``.
"""

from dataclasses import dataclass

from channels.auth import AuthMiddlewareStack
from channels.middleware import BaseMiddleware

from ..realtime.auth import SESSION, TOKEN, origin_allowed, user_for_token

TOKEN_KEYWORDS = ("token", "bearer")


def token_from_scope(scope):
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            parts = value.decode("latin1").split()
            if len(parts) == 2 and parts[0].lower() in TOKEN_KEYWORDS:
                return parts[1]
    from urllib.parse import parse_qs

    values = parse_qs((scope.get("query_string") or b"").decode("latin1")).get("token")
    return values[0] if values and values[0] else None


class _SessionUser(BaseMiddleware):
    """Inside channels' session stack: ``scope["auth"]`` is ``"session"`` for a logged-in user, else None."""

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        scope = {**scope, "auth": SESSION if user is not None and user.is_authenticated else None}
        return await super().__call__(scope, receive, send)


class DasfAuthMiddleware:
    """``scope["user"]`` from a token when one is given (``scope["auth"] = "token"``; ``scope["auth_error"]``
    says why a token was not accepted), else from the session. Token connections skip channels' session
    middleware altogether: it would wrap every frame the connection sends."""

    def __init__(self, inner):
        self.inner = inner
        self.with_session = AuthMiddlewareStack(_SessionUser(inner))

    async def __call__(self, scope, receive, send):
        key = token_from_scope(scope)
        if key is None:
            return await self.with_session(scope, receive, send)
        user = await user_for_token(key)
        scope = {**scope, "user": user, "auth": TOKEN}
        if not user.is_authenticated:
            scope["auth_error"] = "the API token is not valid (unknown, or its user is inactive)"
        return await self.inner(scope, receive, send)


def DasfAuthMiddlewareStack(inner):
    return DasfAuthMiddleware(inner)


@dataclass(frozen=True, slots=True)
class Principal:
    """The user a connection acts as: ``user_id`` is guardian's anonymous user for anonymous clients."""

    user_id: int
    username: str
    anonymous: bool = False

    def __str__(self):
        return "the anonymous user" if self.anonymous else f"user {self.username!r}"


def principal_of(scope, anonymous_id):
    """``(Principal, refusal or None)`` for a WebSocket scope."""
    refusal = scope.get("auth_error")
    if refusal is None and scope.get("auth") == SESSION and not origin_allowed(scope):
        refusal = "a session WebSocket from a foreign Origin is refused (use a token, or an allowed host)"
    user = scope.get("user")
    if refusal is None and user is not None and user.is_authenticated:
        return Principal(user.pk, user.get_username()), None
    return Principal(anonymous_id, "anonymous", anonymous=True), refusal and f"error: {refusal}"
