"""``POST /iot/broker/auth/`` and ``POST /iot/broker/acl/``: the HTTP adapter of the access layer, for an
external broker (EMQX's HTTP authenticator and authorizer).

One implementation, two adapters: the embedded amqtt plugins and these views both decide with
``hubserver.access`` (``authenticate_mqtt*`` for CONNECT, ``can_publish``/``can_subscribe`` for topics).

Requests (JSON, or form-encoded):

- auth: ``{"username": ..., "password": ..., "clientid": ..., "peerhost": ...}``; ``clientid`` (or
  ``client_id``) is optional, and when present the client-id rule of ``authenticate_mqtt`` applies (a device
  must use its username as client id; nobody else may use an id shaped like a device username).
  ``peerhost`` (EMQX's ``${peerhost}``: the client's address) is optional too: with it, failures are
  throttled per address as well as per username, as on the embedded broker. Configure EMQX to send both.
- acl: ``{"username": ..., "topic": ..., "action": "pub"|"sub"|"publish"|"subscribe"}``.

Answers are always ``200 {"result": "allow"}`` or ``200 {"result": "deny"}`` (a refused auth also says
``"is_superuser": false``), including for a malformed body or a missing/wrong broker token. That is
deliberate: EMQX 5 treats any non-2xx answer as "ignore" and moves on to its next source, and for
authorization an all-"ignore" chain falls back to ``no_match``, which defaults to *allow*. A 4xx here would
therefore open the broker. Only a wrong method gets a 405 (EMQX never sends one).

Protection: these endpoints are meant for the broker only, and are off (404) unless a ``BROKERS`` entry sets
``AUTH_BACKEND`` (binary: ``HUBSERVER_BROKER_AUTH_BACKEND=1``); the hub then refuses to start without
``BROKER_AUTH_TOKEN`` (``HUBSERVER_BROKER_AUTH_TOKEN``, 16 characters at least), and every request must
carry ``Authorization: Bearer <token>`` (add it to the EMQX ``headers`` block), otherwise it is denied.
Authentication failures are throttled per username and per ``peerhost`` (``hubserver.access.throttle``).
A successful check changes nothing: the device is marked online by its first message (any message is a
heartbeat) or by the external broker's engine, never by a check that may not be followed by a connection.

ACL principals are derived from the username without a query for devices (EMQX only asks about clients
it authenticated, through the auth endpoint): ``{type}.{id}`` is that device, ``token`` is a service
client that authenticated with a valid API token, any other name is a service client if that user is
active and holds ``hubserver.mqtt_service`` (one query, cached for ``SERVICE_CACHE_SECONDS``), and an
empty username is the anonymous client (only when ``ALLOW_ANONYMOUS`` is on).

An external broker never asks the hub about *deliveries* (there is no ``can_receive`` hook over HTTP), so
for anonymous clients a subscription is allowed only when ``can_subscribe`` allows it *and* every topic
the filter can match would pass ``can_receive``: ``#`` is refused here although the embedded broker
accepts it (and then withholds namespace topics at delivery). Devices and service clients get exactly the
answers of ``can_subscribe``.
"""

import functools
import hmac
import json
import logging
import threading
import time

from channels.db import database_sync_to_async
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..access.acl import can_publish, can_subscribe
from ..access.authenticate import TOKEN_USERNAME, authenticate_mqtt, parse_device_username, permitted_service_user
from ..access.principals import ANONYMOUS, AnonymousPrincipal, DevicePrincipal, ServicePrincipal
from ..conf import hub_settings
from ..routing.throttle import ThrottledLog
from ._common import ViewStats

logger = logging.getLogger("hubserver.access.http")

SERVICE_CACHE_SECONDS = 5.0
SERVICE_CACHE_SIZE = 1_000

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
ACTIONS = {"pub": PUBLISH, "publish": PUBLISH, "sub": SUBSCRIBE, "subscribe": SUBSCRIBE}

# Keys: auth_allow, auth_deny, auth_bad_token, auth_malformed, acl_allow, acl_deny, acl_bad_token,
# acl_malformed. Read by hubserver.metrics at scrape time.
stats = ViewStats()


def _allow(**extra):
    return JsonResponse({"result": "allow", **extra})


def _deny(**extra):
    return JsonResponse({"result": "deny", **extra})


def enabled():
    """Are the endpoints on: does a ``BROKERS`` entry set ``AUTH_BACKEND``? (Settings validation makes sure
    a token is set then.)"""
    return any(entry["AUTH_BACKEND"] for entry in hub_settings.BROKERS.values())


def broker_endpoint(view):
    """404 unless the endpoints are on; CSRF-exempt (the broker has no CSRF token), POST only. The views are
    async: a reconnect storm through the broker is verified on the bounded hashing threads, side by side,
    with no thread per request; the only query left on a request (an uncached service user's) runs off the
    loop."""
    inner = csrf_exempt(require_POST(view))

    @functools.wraps(view)
    async def wrapper(request, *args, **kwargs):
        if not enabled():
            raise Http404("the broker endpoints are off: no BROKERS entry sets AUTH_BACKEND")
        return await inner(request, *args, **kwargs)

    return csrf_exempt(wrapper)


# -- request parsing ------------------------------------------------------------------------------------


def _token_ok(request, endpoint):
    """True when the request carries ``Authorization: Bearer <token>`` with the configured token; otherwise
    the refusal is counted (``<endpoint>_bad_token``) and logged."""
    expected = hub_settings.BROKER_AUTH_TOKEN
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if (
        expected
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.strip().encode("utf-8", "surrogatepass"), str(expected).encode())
    ):
        return True
    stats.incr(f"{endpoint}_bad_token")
    _bad_token_log.warning(
        "bad_token",
        endpoint,
        "broker %s request from %s without the broker token; denied",
        endpoint,
        request.META.get("REMOTE_ADDR"),
    )
    return False


# A request without the token is logged once a minute per endpoint, with the number kept quiet about.
_bad_token_log = ThrottledLog(logger)


def _fields(request, names):
    """``{name: str | None}`` from a JSON object or a form body; None if the body is malformed (not an
    object, undecodable, or a field that is not a string/null)."""
    try:
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            data = {name: request.POST.get(name) for name in names}
        else:  # JSON, whatever the declared type (EMQX sends application/json; curl users forget it)
            data = json.loads(request.body or b"null")
            if not isinstance(data, dict):
                return None
    except Exception:  # invalid JSON or UTF-8, RequestDataTooBig, a broken multipart body
        return None
    values = {}
    for name in names:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            return None
        values[name] = value
    return values


# -- auth ------------------------------------------------------------------------------------------------


@broker_endpoint
async def broker_auth(request):
    """Authenticate a CONNECT for an external broker: ``{"result": "allow"|"deny"}``."""
    if not _token_ok(request, "auth"):
        return _deny()
    data = _fields(request, ("username", "password", "clientid", "client_id", "peerhost"))
    if data is None:
        stats.incr("auth_malformed")
        return _deny()
    username = data["username"] or ""
    client_id = data["clientid"] if data["clientid"] is not None else data["client_id"]
    principal = await authenticate_mqtt(
        username, data["password"] or "", client_id=client_id, address=data["peerhost"], source="http"
    )
    if principal is None:
        stats.incr("auth_deny")
        logger.info("HTTP broker auth refused %r (client id %r)", username[:64], (client_id or "")[:64])
        return _deny()
    stats.incr("auth_allow")
    return _allow(is_superuser=False)


# -- acl -------------------------------------------------------------------------------------------------

_service_cache = {}  # username -> (monotonic expiry, ServicePrincipal | None), oldest first
_service_lock = threading.Lock()


def _lookup_service_user(username):
    user = permitted_service_user(username)
    return None if user is None else ServicePrincipal(username=user.get_username(), user_id=user.pk)


def _service_principal(username):
    now = time.monotonic()
    cached = _service_cache.get(username)
    if cached is not None and cached[0] > now:
        return cached[1]
    principal = _lookup_service_user(username)
    with _service_lock:
        _service_cache.pop(username, None)
        _service_cache[username] = (now + SERVICE_CACHE_SECONDS, principal)
        while len(_service_cache) > SERVICE_CACHE_SIZE:
            del _service_cache[next(iter(_service_cache))]
    return principal


def clear_service_cache():
    with _service_lock:
        _service_cache.clear()


def principal_for_username(username):
    """The principal an external broker's client with ``username`` has, or None (deny everything).

    Devices are built exactly as ``authenticate_mqtt`` builds them (its ``device_pk`` is unknown here
    and unused by the ACL), without a query."""
    principal = _principal_without_query(username)
    return _service_principal(username) if principal is _SERVICE else principal


_SERVICE = object()  # "a user: ask the database (or the cache)"


def _principal_without_query(username):
    if not username:
        return ANONYMOUS if hub_settings.ALLOW_ANONYMOUS else None
    device_name = parse_device_username(username)
    if device_name is not None:
        type_name, device_id = device_name
        return DevicePrincipal(type_name=type_name, device_id=device_id, device_pk=None, mqtt_username=username)
    if username == TOKEN_USERNAME:
        return ServicePrincipal(username=TOKEN_USERNAME, user_id=None)
    cached = _service_cache.get(username)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return _SERVICE


async def aprincipal_for_username(username):
    """``principal_for_username`` for the event loop: a query (off the loop) only for an uncached user."""
    principal = _principal_without_query(username)
    if principal is _SERVICE:
        return await database_sync_to_async(_service_principal)(username)
    return principal


def _levels_overlap(first, second):
    """True if some topic matches both filters (conservative about ``$`` topics: it says True)."""
    a, b = first.split("/"), second.split("/")
    for index in range(max(len(a), len(b))):
        x = a[index] if index < len(a) else None
        y = b[index] if index < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


def _anonymous_may_receive_all(topic_filter):
    """Every topic ``topic_filter`` can match passes ``can_receive(ANONYMOUS, ...)``."""
    prefix = hub_settings.TOPIC_PREFIX
    if _levels_overlap(topic_filter, prefix) or _levels_overlap(topic_filter, prefix + "/#"):
        return False
    return not any(_levels_overlap(topic_filter, pattern) for pattern in hub_settings.ANONYMOUS_DENY)


def acl_decision(principal, action, topic):
    """The HTTP ACL's answer (see the module docstring for the one difference with ``can_subscribe``)."""
    if principal is None:
        return False
    if action == PUBLISH:
        return can_publish(principal, topic)
    allowed = can_subscribe(principal, topic)
    if allowed and isinstance(principal, AnonymousPrincipal):
        return _anonymous_may_receive_all(topic)
    return allowed


@broker_endpoint
async def broker_acl(request):
    """Authorize a PUBLISH or SUBSCRIBE for an external broker: ``{"result": "allow"|"deny"}``."""
    if not _token_ok(request, "acl"):
        return _deny()
    data = _fields(request, ("username", "topic", "action"))
    action = ACTIONS.get((data or {}).get("action") or "")
    if data is None or action is None or not data["topic"]:
        stats.incr("acl_malformed")
        return _deny()
    try:
        allowed = acl_decision(await aprincipal_for_username(data["username"] or ""), action, data["topic"])
    except Exception:
        logger.exception("HTTP ACL check of %r failed with an internal error; denying", data["username"])
        allowed = False
    stats.incr("acl_allow" if allowed else "acl_deny")
    return _allow() if allowed else _deny()
