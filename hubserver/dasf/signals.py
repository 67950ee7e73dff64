"""Changes in this process that the permission snapshot must follow, and the clean-up of a deleted topic's
object permissions (django-guardian's rows point at objects by id, without a foreign key).

``connect(callback)`` calls ``callback()`` (from whatever thread saved) after a change to a topic, an object
permission on a topic, a user's superuser or active flag, a group membership or a global DASF permission.
Writes the broker makes itself run inside ``suppressed()``: it updates its snapshot directly.
"""

import threading
from contextlib import contextmanager

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.signals import setting_changed
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

_callbacks = []
_grant_callbacks = []
_topic_callbacks = []
_settings_callbacks = []
_local = threading.local()


def connect(callback):
    if callback not in _callbacks:
        _callbacks.append(callback)


def disconnect(callback):
    if callback in _callbacks:
        _callbacks.remove(callback)


def connect_grants(callback):
    """``callback(granted, "user" | "group", holder id, codename, object pk)`` after an object permission on a
    topic was committed (granted or taken), in the thread that saved it."""
    if callback not in _grant_callbacks:
        _grant_callbacks.append(callback)


def disconnect_grants(callback):
    if callback in _grant_callbacks:
        _grant_callbacks.remove(callback)


def connect_topics(callback):
    """``callback(row, saved)`` after a topic was committed: saved (``row`` as ``grants.TOPIC_FIELDS``) or
    deleted (``row`` is ``(pk,)``), in the thread that saved it."""
    if callback not in _topic_callbacks:
        _topic_callbacks.append(callback)


def disconnect_topics(callback):
    if callback in _topic_callbacks:
        _topic_callbacks.remove(callback)


def connect_settings(callback):
    """``callback()`` after a ``DASF_STORE_*`` setting changed (``override_settings``), in that thread."""
    if callback not in _settings_callbacks:
        _settings_callbacks.append(callback)


def disconnect_settings(callback):
    if callback in _settings_callbacks:
        _settings_callbacks.remove(callback)


def _setting_changed(setting, **kwargs):
    if setting.startswith("DASF_STORE_"):
        for callback in tuple(_settings_callbacks):
            callback()


@contextmanager
def suppressed():
    """Changes made inside (in this thread) do not mark the snapshot stale."""
    _local.suppressed = getattr(_local, "suppressed", 0) + 1
    try:
        yield
    finally:
        _local.suppressed -= 1


def _changed():
    if getattr(_local, "suppressed", 0):
        return
    # After the commit: the snapshot is read on another connection, which must see the change.
    transaction.on_commit(_notify)


def _notify():
    for callback in tuple(_callbacks):
        callback()


def _topic_changed(sender, instance, **kwargs):
    if getattr(_local, "suppressed", 0):
        return
    row = (
        instance.pk,
        instance.slug,
        instance.is_public,
        instance.supports_dasf,
        instance.store_messages,
        getattr(instance, "brokertopic_ptr_id", None),
        getattr(instance, "is_response_for_id", None),
    )
    transaction.on_commit(lambda: _notify_topic(row, True))
    _changed()


def _notify_topic(row, saved):
    for callback in tuple(_topic_callbacks):
        callback(row, saved)


def _topic_deleted(sender, instance, **kwargs):
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from .grants import _content_type

    content_type = _content_type()
    for model in (UserObjectPermission, GroupObjectPermission):
        model.objects.filter(content_type=content_type, object_pk=str(instance.pk)).delete()
    if not getattr(_local, "suppressed", 0):
        row = (instance.pk,)
        transaction.on_commit(lambda: _notify_topic(row, False))
    _changed()


def _object_permission_changed(sender, instance, signal=None, **kwargs):
    from guardian.models import UserObjectPermission

    from .models import BrokerTopic, ResponseTopic

    if instance.content_type.model_class() not in (BrokerTopic, ResponseTopic):
        return
    if getattr(_local, "suppressed", 0):
        return
    granted = signal is post_save
    holder = ("user", instance.user_id) if isinstance(instance, UserObjectPermission) else ("group", instance.group_id)
    change = (granted, *holder, instance.permission.codename, instance.object_pk)
    # Once committed, and before the caller goes on: the grant (or revocation) is in the snapshot at once,
    # so a client that connects next is decided with it; the full reload follows.
    transaction.on_commit(lambda: _notify_grant(change))
    _changed()


def _notify_grant(change):
    for callback in tuple(_grant_callbacks):
        callback(*change)


def _user_saved(sender, instance, update_fields=None, **kwargs):
    if update_fields is not None and set(update_fields) <= {"last_login", "password"}:
        return  # a login: nothing the snapshot reads
    _changed()


def _any_change(sender, **kwargs):
    _changed()


def install():
    """Connect the receivers (once, from the app config)."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from .models import BrokerTopic, ResponseTopic

    user_model = get_user_model()
    for model in (BrokerTopic, ResponseTopic):
        post_save.connect(_topic_changed, sender=model, dispatch_uid=f"dasf-topic-saved-{model.__name__}")
        post_delete.connect(_topic_deleted, sender=model, dispatch_uid=f"dasf-topic-deleted-{model.__name__}")
    for model in (UserObjectPermission, GroupObjectPermission):
        post_save.connect(_object_permission_changed, sender=model, dispatch_uid=f"dasf-perm-saved-{model.__name__}")
        post_delete.connect(
            _object_permission_changed, sender=model, dispatch_uid=f"dasf-perm-deleted-{model.__name__}"
        )
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="dasf-user-saved")
    post_delete.connect(_any_change, sender=user_model, dispatch_uid="dasf-user-deleted")
    post_delete.connect(_any_change, sender=Group, dispatch_uid="dasf-group-deleted")
    for through in (user_model.groups.through, user_model.user_permissions.through, Group.permissions.through):
        m2m_changed.connect(_any_change, sender=through, dispatch_uid=f"dasf-m2m-{through.__name__}")
    setting_changed.connect(_setting_changed, dispatch_uid="dasf-settings")
