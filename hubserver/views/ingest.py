"""``POST /iot/devices/<type>/<device_id>/data/`` and ``.../status/``: device messages over HTTP, for
devices without MQTT, through the same MessageRouter entry point as MQTT (``router.route``, with the kind,
type and device id of the URL; no topic is made): same payload formats, same Message audit rows, same
hooks and signals, same group-commit writer.

Authentication: the device's API key, as ``Authorization: ApiKey <key>`` or ``X-Api-Key: <key>``,
verified against the argon2id hash in ``api_key`` by the process-wide device verifier (off the event loop,
bounded, successes cached; a rotated key misses the cache because the stored hash changed).

Answers (JSON):

| status | when |
|---|---|
| 202 ``{"stored": true, "status": "completed", "message_id": ...}`` | committed, every part of it used |
| 400 ``{"stored": true, "status": "failed", "error": ..., "message_id": ...}`` | committed as failed: invalid
        JSON, a reading of the wrong type or out of range (the valid readings are kept) |
| 401 | no key, or a key that is not this device's |
| 403 | the key is right but the device is inactive |
| 404 | unknown device type or device |
| 413 | body larger than ``MAX_PAYLOAD_SIZE`` (Content-Length is checked before the body is read) |
| 429 | too many wrong keys for this device or from this address lately (``AUTH_FAILURE_LIMIT``): the key was
        not checked; ``Retry-After`` says when to try again |
| 503 | no hub engine in this process (e.g. the admin served without ``hubserver run``), the router is
        stopping, or the batch could not be committed (nothing stored: retry) |

A payload the router cannot use (invalid JSON, a bad field) is still stored, as a Message with
``processing_status=failed`` and the reason (the audit trail), and answered 400 with ``"stored": true``
and the ``error``: the request was bad and must not be sent again unchanged. Both answers come after the
commit, like an MQTT QoS 1 acknowledgement.
"""

import logging

from channels.db import database_sync_to_async
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from ..access.throttle import auth_throttle
from ..access.verifier import device_verifier
from ..conf import hub_settings
from ..hub import running_hub
from ..registry import registry
from ..routing.results import BatchCommitError, Refusal, RouterNotRunning
from ..vocabulary import Kind
from ._common import ViewStats

logger = logging.getLogger("hubserver.ingest")

# Keys: "<kind>:<outcome>" with outcome in completed, failed, unauthorized, forbidden, not_found, too_large,
# unavailable, not_stored, error. Read by hubserver.metrics at scrape time.
stats = ViewStats()

_REFUSAL_STATUS = {
    Refusal.PAYLOAD_TOO_LARGE: (413, "too_large"),
    Refusal.UNKNOWN_TYPE: (404, "not_found"),
    Refusal.UNKNOWN_DEVICE: (404, "not_found"),
    Refusal.INACTIVE_DEVICE: (403, "forbidden"),
    Refusal.BAD_TOPIC: (404, "not_found"),
}


def _error(kind, outcome, status, message, **extra):
    stats.incr(f"{kind}:{outcome}")
    response = JsonResponse({"stored": False, "error": message, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'ApiKey realm="hubserver"'
    return response


def api_key_of(request):
    """The API key from ``Authorization: ApiKey <key>`` or ``X-Api-Key``, or None."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "apikey" and value.strip():
        return value.strip()
    value = request.headers.get("X-Api-Key", "").strip()
    return value or None


def _find_device(model, device_id):
    return (
        model._default_manager.filter(device_id=device_id)
        .only("pk", "device_id", "mqtt_username", "api_key", "is_active")
        .first()
    )


def _declared_length(request):
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


async def _ingest(request, type_name, device_id, kind):
    hub = running_hub()
    router = hub.router if hub is not None else None
    if router is None or not router.running:
        return _error(kind, "unavailable", 503, "no hub is running in this process: start it with `hubserver run`")
    limit = hub_settings.MAX_PAYLOAD_SIZE
    if _declared_length(request) > limit:
        return _error(kind, "too_large", 413, f"payload exceeds MAX_PAYLOAD_SIZE ({limit} bytes)")
    key = api_key_of(request)
    if key is None:
        return _error(kind, "unauthorized", 401, "an API key is required (Authorization: ApiKey <key> or X-Api-Key)")
    device_type = registry.get(type_name)
    models = registry.get_models(type_name) if device_type is not None else None
    if models is None:
        return _error(kind, "not_found", 404, f"unknown device type {type_name!r}")
    # On the loop's thread pool, not in a thread made for this request: its few threads keep their
    # connections, so a burst of requests opens none (hubserver.web.connections).
    device = await database_sync_to_async(_find_device, thread_sensitive=False)(models[0], device_id)
    if device is None:
        return _error(kind, "not_found", 404, f"unknown device {device_id!r}")
    # Wrong keys are throttled like MQTT passwords, under the device's username and the client's address.
    throttle = auth_throttle()
    username = device.mqtt_username or f"{type_name}.{device.device_id}"
    address = request.META.get("REMOTE_ADDR")
    throttled = throttle.throttled(username, address)
    if not await device_verifier.verify(
        device.api_key, key, username=device.mqtt_username, cached_only=throttled is not None
    ):
        if throttled is not None:
            throttle.refuse("ingest", throttled)
            response = _error(kind, "throttled", 429, "too many wrong API keys lately: retry later")
            response["Retry-After"] = str(int(hub_settings.AUTH_FAILURE_WINDOW))
            return response
        throttle.failed(username, address, "ingest")
        return _error(kind, "unauthorized", 401, "invalid API key")
    if not device.is_active:
        return _error(kind, "forbidden", 403, "the device is inactive")
    payload = request.read(limit + 1)  # bounded even without a Content-Length (chunked)
    if len(payload) > limit:
        return _error(kind, "too_large", 413, f"payload exceeds MAX_PAYLOAD_SIZE ({limit} bytes)")
    type_key = device_type.type_name()
    client_id = f"http:{device.mqtt_username or type_key + '.' + device.device_id}"
    try:
        # verified: we just read the row (it exists and is active), so a cached "unknown"/"inactive" from
        # before another process created or re-activated it is stale.
        result = await router.route(
            kind, type_key, device.device_id, payload, qos=1, client_id=client_id, verified=True
        )
    except (RouterNotRunning, BatchCommitError) as exc:
        return _error(kind, "unavailable", 503, f"not stored, retry later: {exc}")
    except Exception:
        logger.exception("HTTP %s message of %s/%s failed", kind, type_key, device.device_id)
        return _error(kind, "error", 500, "internal error: not stored")
    if not result.stored:
        status, outcome = _REFUSAL_STATUS.get(result.reason, (422, "not_stored"))
        return _error(kind, outcome, status, result.error or str(result.reason), reason=result.reason)
    stats.incr(f"{kind}:{result.processing_status or 'completed'}")
    body = {
        "stored": True,
        "status": result.processing_status,
        "error": result.error,
        "message_id": result.message_id,
    }
    if kind == Kind.DATA:
        body["reading_id"] = result.reading_id
        body["readings"] = result.readings
    elif result.new_status is not None:
        body["device_status"] = result.new_status
    return JsonResponse(body, status=400 if result.processing_status == "failed" else 202)


@csrf_exempt
@require_POST
async def device_data(request, type_name, device_id):
    """A data message (flat or ``readings``-list format) of one device."""
    return await _ingest(request, type_name, device_id, Kind.DATA)


@csrf_exempt
@require_POST
async def device_status(request, type_name, device_id):
    """A status message (``{"status": ..., "battery_level": ..., "firmware_version": ...}``) of one device."""
    return await _ingest(request, type_name, device_id, Kind.STATUS)
