"""Polling (``/iot/poll/{type}/`` and ``/iot/poll/{type}/{id}/``), and the
request checks SSE shares: session or API token, then the API's ``view`` permissions.

``GET ?since=<cursor>&limit=<n>`` answers ``{"events": [...], "cursor": <int>}`` from the database only:
the reading and status events of the (at most ``limit``) inbound data/status messages stored after
``since``, oldest first, and the cursor to pass as ``since`` next time (the last message looked at: one
that holds no event, e.g. an unparseable payload, still moves it). Without ``since``: the latest ``limit``
messages' events. Connection and command events
are live only (WebSocket, SSE); their current state is in the API. Errors are
``{"type": "error", "code", "message"}`` with 400/401/403/404 (codes in ``errors.py``).
"""

from channels.db import database_sync_to_async
from django.http import JsonResponse

from ..conf import hub_settings
from .auth import authenticate_request
from .errors import BAD_REQUEST, HTTP_STATUS, NOT_AUTHENTICATED, EventError, error_event
from .events import stored_events
from .permissions import VIEW, acheck_access


def error_response(code, message, status=None):
    body = error_event(code, message)
    body.pop("request_id")
    response = JsonResponse(body, status=status or HTTP_STATUS.get(code, 400))
    if code == NOT_AUTHENTICATED:
        response["WWW-Authenticate"] = 'Token realm="api"'
    return response


def method_not_allowed():
    response = error_response(BAD_REQUEST, "only GET is allowed", status=405)
    response["Allow"] = "GET, HEAD"
    return response


async def authorize(request, type_name, device_id=None):
    """``(AccessTarget, None)`` or ``(None, error response)``: authenticated first, then the view check."""
    user, _ = await authenticate_request(request)
    if not user.is_authenticated:
        return None, error_response(NOT_AUTHENTICATED, "authentication required: a session or an API token")
    try:
        return await acheck_access(user, type_name, device_id, VIEW), None
    except EventError as exc:
        return None, error_response(exc.code, exc.message)


def parse_cursor(value, name):
    """A non-negative integer cursor, None when absent; EventError(bad_request) otherwise."""
    if value in (None, ""):
        return None
    try:
        cursor = int(value)
    except (TypeError, ValueError):
        cursor = -1
    if cursor < 0:
        raise EventError(BAD_REQUEST, f"{name} must be a non-negative integer, got {value!r}")
    return cursor


def parse_limit(value):
    if value in (None, ""):
        return hub_settings.POLL_LIMIT
    top = hub_settings.POLL_MAX_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if not 1 <= limit <= top:
        raise EventError(BAD_REQUEST, f"limit must be an integer from 1 to {top}, got {value!r}")
    return limit


async def poll(request, type_name, device_id=None):
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed()
    target, error = await authorize(request, type_name, device_id)
    if error is not None:
        return error
    try:
        since = parse_cursor(request.GET.get("since"), "since")
        limit = parse_limit(request.GET.get("limit"))
    except EventError as exc:
        return error_response(exc.code, exc.message)
    events, cursor = await database_sync_to_async(stored_events)(
        target.type_name, target.device_id, after=since, limit=limit
    )
    response = JsonResponse({"events": events, "cursor": cursor})
    response["Cache-Control"] = "no-store"
    return response
