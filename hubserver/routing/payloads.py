"""Device payloads (the flat and readings-list data formats, the status format), parsed with orjson.

Parsing never raises for a bad field: it returns what is valid plus one error per invalid field, so the
router can store the valid part and mark the Message failed with a reason naming every bad field.
"""

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from ..conf import hub_settings
from ..exceptions import PayloadError, ValidationError
from ..vocabulary import DeviceStatus

# Column limits of BaseDevice/BaseMessage: longer values would fail the whole batch on PostgreSQL.
MAX_FIRMWARE_LENGTH = 64
MAX_CORRELATION_ID_LENGTH = 64
_INT64 = (-(2**63), 2**63 - 1)
# A number with an exponent of three digits or more: only such a number can fall outside a 64-bit float.
_HUGE_EXPONENT = re.compile(rb"[0-9][eE][-+]?0*[1-9][0-9]{2}")
_NONZERO_MANTISSA = re.compile(r"[1-9]")


class Unrepresentable(str):
    """A JSON number that no 64-bit float holds (orjson reads ``1e-400`` as 0.0, silently), kept as its text:
    the payload stays storable as JSON, and a reading given such a number is an error."""

    __slots__ = ()

    @property
    def text(self):
        return str(self)

    def __repr__(self):
        return str(self)


def _float(text):
    value = float(text)
    if (value == 0.0 and _NONZERO_MANTISSA.search(text.lower().partition("e")[0])) or math.isinf(value):
        return Unrepresentable(text)
    return value


def _constant(name):
    raise ValueError(f"{name} is not JSON")


def decode_object(payload):
    """The JSON object in ``payload`` (bytes); PayloadError if it is not valid JSON or not an object."""
    # PostgreSQL cannot store U+0000 in text or jsonb: refuse it here rather than fail a whole batch.
    if b"\\u0000" in payload:
        raise PayloadError("payload contains a NUL character (\\u0000), which cannot be stored")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if not _HUGE_EXPONENT.search(payload):
            raise PayloadError(f"invalid JSON: {exc}") from None
        obj = None  # 1e400: orjson refuses the whole payload; read it again below, number by number
    if obj is None or (_HUGE_EXPONENT.search(payload) and isinstance(obj, dict)):
        try:  # rare: the standard library's parser, which shows each number before it becomes a float
            obj = json.loads(payload, parse_float=_float, parse_constant=_constant)
        except ValueError as exc:
            raise PayloadError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"payload must be a JSON object, got {_json_type(obj)}")
    return obj


def parse_timestamp(value):
    """An aware UTC datetime from an ISO 8601 string (naive means UTC), or None if absent or unparseable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


@dataclass(slots=True)
class ParsedData:
    readings: dict
    timestamp: datetime
    errors: list = field(default_factory=list)


def parse_data(device_type, obj, default_timestamp):
    """Declared readings of a data payload in the flat or the ``readings``-list format.

    Unknown fields are ignored; a JSON ``null`` counts as "no value" (the columns are nullable).
    """
    declared = device_type._readings
    errors = []
    raw = {}
    items = obj.get("readings")
    if "readings" in obj and "readings" not in declared:
        if isinstance(items, list):
            _collect_list(items, declared, raw, errors)
        else:
            errors.append(f"readings: expected a list, got {_json_type(items)}")
    else:
        raw = {name: value for name, value in obj.items() if name in declared}
    readings = {}
    for name, value in raw.items():
        if value is None:
            continue
        try:
            readings[name] = _validate(declared[name], value)
        except ValidationError as exc:
            errors.append(str(exc))
    timestamp = parse_timestamp(obj.get("timestamp"))
    if timestamp is not None and not _within_window(timestamp, default_timestamp):
        errors.append(
            f"timestamp: {obj['timestamp']!r} is more than {hub_settings.TIMESTAMP_MAX_PAST} s before or "
            f"{hub_settings.TIMESTAMP_MAX_FUTURE} s after the time it was received; the receive time is used"
        )
        timestamp = None
    return ParsedData(readings, timestamp or default_timestamp, errors)


def _within_window(timestamp, received):
    """TIMESTAMP_MAX_PAST / TIMESTAMP_MAX_FUTURE around the receive time: a device cannot plant a reading
    that sorts newest for ever (year 9999) or before everything (year 1)."""
    return (
        received - timedelta(seconds=hub_settings.TIMESTAMP_MAX_PAST)
        <= timestamp
        <= received + timedelta(seconds=hub_settings.TIMESTAMP_MAX_FUTURE)
    )


def _collect_list(items, declared, raw, errors):
    for index, item in enumerate(items):
        name = item.get("type") if isinstance(item, dict) else None
        if not isinstance(name, str):
            errors.append(f"readings[{index}]: expected an object with a string 'type' and a 'value'")
        elif name in declared:
            if "value" in item:
                raw[name] = item["value"]
            else:
                errors.append(f"{name}: missing 'value'")


def _validate(reading, value):
    if isinstance(value, Unrepresentable):
        raise ValidationError(f"{reading.name}: {value.text} is beyond what a 64-bit float holds")
    value = reading.validate(value)
    if reading.value_type is int and not _INT64[0] <= value <= _INT64[1]:
        raise ValidationError(f"{reading.name}: {value} does not fit a 64-bit integer")
    return value


@dataclass(slots=True)
class ParsedStatus:
    """Valid fields among ``status``, ``battery_level`` and ``firmware_version``."""

    fields: dict
    timestamp: datetime | None
    errors: list = field(default_factory=list)


def parse_status(obj):
    fields = {}
    errors = []
    if "status" in obj:
        status = obj["status"]
        if isinstance(status, str) and status in DeviceStatus.VALID:
            fields["status"] = status
        else:
            errors.append(f"status: {status!r} is not one of {', '.join(sorted(DeviceStatus.VALID))}")
    key = "battery_level" if "battery_level" in obj else "battery" if "battery" in obj else None
    if key is not None:
        battery = obj[key]
        if isinstance(battery, bool) or not isinstance(battery, (int, float)) or not 0 <= battery <= 100:
            errors.append(f"{key}: expected a number from 0 to 100, got {battery!r}")
        else:
            fields["battery_level"] = float(battery)
    if "firmware_version" in obj:
        firmware = obj["firmware_version"]
        if isinstance(firmware, str) and len(firmware) <= MAX_FIRMWARE_LENGTH:
            fields["firmware_version"] = firmware
        else:
            errors.append(f"firmware_version: expected a string of at most {MAX_FIRMWARE_LENGTH} characters")
    return ParsedStatus(fields, parse_timestamp(obj.get("timestamp")), errors)


def parse_state(device_type, obj):
    """``(state, errors)``: the valid values of the payload's ``state`` object, checked against the type's
    StateFields. Keys that name no StateField are ignored (as undeclared readings are); a value of the wrong
    type or choice, or one for a StateField the hub alone sets (``reported=False``), is an error."""
    if "state" not in obj:
        return {}, []
    reported = obj["state"]
    if not isinstance(reported, dict):
        return {}, [f"state: expected an object, got {_json_type(reported)}"]
    declared = device_type._state_fields
    state, errors = {}, []
    for name, value in reported.items():
        field_ = declared.get(name)
        if field_ is None:
            continue
        if not field_.reported:
            errors.append(f"state.{name}: set by the hub, not by the device")
            continue
        if value is None and field_.default is not None:
            errors.append(f"state.{name}: cannot be null")
            continue
        try:
            state[name] = field_.validate(value)
        except ValidationError as exc:
            errors.append(f"state.{exc}")
            continue
        if field_.value_type is int and not _INT64[0] <= state[name] <= _INT64[1]:
            del state[name]
            errors.append(f"state.{name}: {value} does not fit a 64-bit integer")
    return state, errors


@dataclass(slots=True)
class ParsedReply:
    """A command reply ``{"correlation_id", "status", "result"}``; command tracking reads it after commit."""

    correlation_id: str
    status: object
    result: object
    errors: list = field(default_factory=list)


def parse_reply(obj, by_property=""):
    """``by_property``: the correlation id the reply carried as a property (MQTT 5 Correlation Data); it
    answers the command it names whatever the JSON says, and the JSON then need not name one."""
    if by_property:
        return ParsedReply(by_property, obj.get("status"), obj.get("result"), [])
    correlation_id = obj.get("correlation_id")
    errors = []
    if not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= MAX_CORRELATION_ID_LENGTH:
        errors.append(f"correlation_id: expected a string of 1 to {MAX_CORRELATION_ID_LENGTH} characters")
        correlation_id = ""
    return ParsedReply(correlation_id, obj.get("status"), obj.get("result"), errors)


def _json_type(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
