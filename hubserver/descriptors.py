"""The three declarations a DeviceType is made of: Reading (telemetry), StateField (device column), Command."""

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .exceptions import ConfigurationError, ValidationError

VALUE_TYPES = (float, int, bool, str)
_JSON_TYPES = {float: "number", int: "integer", bool: "boolean", str: "string"}

Value = float | int | bool | str  # what a Reading or StateField holds
JSONSchema = dict[str, Any]


def _check_value_type(owner: str, value_type: type) -> None:
    if value_type not in VALUE_TYPES:
        raise ConfigurationError(f"{owner} value_type must be one of float, int, bool, str; got {value_type!r}")


def coerce_value(value_type: type, value: object, what: str = "value") -> Value:
    """Return ``value`` as ``value_type`` or raise ValidationError; bools are never numbers, 3.0 is a valid int."""
    if value_type is bool:
        if isinstance(value, bool):
            return value
        raise ValidationError(f"{what}: expected a boolean, got {value!r}")
    if value_type is str:
        if isinstance(value, str):
            return value
        raise ValidationError(f"{what}: expected a string, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{what}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{what}: expected a finite number, got {value!r}")
    if value_type is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValidationError(f"{what}: expected an integer, got {value!r}")
            return int(value)
        return value
    return float(value)


class Descriptor:
    """Shared by the three declarations: the metaclass sets ``name`` from the attribute it was assigned to."""

    name: str | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or '?'}>"


class Reading(Descriptor):
    """One telemetry value a device reports, stored as a nullable column of the type's Reading model."""

    def __init__(
        self,
        value_type: type,
        unit: str = "",
        min_value: float | None = None,
        max_value: float | None = None,
        description: str = "",
    ) -> None:
        _check_value_type("Reading", value_type)
        if (min_value is not None or max_value is not None) and value_type not in (int, float):
            raise ConfigurationError("Reading min_value/max_value only apply to int and float readings")
        if min_value is not None and max_value is not None and min_value > max_value:
            raise ConfigurationError(f"Reading min_value {min_value} is greater than max_value {max_value}")
        self.value_type = value_type
        self.unit = unit
        self.min_value = min_value
        self.max_value = max_value
        self.description = description

    def validate(self, value: object) -> Value:
        """Return the value coerced to the declared type; raise ValidationError if wrong type or out of range."""
        what = self.name or "reading"
        value = coerce_value(self.value_type, value, what)
        if isinstance(value, str):  # a range only applies to int and float readings
            return value
        if self.min_value is not None and value < self.min_value:
            raise ValidationError(f"{what}: {value} is below the minimum {self.min_value}")
        if self.max_value is not None and value > self.max_value:
            raise ValidationError(f"{what}: {value} is above the maximum {self.max_value}")
        return value

    def to_django_field(self) -> Any:
        """The nullable model field of this Reading's column."""
        from django.db import models

        kwargs: dict[str, Any] = {"null": True, "blank": True, "help_text": self._help_text()}
        if self.unit:
            kwargs["verbose_name"] = f"{self.name.replace('_', ' ')} ({self.unit})" if self.name else None
        field_class = {
            float: models.FloatField,
            int: models.BigIntegerField,
            bool: models.BooleanField,
            str: models.TextField,
        }[self.value_type]
        return field_class(**{k: v for k, v in kwargs.items() if v is not None})

    def _help_text(self) -> str:
        parts = [self.description] if self.description else []
        if self.min_value is not None or self.max_value is not None:
            parts.append(
                f"range {self.min_value if self.min_value is not None else '-inf'}"
                f"..{self.max_value if self.max_value is not None else 'inf'}"
            )
        return "; ".join(parts)

    def json_schema(self) -> JSONSchema:
        schema: JSONSchema = {"type": _JSON_TYPES[self.value_type]}
        if self.min_value is not None:
            schema["minimum"] = self.min_value
        if self.max_value is not None:
            schema["maximum"] = self.max_value
        if self.description:
            schema["description"] = self.description
        if self.unit:
            schema["x-unit"] = self.unit
        return schema


class StateField(Descriptor):
    """A piece of device state (a relay, a mode) kept as a column of the type's Device model.

    A device reports its state in the ``state`` object of its status messages and command replies
    (``{"state": {"relay": "on"}}``); each value is checked against its StateField and stored. With
    ``reported=False`` the field belongs to the hub alone (set in the admin or the API): a device that
    reports it is told so in the message's error, and the value is not stored."""

    def __init__(
        self,
        value_type: type,
        default: Value | None = None,
        choices: Iterable[Value | tuple[Value, str]] | None = None,
        description: str = "",
        unit: str = "",
        reported: bool = True,
    ) -> None:
        _check_value_type("StateField", value_type)
        self.value_type = value_type
        self.description = description
        self.unit = unit
        self.reported = bool(reported)
        self.choices = self._normalize_choices(choices)
        self.default = default
        if default is not None:
            self.default = self.validate(default)

    def _normalize_choices(self, choices: Iterable[Any] | None) -> list[tuple[Value, str]] | None:
        if choices is None:
            return None
        normalized = []
        for choice in choices:
            value, label = choice if isinstance(choice, (tuple, list)) else (choice, str(choice))
            normalized.append((coerce_value(self.value_type, value, "StateField choice"), label))
        return normalized

    def validate(self, value: object) -> Value | None:
        """The value coerced to the declared type (None stays None); ValidationError if it is not one of
        the choices."""
        what = self.name or "state field"
        if value is None:
            return None
        value = coerce_value(self.value_type, value, what)
        if self.choices is not None and value not in {v for v, _ in self.choices}:
            raise ValidationError(f"{what}: {value!r} is not one of {[v for v, _ in self.choices]}")
        return value

    def to_django_field(self) -> Any:
        """The model field of this StateField's column."""
        from django.db import models

        kwargs: dict[str, Any] = {"blank": True, "null": self.default is None, "help_text": self.description}
        if self.default is not None:
            kwargs["default"] = self.default
        if self.choices is not None:
            kwargs["choices"] = self.choices
        if self.value_type is str:
            longest = max((len(str(v)) for v, _ in self.choices or ()), default=0)
            return models.CharField(max_length=max(255, longest), **kwargs)
        field_class = {float: models.FloatField, int: models.BigIntegerField, bool: models.BooleanField}
        return field_class[self.value_type](**kwargs)

    def json_schema(self) -> JSONSchema:
        schema: JSONSchema = {"type": _JSON_TYPES[self.value_type]}
        if self.choices is not None:
            schema["enum"] = [v for v, _ in self.choices]
        if self.default is not None:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


class Command(Descriptor):
    """A command the hub can send to a device on its ``cmd`` topic; ``params`` is a JSON Schema of its payload."""

    def __init__(
        self, description: str = "", params: JSONSchema | None = None, qos: int = 1, timeout: float = 30
    ) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        if qos not in (0, 1, 2):
            raise ConfigurationError(f"Command qos must be 0, 1 or 2; got {qos!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(f"Command timeout must be a positive number of seconds; got {timeout!r}")
        params = {"type": "object"} if params is None else params
        if not isinstance(params, dict):
            raise ConfigurationError("Command params must be a JSON Schema dict")
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise ConfigurationError(f"Command params is not a valid JSON Schema: {exc.message}") from exc
        self.description = description
        self.params = params
        self.qos = qos
        self.timeout = timeout
        self._validator = Draft202012Validator(params)

    def validate(self, payload: Mapping[str, Any] | None) -> Any:
        """Return the payload ({} when None) if it satisfies ``params``; raise ValidationError naming the problem."""
        payload = {} if payload is None else payload
        error = next(iter(sorted(self._validator.iter_errors(payload), key=lambda e: e.path)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path)
            prefix = f"{self.name or 'command'}" + (f" payload/{where}" if where else " payload")
            raise ValidationError(f"{prefix}: {error.message}")
        return payload

    def json_schema(self) -> JSONSchema:
        schema = dict(self.params)
        if self.description and "description" not in schema:
            schema["description"] = self.description
        return schema
