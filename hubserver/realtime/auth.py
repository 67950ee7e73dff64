"""Who is connecting: a Django session (browsers) or a DRF API token (scripts), for WebSockets and HTTP.

WebSocket: wrap the routes in ``HubAuthMiddlewareStack`` (channels' ``AuthMiddlewareStack`` around
``TokenAuthMiddleware``). A token in ``?token=<key>`` or an ``Authorization: Token <key>`` header wins over
the session; a token that is given but invalid leaves the user anonymous (the consumer then closes with 4401).

A session-authenticated WebSocket must come from the hub's own origin or a trusted one, compared whole
(scheme, host and port) the way Django's CSRF check compares a POST's Origin: browsers send cookies to
every port of a host and across schemes, so a page on ``http://127.0.0.1:9999`` or ``https://localhost``
would otherwise open a socket with the user's session (cross-site WebSocket hijacking). Token clients send
no cookies and need no Origin.
"""

from urllib.parse import parse_qs, urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

TOKEN = "token"
SESSION = "session"


def _token_from_header(value):
    if not value:
        return None
    parts = value.split()
    if len(parts) == 2 and parts[0].lower() == "token":  # DRF's TokenAuthentication keyword
        return parts[1]
    return None


def token_from_scope(scope):
    """The API token a WebSocket scope carries (``?token=`` or ``Authorization: Token``), else None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            token = _token_from_header(value.decode("latin1"))
            if token:
                return token
    query = parse_qs((scope.get("query_string") or b"").decode("latin1"))
    values = query.get("token")
    return values[0] if values and values[0] else None


@database_sync_to_async
def user_for_token(key):
    """The active user owning DRF token ``key``, or AnonymousUser (DRF's own check: TokenAuthentication)."""
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.exceptions import AuthenticationFailed

    try:
        user, _ = TokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class TokenAuthMiddleware(BaseMiddleware):
    """Sets ``scope["user"]`` from an API token when one is given, and ``scope["auth"]`` to ``"token"`` or
    ``"session"`` (an authenticated session user) so the consumer knows whether to check the Origin."""

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        key = token_from_scope(scope)
        if key is not None:
            scope["user"] = await user_for_token(key)
            scope["auth"] = TOKEN
        else:
            user = scope.get("user")
            scope["auth"] = SESSION if user is not None and user.is_authenticated else None
        return await super().__call__(scope, receive, send)


def HubAuthMiddlewareStack(inner):
    """Session auth (cookies) and API token auth around ``inner``."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


def _header(scope, name):
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def own_origin(scope):
    """``scheme://host[:port]`` of the hub as this handshake reached it (its Host header, which must be one
    of ``ALLOWED_HOSTS``), or None. ``wss``/``https`` (or Django's ``SECURE_PROXY_SSL_HEADER``) mean https."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    secure = scope.get("scheme") in ("wss", "https")
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:
        name, value = proxy_header
        given = _header(scope, name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin1"))
        if given is not None:
            secure = given.split(",", 1)[0].strip() == value
    return f"{'https' if secure else 'http'}://{host.lower()}"


def trusted_origin(origin):
    """Is ``origin`` listed in ``CSRF_TRUSTED_ORIGINS``, exactly or under a ``scheme://*.domain`` entry?"""
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    for entry in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        if "*" not in entry:
            if origin == entry.lower():
                return True
            continue
        trusted = urlsplit(entry.lower())
        if trusted.scheme == parsed.scheme and is_same_domain(parsed.netloc, trusted.netloc.lstrip("*")):
            return True
    return False


def origin_allowed(scope):
    """True when the handshake has no Origin (not a browser), or its Origin is the hub's own origin or a
    trusted one (scheme, host and port all equal)."""
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    origin = origin.strip().lower()
    if not origin or origin == "null":
        return False
    return origin == own_origin(scope) or trusted_origin(origin)


async def authenticate_request(request):
    """The user of an HTTP request: ``Authorization: Token <key>`` (or ``?token=``), else the session."""
    key = _token_from_header(request.headers.get("Authorization")) or request.GET.get("token") or None
    if key:
        return await user_for_token(key), TOKEN
    auser = getattr(request, "auser", None)
    user = await auser() if auser is not None else AnonymousUser()
    return user, SESSION if user.is_authenticated else None
