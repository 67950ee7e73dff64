"""The device cache: (type, device_id) -> active Device instance, so routing costs no query per message.

Misses are loaded in the router's ORM thread, a whole batch at a time (one ``IN`` query per model).
Unknown and inactive devices are cached too (bounded), so a misbehaving client cannot cause a query per
message. Entries are dropped on ``post_save``/``post_delete`` of the generated Device models (and again
on commit of the saving transaction), so deactivating a device takes effect for queued messages too.
The cached instance is the device's live in-memory state (status, last_seen): the writer keeps it current.
"""

import threading
import time

from django.db import transaction
from django.db.models.signals import post_delete, post_save

from ..vocabulary import DeviceStatus
from .results import Refusal

UNKNOWN = Refusal.UNKNOWN_DEVICE
INACTIVE = Refusal.INACTIVE_DEVICE
_CHUNK = 500  # device ids per IN query: well under every backend's parameter limit


def device_key(device_type, device_id):
    return (device_type.type_name(), device_id)


class DeviceCache:
    """Thread-safe enough for one writer thread, the event loop, and signal receivers in any thread."""

    max_negative = 10_000
    # A device created or re-activated by another process (``hubserver provision`` next to a running hub)
    # sends no signal here: an "unknown"/"inactive" answer is trusted only this long.
    negative_ttl = 30.0
    # With several hub processes writing the same devices (workers on an external broker), a cached device
    # is read again after this many seconds: another process may have deactivated it, changed its status
    # or marked it offline. None: cached until a signal of this process says it changed.
    positive_ttl = None

    def __init__(self):
        self._lock = threading.Lock()
        self._devices = {}  # key -> Device instance
        self._negative = {}  # key -> (UNKNOWN | INACTIVE, monotonic expiry), oldest first
        self._keys_by_pk = {}  # (model, pk) -> key, to find an entry whose device_id was renamed
        self._loaded_at = {}  # key -> monotonic time the cached device was read (only with positive_ttl)
        self._generation = 0
        self._models = []

    def peek(self, key):
        """The cached Device, UNKNOWN or INACTIVE; None on a miss. A dict read: safe on the event loop."""
        device = self._devices.get(key)
        if device is not None:
            if self.positive_ttl is not None and self._loaded_at.get(key, 0.0) + self.positive_ttl < time.monotonic():
                return None  # stale: the next batch reads it again
            return device
        negative = self._negative.get(key)
        if negative is None:
            return None
        if negative[1] < time.monotonic():
            self._negative.pop(key, None)
            return None
        return negative[0]

    def load(self, wanted):
        """Load ``{key: DeviceModel}`` from the database (ORM thread); returns ``{key: Device | reason}``."""
        generation = self._generation
        by_model = {}
        for key, model in wanted.items():
            by_model.setdefault(model, []).append(key[1])
        found = {}
        pks = {}
        for model, ids in by_model.items():
            type_key = model._device_type_cls.type_name()
            for start in range(0, len(ids), _CHUNK):
                for device in model.objects.filter(device_id__in=ids[start : start + _CHUNK]):
                    key = (type_key, device.device_id)
                    found[key] = device if device.is_active else INACTIVE
                    pks[(model, device.pk)] = key
        result = {key: found.get(key, UNKNOWN) for key in wanted}
        self._store(result, generation, pks)
        return result

    def load_online(self, models):
        """Cache every active device the database says is online (ORM thread); returns their keys."""
        generation = self._generation
        loaded = {}
        for model in models:
            type_key = model._device_type_cls.type_name()
            for device in model.objects.filter(status=DeviceStatus.ONLINE, is_active=True):
                loaded[(type_key, device.device_id)] = device
        self._store(loaded, generation, {(type(d), d.pk): key for key, d in loaded.items()})
        return list(loaded)

    def _store(self, loaded, generation, pks):
        with self._lock:
            if generation != self._generation:
                return  # a device changed while we were reading: the next batch reloads
            now = time.monotonic()
            for key, value in loaded.items():
                if isinstance(value, str):
                    self._devices.pop(key, None)
                    self._negative.pop(key, None)
                    self._negative[key] = (value, now + self.negative_ttl)
                else:
                    self._devices[key] = value
                    self._loaded_at[key] = now
            self._keys_by_pk.update(pks)
            while len(self._negative) > self.max_negative:
                del self._negative[next(iter(self._negative))]

    def invalidate(self, key, pk_key=None):
        with self._lock:
            self._generation += 1
            for k in (key, self._keys_by_pk.pop(pk_key, None)):
                if k is not None:
                    self._devices.pop(k, None)
                    self._negative.pop(k, None)
                    self._loaded_at.pop(k, None)

    def clear(self):
        with self._lock:
            self._generation += 1
            self._devices.clear()
            self._negative.clear()
            self._keys_by_pk.clear()
            self._loaded_at.clear()

    def connect(self, device_models):
        """Invalidate on saves and deletes of these Device models (call once, from start())."""
        for model in device_models:
            post_save.connect(self._on_change, sender=model, weak=False, dispatch_uid=self._uid(model))
            post_delete.connect(self._on_change, sender=model, weak=False, dispatch_uid=self._uid(model))
            self._models.append(model)

    def disconnect(self):
        for model in self._models:
            post_save.disconnect(sender=model, dispatch_uid=self._uid(model))
            post_delete.disconnect(sender=model, dispatch_uid=self._uid(model))
        self._models.clear()

    def _uid(self, model):
        return f"hubserver.routing.devices.{id(self)}.{model._meta.label}"

    def _on_change(self, sender, instance, using=None, **kwargs):
        key = (sender._device_type_cls.type_name(), instance.device_id)
        pk_key = (sender, instance.pk)
        self.invalidate(key, pk_key)
        # A reload before the saving transaction commits would read the old row: drop it again then.
        transaction.on_commit(lambda: self.invalidate(key, pk_key), using=using)
