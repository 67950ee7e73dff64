"""Provisioning: give a device fresh credentials, store only their argon2id hashes, show them once.

``provision`` (re)issues ``mqtt_username`` (``{type}.{device_id}``), a random MQTT password and a random API
key; provisioning again rotates them, and the old ones stop verifying at once (the verifier's cache is
keyed on the stored hash). The save and the ``device_provisioned`` signal run in one transaction: if a
receiver (say, one storing the secrets in a vault) fails, the rotation is rolled back and the old
credentials stay valid, rather than leaving a device whose new secrets nobody ever saw.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from ..conf import hub_settings
from ..endpoints import public_endpoints
from ..exceptions import ValidationError
from ..registry import registry
from ..signals import device_provisioned
from ..vocabulary import device_topics, is_topic_level
from .hashing import generate_secret, hash_secret
from .revocation import ROTATED, revoke
from .verifier import default_concurrency

CREDENTIAL_FIELDS = ("mqtt_username", "mqtt_password_hash", "api_key")
BULK_BATCH_SIZE = 500


class Provisioned(NamedTuple):
    """One result of ``provision_many``: ``rotated`` is True if the device had credentials before."""

    device: object
    credentials: dict
    rotated: bool


def device_type_of(device):
    """The DeviceType of a Device instance or model."""
    model = device if isinstance(device, type) else type(device)
    device_type = getattr(model, "_device_type_cls", None) or registry.get_by_device_model(model)
    if device_type is None:
        raise ValidationError(f"{model.__name__} is not a generated Device model of a registered DeviceType")
    return device_type


def device_username(device_type, device_id, device_model=None):
    """``{type}.{device_id}``; raises ValidationError if the id cannot appear in topics or is too long."""
    if not is_topic_level(device_id):
        raise ValidationError(
            f"device id {device_id!r} cannot be used in MQTT topics: it must be non-empty and contain no "
            "'/', '+', '#' or NUL character"
        )
    username = f"{device_type.type_name()}.{device_id}"
    model = device_model or device_type._device_model
    max_length = model._meta.get_field("mqtt_username").max_length if model is not None else None
    if max_length and len(username) > max_length:
        raise ValidationError(
            f"MQTT username {username!r} is longer than {max_length} characters; use a shorter device id"
        )
    return username


def _new_secrets():
    """``(password, api_key, password_hash, api_key_hash)``: the slow part, safe to run in threads."""
    password, api_key = generate_secret(), generate_secret()
    return password, api_key, hash_secret(password), hash_secret(api_key)


def _apply(device, username, made):
    password, api_key, password_hash, api_key_hash = made
    device.mqtt_username = username
    device.mqtt_password_hash = password_hash
    device.api_key = api_key_hash
    return {"mqtt_username": username, "mqtt_password": password, "api_key": api_key}


def provision(device):
    """Issue new credentials to ``device`` (saved or not), save it, fire ``device_provisioned``, and
    return ``{"mqtt_username", "mqtt_password", "api_key"}`` in plaintext: the only time they exist."""
    device_type = device_type_of(device)
    username = device_username(device_type, device.device_id, type(device))
    credentials = _apply(device, username, _new_secrets())
    with transaction.atomic(using=device._state.db):
        if device._state.adding or device.pk is None:
            device.save()
        else:
            device.save(update_fields=[*CREDENTIAL_FIELDS, "updated_at"])
        device_provisioned.send(sender=device_type, device=device, credentials=dict(credentials))
    return credentials


async def aprovision(device):
    """``provision`` from async code: the hashing and the save run off the event loop."""
    return await database_sync_to_async(provision)(device)


def provision_many(device_type, device_ids, *, names=None, workers=None, progress=None):
    """Create or rotate many devices of one type: hashing in a small thread pool, then bulk writes in one
    transaction. Returns ``[Provisioned(device, credentials, rotated), ...]`` in the order of ``device_ids``.

    ``names`` maps device ids to names for the devices created; ``progress(n)`` is called as secrets are
    made. Existing devices are rotated (``credentials_revoked`` is sent for them after commit).
    """
    device_model = device_type._device_model
    if device_model is None:
        raise ValidationError(f"{device_type.__name__} has no models; call create_models() in an app's models.py")
    device_ids = list(dict.fromkeys(device_ids))
    usernames = [device_username(device_type, device_id, device_model) for device_id in device_ids]
    names = names or {}

    existing = {}
    for start in range(0, len(device_ids), BULK_BATCH_SIZE):
        chunk = device_ids[start : start + BULK_BATCH_SIZE]
        existing.update({d.device_id: d for d in device_model._default_manager.filter(device_id__in=chunk)})

    made = []
    with ThreadPoolExecutor(max_workers=workers or default_concurrency(), thread_name_prefix="hubserver-prov") as pool:
        for result in pool.map(lambda _: _new_secrets(), device_ids):
            made.append(result)
            if progress is not None:
                progress(1)

    now = timezone.now()
    results, to_create, to_update, rotated = [], [], [], []
    for device_id, username, secrets_made in zip(device_ids, usernames, made, strict=True):
        device = existing.get(device_id)
        had_credentials = False
        if device is None:
            device = device_model(device_id=device_id, name=names.get(device_id, ""))
            to_create.append(device)
        else:
            had_credentials = bool(device.mqtt_username and (device.mqtt_password_hash or device.api_key))
            if had_credentials:
                rotated.append((device.device_id, device.mqtt_username))
            device.updated_at = now
            to_update.append(device)
        results.append(Provisioned(device, _apply(device, username, secrets_made), had_credentials))

    from ..brokers.accounts import batch

    with transaction.atomic(), batch():  # an external broker's accounts: a few messages, not one per device
        device_model._default_manager.bulk_create(to_create, batch_size=BULK_BATCH_SIZE)
        device_model._default_manager.bulk_update(
            to_update, [*CREDENTIAL_FIELDS, "updated_at"], batch_size=BULK_BATCH_SIZE
        )
        for device_id, old_username in rotated:
            revoke(device_type, device_id, old_username, ROTATED)
        for device, credentials, _ in results:
            device_provisioned.send(sender=device_type, device=device, credentials=dict(credentials))
    return results


def connection_endpoints(device_type=None):
    """``host``, ``mqtt_port``, ``mqtt_tls_port`` (None without TLS) and ``websocket_url`` devices connect to:
    ``device_type``'s ``Meta.broker`` when that is an external broker (then only its host and port, on the
    TLS key when it uses TLS), else this hub's embedded broker."""
    from ..conf import EMBEDDED_ENGINE, hub_settings

    entry = hub_settings.BROKERS.get(device_type._meta.broker) if device_type is not None else None
    if entry is not None and entry["ENGINE"] != EMBEDDED_ENGINE:
        tls = entry["USE_TLS"]
        return {
            "host": entry["HOST"],
            "mqtt_port": None if tls else entry["PORT"],
            "mqtt_tls_port": entry["PORT"] if tls else None,
            "websocket_url": None,
        }
    endpoints = public_endpoints()
    return {
        "host": endpoints.host,
        "mqtt_port": endpoints.mqtt_port,
        "mqtt_tls_port": endpoints.mqtt_tls_port,
        "websocket_url": endpoints.websocket_url,
    }


def connection_info(device, credentials):
    """Everything a device (or its installer) needs, as printed by ``hubserver provision``."""
    device_type = device_type_of(device)
    type_name = device_type.type_name()
    return {
        "device_id": device.device_id,
        "device_type": type_name,
        "client_id": credentials["mqtt_username"],
        "mqtt_username": credentials["mqtt_username"],
        "mqtt_password": credentials["mqtt_password"],
        "api_key": credentials["api_key"],
        **connection_endpoints(device_type),
        "topics": device_topics(hub_settings.TOPIC_PREFIX, type_name, device.device_id),
    }
