"""CONNECT authentication, shared by the embedded broker's auth plugin (async) and the HTTP endpoint an
external broker calls (sync). Both return a principal, or None to refuse; neither ever raises.

Usernames:

- ``{type}.{device_id}`` (``thermometer.kitchen-1``): a device. ``type`` is the registry's normalized
  name, which never contains a dot, so the part before the first dot picks exactly one Device model and
  one indexed query on its unique ``mqtt_username`` finds the row. Such usernames never fall through
  to Django users.
- ``token`` with a DRF token key as the password: the token's user, as a service client. (Consequently a
  Django user literally named ``token`` can only connect with a token.)
- any other username with that user's Django password: a service client.
- empty (or absent): anonymous, only if ``ALLOW_ANONYMOUS``.

Client ids: a device must connect with its username as client id (as ``hubserver provision`` prints), or
an empty one; no other client may use an id shaped like a device username. MQTT lets a new connection
with a taken client id evict the old one and resume its session, so without this rule any client could
knock a device off the hub or take over its queued commands.

A service client's user must be active and hold ``hubserver.mqtt_service`` (superusers hold every
permission). Database work runs off the loop; device rows are looked up in batches, so when many devices
connect at once their CONNECTs share a few ``IN (...)`` queries instead of queueing one query each on the
database thread (``DeviceLookups``); argon2 runs in the device verifier's pool; Django password
checks run in their own one-thread pool (never Django's ``acheck_password``, which hashes on the loop), so
a flood of bad service logins cannot delay devices. Unknown or unauthorised service usernames still pay
one decoy password check, so response time does not tell which usernames exist. Device usernames get no
decoy: they are derived from device ids and not secret, and skipping the hash keeps floods of unknown
usernames from costing argon2 time that reconnecting devices need.

Failures are throttled per username and per source address (``hubserver.access.throttle``): a throttled
attempt is refused without hashing and, for service users and tokens, without a query; only a device
secret the verifier already accepted gets in while its username or address is throttled.
"""

import asyncio
import logging
import secrets
import weakref
from typing import NamedTuple

from channels.db import database_sync_to_async

from ..conf import hub_settings
from ..logsafe import clip
from ..registry import registry
from .principals import ANONYMOUS, DevicePrincipal, ServicePrincipal
from .throttle import auth_throttle
from .verifier import device_verifier, service_verifier

logger = logging.getLogger("hubserver.access")

TOKEN_USERNAME = "token"
SERVICE_PERMISSION = "hubserver.mqtt_service"

_decoy = {}


def parse_device_username(username):
    """``(type_name, device_id)`` if ``username`` names a registered type with models, else None."""
    type_name, dot, device_id = username.partition(".")
    if not dot or not type_name or not device_id:
        return None
    if type_name not in registry._models:  # exact normalized spelling: that is how usernames are issued
        return None
    return type_name, device_id


def _as_text(value):
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8")  # invalid UTF-8 raises: caught by the callers
    return str(value)


# -- synchronous database steps (called directly by the sync path, via sync_to_async by the async one) --


class DeviceRow(NamedTuple):
    """What authentication reads of a device row."""

    pk: int
    device_id: str
    mqtt_username: str
    mqtt_password_hash: str | None
    is_active: bool


# Usernames per query: far below the bound-parameter limits of SQLite (999 in old builds) and the others.
LOOKUP_CHUNK = 500


def _find_devices(keys):
    """``{(type_name, username): DeviceRow}`` for the given keys that name a row, in one indexed query per
    type and ``LOOKUP_CHUNK`` usernames (``mqtt_username`` is unique)."""
    by_type = {}
    for type_name, username in keys:
        by_type.setdefault(type_name, set()).add(username)
    found = {}
    for type_name, usernames in by_type.items():
        device_model = registry.get_models(type_name)[0]
        usernames = sorted(usernames)
        for start in range(0, len(usernames), LOOKUP_CHUNK):
            rows = device_model._default_manager.filter(mqtt_username__in=usernames[start : start + LOOKUP_CHUNK])
            for row in rows.values_list(*DeviceRow._fields):
                row = DeviceRow(*row)
                found[(type_name, row.mqtt_username)] = row
    return found


def _find_device(type_name, username):
    return _find_devices([(type_name, username)]).get((type_name, username))


def permitted_service_user(username):
    """The active Django user with this username holding ``hubserver.mqtt_service``, else None (one query)."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    try:
        user = user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        return None
    return user if user.is_active and user.has_perm(SERVICE_PERMISSION) else None


def _find_service_user(username):
    """``(user_id, username, password_hash)`` of an active user allowed to connect, else None."""
    user = permitted_service_user(username)
    if user is None or not user.has_usable_password():
        return None
    return user.pk, user.get_username(), user.password


def _find_token_user(key):
    """``(user_id, username)`` of the token's user if it is active and allowed to connect, else None."""
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None:
        return None
    user = token.user
    if not user.is_active or not user.has_perm(SERVICE_PERMISSION):
        return None
    return user.pk, user.get_username()


def _decoy_check(password):
    """Spend what a real password check costs, against a hash of a random string made once (in a worker
    thread, like every hashing here). Always False."""
    from django.contrib.auth.hashers import check_password, make_password

    if "hash" not in _decoy:
        _decoy["hash"] = make_password(secrets.token_urlsafe(32))
    check_password(password, _decoy["hash"])
    return False


def _device_principal(type_name, device, username):
    return DevicePrincipal(type_name=type_name, device_id=device.device_id, device_pk=device.pk, mqtt_username=username)


def _anonymous():
    if hub_settings.ALLOW_ANONYMOUS:
        return ANONYMOUS
    logger.info("refused anonymous MQTT connection (ALLOW_ANONYMOUS is off)")
    return None


# -- async (the embedded broker, on the event loop) -----------------------------------------------------


class DeviceLookups:
    """Device-row lookups for one event loop, shared by the CONNECTs waiting at the same time.

    A lookup waits for the next query and is answered by it; while a query runs, the lookups that arrive
    meanwhile gather for the following one. One client alone therefore costs what it did (one query), and
    a reconnect storm costs one query per batch instead of one trip through the single database thread per
    device. A row is never older than its lookup: every query starts after the lookups it answers arrived,
    so a rotation or deactivation committed before a CONNECT is seen by it.
    """

    def __init__(self):
        self._waiting = {}  # (type_name, username) -> [future, ...]
        self._task = None
        self.batches = 0  # for tests and curiosity

    async def find(self, type_name, username):
        """The DeviceRow of ``username`` (a device username of ``type_name``), or None."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((type_name, username), []).append(future)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return await future

    async def _run(self):
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, {}
                self.batches += 1
                try:
                    found, error = await database_sync_to_async(_find_devices)(list(batch)), None
                except Exception as exc:
                    found, error = {}, exc
                except BaseException:  # cancelled: the loop is going away, and every lookup with it
                    for futures in (*batch.values(), *self._waiting.values()):
                        for future in futures:
                            future.cancel()
                    self._waiting = {}
                    raise
                for key, futures in batch.items():
                    for future in futures:
                        if future.done():  # its client has gone meanwhile
                            continue
                        if error is None:
                            future.set_result(found.get(key))
                        else:
                            future.set_exception(error)
        finally:
            self._task = None


_lookups = weakref.WeakKeyDictionary()  # event loop -> DeviceLookups


def device_lookups():
    """The running loop's DeviceLookups."""
    loop = asyncio.get_running_loop()
    lookups = _lookups.get(loop)
    if lookups is None:
        lookups = _lookups[loop] = DeviceLookups()
    return lookups


def client_id_allowed(principal, client_id):
    """May ``principal`` use ``client_id``? Empty ids (the broker assigns one) are always fine."""
    if not client_id:
        return True
    if isinstance(principal, DevicePrincipal):
        return client_id == principal.mqtt_username
    return parse_device_username(client_id) is None


def client_id_refusal(principal, client_id, username):
    """Why ``principal`` (who logged in as ``username``) may not use ``client_id``, or None when it may."""
    if principal is None or client_id is None or client_id_allowed(principal, client_id):
        return None
    if isinstance(principal, DevicePrincipal):
        return (
            f"refused MQTT connection of {clip(username)}: a device's client id must equal its username "
            f"({clip(principal.mqtt_username)}), got {clip(client_id)}"
        )
    return (
        f"refused MQTT connection of {clip(username)}: client id {clip(client_id)} is the username of a device, "
        "which only that device may use; connect with another client id"
    )


def _checked(principal, client_id, username, refusal):
    """``principal``, or None when its client id is refused: the reason goes into ``refusal["client_id"]``
    when the caller passed a dict (it logs and answers it), else into the log."""
    reason = client_id_refusal(principal, client_id, username)
    if reason is None:
        return principal
    if refusal is not None:
        refusal["client_id"] = reason
    else:
        logger.warning("%s", reason)
    return None


def _counted(throttle, throttled, principal, username, address, source):
    """Count a refused attempt: unchecked (throttled) or a failure (which may throttle its keys)."""
    if principal is None and username:
        if throttled is not None:
            throttle.refuse(source, throttled)
        else:
            throttle.failed(username, address, source)
    return principal


async def authenticate_mqtt(username, password, client_id=None, address=None, source="mqtt", refusal=None):
    """The principal for a CONNECT with ``username``/``password``, or None to refuse. Never raises.

    With ``client_id`` (the CONNECT's), the client-id rule above is enforced too; ``address`` (the client's
    IP) is what failures are throttled by, with the username. A caller that passes a dict as ``refusal``
    learns there why a client id was refused (``refusal["client_id"]``), to answer and log it itself."""
    try:
        username = _as_text(username)
        throttle = auth_throttle()
        throttled = throttle.throttled(username, address)
        principal = await _authenticate(username, _as_text(password), throttled=throttled is not None)
        _counted(throttle, throttled, principal, username, address, source)
        return _checked(principal, _as_text(client_id), username, refusal)
    except Exception:
        logger.exception("MQTT authentication of %r failed with an internal error; refusing", str(username)[:64])
        return None


async def _authenticate(username, password, throttled=False):
    if not username:
        return _anonymous()
    if not password:
        return None
    device_name = parse_device_username(username)
    if device_name is not None:
        type_name, _ = device_name
        device = await device_lookups().find(type_name, username)
        if device is None or not device.is_active or not device.mqtt_password_hash:
            return None
        if not await device_verifier.verify(
            device.mqtt_password_hash, password, username=username, cached_only=throttled
        ):
            return None
        return _device_principal(type_name, device, username)
    if throttled:  # service users and tokens: no query, no hash
        return None
    if username == TOKEN_USERNAME:
        found = await database_sync_to_async(_find_token_user)(password)
        return ServicePrincipal(username=found[1], user_id=found[0]) if found else None
    found = await database_sync_to_async(_find_service_user)(username)
    if found is None:
        await service_verifier.run(_decoy_check, password)
        return None
    user_id, user_name, password_hash = found
    if not await service_verifier.verify(password_hash, password, username=username):
        return None
    return ServicePrincipal(username=user_name, user_id=user_id)


# -- sync twin (the HTTP auth endpoint for an external broker) -----------------------------------------


def authenticate_mqtt_sync(username, password, client_id=None, address=None, source="http"):
    """The same decision for synchronous callers (e.g. ``POST /iot/broker/auth/``). Never raises."""
    try:
        username = _as_text(username)
        throttle = auth_throttle()
        throttled = throttle.throttled(username, address)
        principal = _authenticate_sync(username, _as_text(password), throttled=throttled is not None)
        _counted(throttle, throttled, principal, username, address, source)
        return _checked(principal, _as_text(client_id), username, None)
    except Exception:
        logger.exception("MQTT authentication of %r failed with an internal error; refusing", str(username)[:64])
        return None


def _authenticate_sync(username, password, throttled=False):
    if not username:
        return _anonymous()
    if not password:
        return None
    device_name = parse_device_username(username)
    if device_name is not None:
        type_name, _ = device_name
        device = _find_device(type_name, username)
        if device is None or not device.is_active or not device.mqtt_password_hash:
            return None
        if not device_verifier.verify_sync(
            device.mqtt_password_hash, password, username=username, cached_only=throttled
        ):
            return None
        return _device_principal(type_name, device, username)
    if throttled:
        return None
    if username == TOKEN_USERNAME:
        found = _find_token_user(password)
        return ServicePrincipal(username=found[1], user_id=found[0]) if found else None
    found = _find_service_user(username)
    if found is None:
        service_verifier.run_sync(_decoy_check, password)
        return None
    user_id, user_name, password_hash = found
    if not service_verifier.verify_sync(password_hash, password, username=username):
        return None
    return ServicePrincipal(username=user_name, user_id=user_id)
