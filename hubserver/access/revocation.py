"""``credentials_revoked``: credentials that could authenticate a live session just stopped being valid.

Sent with ``sender=DeviceType, device_id, mqtt_username, reason`` where reason is ``"rotated"`` (new
secrets, by ``provision`` or any other save that changes them), ``"deactivated"`` (``is_active`` went
False) or ``"deleted"``. ``mqtt_username`` and ``device_id`` are the *old* values: the ones a live
session authenticated with. The broker engine listens to drop that session at once; this package's
verifier cache listens to forget the username.

It is internal (not one of the six public signals of ``hubserver.signals``) and detected from the model signals of every
generated Device model, so the admin, the API and plain ``save()`` calls all trigger it. It is sent after
the transaction commits: a device that reconnects the moment it is dropped must already see the new row,
or it would re-authenticate with the old secret. ``bulk_update`` sends no model signals; code that
rotates in bulk (``provision_many``) calls ``revoke`` itself.
"""

import logging

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import Signal

from ..registry import registry
from . import verifier

logger = logging.getLogger("hubserver.access")

# sender (DeviceType), device_id, mqtt_username, reason ("rotated" | "deactivated" | "deleted")
credentials_revoked = Signal()
# sender (DeviceType), device_id, mqtt_username: a deactivated device was made active again (after commit).
access_restored = Signal()

ROTATED = "rotated"
DEACTIVATED = "deactivated"
DELETED = "deleted"

WATCHED_FIELDS = ("device_id", "is_active", "mqtt_username", "mqtt_password_hash", "api_key")
_SNAPSHOT = "_hubserver_credentials_before_save"


def revoke(device_type, device_id, mqtt_username, reason, using=None):
    """Send ``credentials_revoked`` once the current transaction (if any) commits."""

    def send():
        results = credentials_revoked.send_robust(
            sender=device_type, device_id=device_id, mqtt_username=mqtt_username, reason=reason
        )
        for receiver, result in results:
            if isinstance(result, Exception):
                logger.error("credentials_revoked receiver %r failed", receiver, exc_info=result)

    transaction.on_commit(send, using=using)


def _after_commit(signal, device_type, device_id, mqtt_username, using=None):
    def send():
        results = signal.send_robust(sender=device_type, device_id=device_id, mqtt_username=mqtt_username)
        for receiver, result in results:
            if isinstance(result, Exception):
                logger.error("%r failed", receiver, exc_info=result)

    transaction.on_commit(send, using=using)


def _device_type(model):
    return getattr(model, "_device_type_cls", None) or registry.get_by_device_model(model)


def _had_credentials(old):
    return bool(old["mqtt_username"] and (old["mqtt_password_hash"] or old["api_key"]))


def _remember_old_row(sender, instance, raw=False, using=None, update_fields=None, **kwargs):
    """pre_save: read what the row holds now (one query by primary key, only when it can matter)."""
    if raw or instance.pk is None:
        return
    if update_fields is not None and not set(update_fields) & set(WATCHED_FIELDS):
        return  # e.g. the router saving status/last_seen: nothing to compare
    old = sender._base_manager.using(using).filter(pk=instance.pk).values(*WATCHED_FIELDS).first()
    instance.__dict__[_SNAPSHOT] = old


def _compare_and_revoke(sender, instance, created=False, raw=False, using=None, **kwargs):
    """post_save: revoke if the device was just deactivated or its credentials changed."""
    old = instance.__dict__.pop(_SNAPSHOT, None)
    if created or raw or old is None or not _had_credentials(old):
        return
    if not old["is_active"] and instance.is_active:
        _after_commit(access_restored, _device_type(sender), instance.device_id, instance.mqtt_username, using=using)
    if old["is_active"] and not instance.is_active:
        reason = DEACTIVATED
    elif any(old[f] != getattr(instance, f) for f in ("mqtt_username", "mqtt_password_hash", "api_key")):
        reason = ROTATED
    else:
        return
    revoke(_device_type(sender), old["device_id"], old["mqtt_username"], reason, using=using)


def _revoke_deleted(sender, instance, using=None, **kwargs):
    if instance.mqtt_username:
        revoke(_device_type(sender), instance.device_id, instance.mqtt_username, DELETED, using=using)


def _forget_cached(sender, mqtt_username=None, **kwargs):
    verifier.invalidate(mqtt_username)


def connect_revocation_signals():
    """Watch every generated Device model (call from ``AppConfig.ready()``; calling it again is harmless)."""
    for _device_type, device_model, _reading_model, _message_model in registry.all_with_models():
        uid = f"hubserver.access.revocation.{device_model._meta.label}"
        pre_save.connect(_remember_old_row, sender=device_model, dispatch_uid=uid)
        post_save.connect(_compare_and_revoke, sender=device_model, dispatch_uid=uid)
        post_delete.connect(_revoke_deleted, sender=device_model, dispatch_uid=uid)
    credentials_revoked.connect(_forget_cached, dispatch_uid="hubserver.access.revocation.cache")
