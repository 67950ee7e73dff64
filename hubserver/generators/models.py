"""``create_models()``: the three concrete models of a DeviceType, built with ``type()`` on the abstract bases."""

import hashlib
import inspect
import sys

from django.apps import apps
from django.db import models
from django.db.models import Q

from ..exceptions import ConfigurationError
from ..fields import AuditPayloadField
from ..models import BaseDevice, BaseMessage, BaseReading, BaseRollup
from ..registry import registry

RESERVED_READING_NAMES = {f.name for f in BaseReading._meta.local_fields} | {"id", "device", "device_id", "pk"}
RESERVED_DEVICE_NAMES = {f.name for f in BaseDevice._meta.local_fields} | {"id", "pk", "readings", "messages"}


def _caller_module(depth=1):
    """``__name__`` of the module ``depth`` frames above the caller; Django uses it to pick the model's app."""
    frame = inspect.currentframe().f_back
    for _ in range(depth):
        frame = frame.f_back
    return frame.f_globals["__name__"]


def _check_names(device_type):
    for names, reserved, kind in (
        (device_type._readings, RESERVED_READING_NAMES, "Reading"),
        (device_type._state_fields, RESERVED_DEVICE_NAMES, "StateField"),
    ):
        clash = sorted(set(names) & reserved)
        if clash:
            raise ConfigurationError(
                f"{device_type.__name__}: {kind} name(s) {', '.join(clash)} clash with built-in fields"
            )


def create_models(device_type, module=None):
    """Return ``(Device, Reading, Message)`` for ``device_type``, defined in ``module`` (default: the caller).

    A type with numeric Readings also gets ``<Type>Rollup`` (``device_type.get_rollup_model()``), its
    downsampled history. Calling it again for the same type and module returns the models already made, so
    re-imports are safe.
    """
    module = module or _caller_module()
    if device_type._device_model is not None and device_type._device_model.__module__ == module:
        return device_type.get_models()
    _check_names(device_type)
    base = device_type.__name__
    options = device_type._meta
    app_label = _app_label(module)

    def build(suffix, parent, fields, meta):
        name = f"{base}{suffix}"
        existing = _existing_model(app_label, name)
        if existing is not None and existing.__module__ == module:
            return existing
        attrs = {"__module__": module, "__qualname__": name, "Meta": type("Meta", (parent.Meta,), meta), **fields}
        return type(name, (parent,), attrs)

    device_fields = {name: field.to_django_field() for name, field in device_type._state_fields.items()}
    device_fields["_device_type_cls"] = device_type
    device_model = build(
        "Device",
        BaseDevice,
        device_fields,
        {
            "verbose_name": options.verbose_name,
            "verbose_name_plural": options.verbose_name_plural,
        },
    )

    reading_fields = {
        # No index of its own: the (device, timestamp) index starts with the device.
        "device": models.ForeignKey(device_model, on_delete=models.CASCADE, related_name="readings", db_index=False),
        **{name: reading.to_django_field() for name, reading in device_type._readings.items()},
    }
    reading_model = build(
        "Reading",
        BaseReading,
        reading_fields,
        {
            "verbose_name": f"{options.verbose_name} reading",
            "indexes": [models.Index(fields=["device", "timestamp"], name=_index_name(base, "reading_dev_ts"))],
        },
    )

    message_fields = {
        "device": models.ForeignKey(device_model, on_delete=models.CASCADE, related_name="messages"),
    }
    message_model = build(
        "Message",
        BaseMessage,
        message_fields,
        {
            "verbose_name": f"{options.verbose_name} message",
            "indexes": message_indexes(base),
        },
    )

    payload = message_model._meta.get_field("payload_json")
    if isinstance(payload, AuditPayloadField):  # the keys a usual data message stores once
        payload.shape_keys = tuple(device_type._readings)

    rollup_model = _rollup_model(device_type, device_model, build, base, options)
    reading_model._rollup_model = rollup_model
    if rollup_model is not None:
        # create_models() returns three models, which the caller names in its module; the rollup model
        # is named there too, so it is importable where Django says it lives (the shell imports every model).
        owner = sys.modules.get(module)
        if owner is not None and not hasattr(owner, rollup_model.__name__):
            setattr(owner, rollup_model.__name__, rollup_model)

    device_type._device_model = device_model
    device_type._reading_model = reading_model
    device_type._message_model = message_model
    device_type._rollup_model = rollup_model
    registry.register_models(device_type, device_model, reading_model, message_model)
    return device_model, reading_model, message_model


def _rollup_model(device_type, device_model, build, base, options):
    """``<Type>Rollup`` when the type has numeric Readings (None otherwise): see ``BaseRollup``."""
    from ..lifecycle.rollups import SUFFIXES, numeric_readings

    numeric = numeric_readings(device_type)
    if not numeric:
        return None
    fields = {
        "device": models.ForeignKey(device_model, on_delete=models.CASCADE, related_name="rollups", db_index=False)
    }
    for name, reading in numeric.items():
        value_field = models.BigIntegerField if reading.value_type is int else models.FloatField
        for suffix in SUFFIXES:
            if suffix == "count":
                field = models.PositiveIntegerField(default=0)
            elif suffix == "sum":
                field = models.FloatField(null=True, blank=True)
            elif suffix == "last_at":
                field = models.DateTimeField(null=True, blank=True)
            else:
                field = value_field(null=True, blank=True)
            fields[f"{name}_{suffix}"] = field
    model = build(
        "Rollup",
        BaseRollup,
        fields,
        {
            "verbose_name": f"{options.verbose_name} rollup",
            "constraints": [
                models.UniqueConstraint(fields=["device", "bucket", "start"], name=_index_name(base, "rollup_key"))
            ],
            # Retention removes a bucket size's oldest rows across devices.
            "indexes": [models.Index(fields=["bucket", "start"], name=_index_name(base, "rollup_age"))],
        },
    )
    model.reading_names = tuple(numeric)
    return model


def message_indexes(base):
    """The Message model's partial indexes: only failed messages and outbound commands have entries (the
    command history by device, replies by correlation id, open commands, and commands by age for retention).

    A query uses one when its WHERE clause repeats the index's condition (``processing_status="failed"``,
    ``direction="outbound"``), as the admin's filter, the command history and the dispatcher do.
    """
    outbound = Q(direction="outbound")
    return [
        models.Index(
            fields=["received_at"], name=_index_name(base, "msg_failed"), condition=Q(processing_status="failed")
        ),
        models.Index(fields=["device", "received_at"], name=_index_name(base, "msg_cmd_dev"), condition=outbound),
        models.Index(fields=["received_at"], name=_index_name(base, "msg_cmd_age"), condition=outbound),
        models.Index(fields=["correlation_id"], name=_index_name(base, "msg_cmd_corr"), condition=outbound),
        models.Index(
            fields=["command_status", "expires_at"], name=_index_name(base, "msg_cmd_open"), condition=outbound
        ),
    ]


def _app_label(module):
    config = apps.get_containing_app_config(module)
    if config is None:
        raise ConfigurationError(
            f"create_models() was called from {module!r}, which is not inside an installed app; "
            "call it from the models.py of an app in INSTALLED_APPS"
        )
    return config.label


def _existing_model(app_label, name):
    return apps.all_models.get(app_label, {}).get(name.lower())


def _index_name(base, suffix):
    """Index names are limited to 30 characters; keep them unique per type and stable across runs."""
    digest = hashlib.sha1(base.encode()).hexdigest()[:6]
    return f"{base.lower()[: 30 - len(suffix) - 8]}_{digest}_{suffix}"[:30]


__all__ = ["create_models"]
