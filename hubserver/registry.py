"""The global registry of DeviceType classes and the models generated for them."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .exceptions import RegistryError

if TYPE_CHECKING:
    from .devicetype import DeviceType

    DeviceTypeClass = type[DeviceType]

# Where the built-in catalogue of device types lives (a conflict with it has its own way out).
CATALOGUE_MODULE = "hubserver.devicetypes"


def normalize_name(name: str) -> str:
    """``WeatherStation``, ``weather_station`` and ``weatherstation`` all name the same type."""
    return name.lower().replace("_", "")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _declared_at(cls: type) -> str:
    """``module.Class (path/to/file.py:12)``, or just the dotted name when the source cannot be found."""
    try:
        path = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return _qualified(cls)
    return f"{_qualified(cls)} ({path}:{line})"


def conflict_message(new: type, existing: type) -> str:
    """One paragraph: both definitions, why they clash, and how to get out of it."""
    name = normalize_name(new.__name__)
    message = (
        f"Two device types are named {name!r}: {_declared_at(new)} and {_declared_at(existing)}, which was "
        "registered first. A type's name is its class name in lower case without underscores; it names the "
        "type's topics, URLs and tables, so it must be unique in a hub."
    )
    in_catalogue = [cls for cls in (new, existing) if cls.__module__.startswith(CATALOGUE_MODULE + ".")]
    if in_catalogue and len(in_catalogue) == 1:
        return message + (
            f" {in_catalogue[0].__name__} is in the hub's built-in catalogue: rename your class, or leave the "
            "catalogue out (the hubserver binary leaves it out when you give --devices or HUBSERVER_DEVICES, "
            f"unless HUBSERVER_CATALOGUE=1; in a Django project, remove {CATALOGUE_MODULE!r} from INSTALLED_APPS)."
        )
    return message + " Rename one of the two classes, or stop importing one of them."


class DeviceTypeRegistry:
    """Maps normalized type names to DeviceType classes (``_types``) and to their models (``_models``)."""

    def __init__(self) -> None:
        self._types: dict[str, DeviceTypeClass] = {}
        self._models: dict[str, tuple[Any, Any, Any]] = {}

    def register(self, device_type: DeviceTypeClass) -> DeviceTypeClass:
        key = normalize_name(device_type.__name__)
        existing = self._types.get(key)
        if existing is not None and _qualified(existing) != _qualified(device_type):
            raise RegistryError(conflict_message(device_type, existing))
        # Re-importing the same module (autoreload, tests) replaces the class in place.
        self._types[key] = device_type
        return device_type

    def unregister(self, name: str | type) -> None:
        key = normalize_name(name if isinstance(name, str) else name.__name__)
        self._types.pop(key, None)
        self._models.pop(key, None)

    def register_models(self, device_type: type, device_model: Any, reading_model: Any, message_model: Any) -> None:
        self._models[normalize_name(device_type.__name__)] = (device_model, reading_model, message_model)

    def get(self, name: str) -> DeviceTypeClass | None:
        """The DeviceType class for a name in any spelling, or None."""
        return self._types.get(normalize_name(name))

    def get_models(self, name: str) -> tuple[Any, Any, Any] | None:
        """``(DeviceModel, ReadingModel, MessageModel)`` for a type name, or None before create_models()."""
        return self._models.get(normalize_name(name))

    def get_by_device_model(self, model: Any) -> DeviceTypeClass | None:
        """The DeviceType whose generated Device model is ``model`` (a class or an instance), or None."""
        model = model if isinstance(model, type) else type(model)
        for key, models in self._models.items():
            if model is models[0]:
                return self._types.get(key)
        return None

    def all(self) -> list[DeviceTypeClass]:
        return list(self._types.values())

    def all_with_models(self) -> list[tuple[DeviceTypeClass, Any, Any, Any]]:
        """``[(DeviceType, DeviceModel, ReadingModel, MessageModel), ...]`` for the types that have models."""
        return [(self._types[key], *models) for key, models in self._models.items() if key in self._types]

    def __len__(self) -> int:
        return len(self._types)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._types

    def __iter__(self) -> Iterator[DeviceTypeClass]:
        return iter(self.all())


registry = DeviceTypeRegistry()
