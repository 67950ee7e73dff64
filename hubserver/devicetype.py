"""DeviceType and its metaclass: a device is declared as a class of Readings, Commands and StateFields."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from . import schema
from .descriptors import Command, Descriptor, Reading, StateField
from .registry import normalize_name, registry

_DESCRIPTORS: tuple[tuple[str, type[Descriptor]], ...] = (
    ("_readings", Reading),
    ("_commands", Command),
    ("_state_fields", StateField),
)


def _verbose(class_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", class_name).replace("_", " ")


# Keys of ``Meta.quota``: the per-client MQTT quotas of docs/limits.md, for this type's devices.
QUOTA_KEYS = ("message_rate", "message_burst", "byte_rate", "byte_burst", "queue_share")


class DeviceTypeOptions:
    """What an inner ``class Meta`` may set: ``verbose_name``, ``verbose_name_plural``, ``broker``, ``quota``
    (a dict overriding the CLIENT_* quota settings for this type's devices, keys ``QUOTA_KEYS``) and
    ``retention`` (how long its rows are kept: ``hubserver.lifecycle.retention``)."""

    ALLOWED = ("verbose_name", "verbose_name_plural", "broker", "quota", "retention")

    def __init__(self, class_name: str, meta: type | None, parent: DeviceTypeOptions | None) -> None:
        from .exceptions import ConfigurationError

        unknown = [k for k in vars(meta) if not k.startswith("_") and k not in self.ALLOWED] if meta else []
        if unknown:
            raise ConfigurationError(
                f"{class_name}.Meta: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(self.ALLOWED)}"
            )
        self.verbose_name: str = getattr(meta, "verbose_name", None) or _verbose(class_name)
        self.verbose_name_plural: str = getattr(meta, "verbose_name_plural", None) or f"{self.verbose_name}s"
        # The broker is inherited: a subclass of a LoRa type stays on the LoRa broker unless it says otherwise.
        self.broker: str = getattr(meta, "broker", None) or (parent.broker if parent else "default")
        quota = getattr(meta, "quota", None)
        self.quota: dict[str, float] = (
            _checked_quota(class_name, quota) if quota is not None else dict(parent.quota if parent else {})
        )
        # Inherited kind by kind: a subclass that names only "messages" keeps its parent's "readings".
        from .lifecycle.retention import inherit, parse_declared

        declared = getattr(meta, "retention", None)
        own = parse_declared(declared, f"{class_name}.Meta.retention") if hasattr(meta, "retention") else {}
        self.retention: dict[str, Any] = inherit(parent.retention if parent else {}, own)


def _checked_quota(class_name: str, quota: object) -> dict[str, float]:
    from .exceptions import ConfigurationError

    if not isinstance(quota, dict):
        raise ConfigurationError(f"{class_name}.Meta.quota must be a dict, got {type(quota).__name__}")
    for key, value in quota.items():
        if key not in QUOTA_KEYS:
            raise ConfigurationError(f"{class_name}.Meta.quota: unknown key {key!r}; allowed: {', '.join(QUOTA_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigurationError(f"{class_name}.Meta.quota[{key!r}] must be a number >= 0 (0: none), got {value!r}")
    return dict(quota)


class DeviceTypeMeta(type):
    """Collects descriptors (bases first, so subclasses inherit and override) and registers concrete types."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> DeviceTypeMeta:
        collected: dict[str, dict[str, Descriptor]] = {attr: {} for attr, _ in _DESCRIPTORS}
        for base in reversed(bases):
            for attr, _ in _DESCRIPTORS:
                collected[attr].update(getattr(base, attr, {}))
        for key, value in list(namespace.items()):
            for attr, kind in _DESCRIPTORS:
                if isinstance(value, kind):
                    value.name = key
                    for other, _ in _DESCRIPTORS:  # an override may change the kind of declaration
                        collected[other].pop(key, None)
                    collected[attr][key] = value
                    del namespace[key]
        namespace.update(collected)
        meta = namespace.pop("Meta", None)
        parent_options = next(
            (options for b in bases if isinstance(options := getattr(b, "_meta", None), DeviceTypeOptions)), None
        )
        namespace["_meta"] = DeviceTypeOptions(name, meta, parent_options)
        # Only the class that says so is abstract; its subclasses register unless they say so too.
        namespace.setdefault("_abstract", False)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if bases and not namespace["_abstract"]:  # a DeviceType subclass
            registry.register(cls)  # type: ignore[arg-type]
        return cls


class DeviceType(metaclass=DeviceTypeMeta):
    """Subclass to declare a device type; hooks run after each message's batch has been committed."""

    _abstract = True
    _device_model: ClassVar[Any] = None
    _reading_model: ClassVar[Any] = None
    _message_model: ClassVar[Any] = None
    _rollup_model: ClassVar[Any] = None
    # Set by the metaclass on every class: the declarations by name (inherited ones included), the options.
    _readings: ClassVar[dict[str, Reading]]
    _commands: ClassVar[dict[str, Command]]
    _state_fields: ClassVar[dict[str, StateField]]
    _meta: ClassVar[DeviceTypeOptions]

    @classmethod
    def type_name(cls) -> str:
        """The normalized name used in topics and URLs: ``WeatherStation`` -> ``weatherstation``."""
        return normalize_name(cls.__name__)

    @classmethod
    def create_models(cls, module: str | None = None) -> tuple[Any, Any, Any]:
        """Generate ``<Type>Device``, ``<Type>Reading`` and ``<Type>Message`` in the caller's module (app)."""
        # Imported when called: model classes can only be built once Django's app registry is ready.
        from .generators.models import _caller_module, create_models

        return create_models(cls, module=module or _caller_module())

    @classmethod
    def get_models(cls) -> tuple[Any, Any, Any]:
        """``(Device, Reading, Message)`` models, or Nones before ``create_models()``."""
        return cls._device_model, cls._reading_model, cls._message_model

    @classmethod
    def get_rollup_model(cls) -> Any:
        """``<Type>Rollup`` (per-minute, -hour and -day aggregates of the numeric Readings), or None."""
        return cls._rollup_model

    @classmethod
    def send_command(cls, device: Any, name: str, payload: Mapping[str, Any] | None = None) -> Any:
        """Send command ``name`` to ``device`` (see ``hubserver.commands.send_command``); returns its Message."""
        from .commands import send_command  # the command layer sits above this one: imported when called

        return send_command(device, name, payload)

    @classmethod
    async def asend_command(cls, device: Any, name: str, payload: Mapping[str, Any] | None = None) -> Any:
        """``send_command`` for async code."""
        from .commands import asend_command

        return await asend_command(device, name, payload)

    # Hooks: override in a subclass. They may be plain or ``async def``.
    def on_data(self, device: Any, readings: dict[str, Any]) -> None:
        """Called with the Device instance and ``{reading: value}`` after a data message is stored."""

    def on_status_change(self, device: Any, old_status: str | None, new_status: str) -> None:
        """Called when a status message (or a connect/disconnect) changes the device's status."""

    def on_state_change(self, device: Any, changes: dict[str, tuple[Any, Any]]) -> None:
        """Called with ``{state field: (old, new)}`` when a status message or a command reply changed the
        device's StateFields (its ``state`` object)."""

    # Payload descriptions for device makers and the API docs.
    @classmethod
    def data_schema(cls) -> dict[str, Any]:
        return schema.data_schema(cls)

    @classmethod
    def status_schema(cls) -> dict[str, Any]:
        return schema.status_schema(cls)

    @classmethod
    def command_schemas(cls) -> dict[str, Any]:
        return schema.command_schemas(cls)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return schema.device_type_schema(cls)
