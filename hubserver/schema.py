"""JSON Schema of what each DeviceType's devices send and receive, for device makers and the API docs."""

from .vocabulary import DeviceStatus

DRAFT = "https://json-schema.org/draft/2020-12/schema"
TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "ISO 8601; the hub's receive time is used when missing or unparseable",
}


def data_schema(device_type):
    """The ``data`` topic payload: the flat format or the readings-list format."""
    readings = {name: reading.json_schema() for name, reading in device_type._readings.items()}
    flat = {
        "title": "flat",
        "type": "object",
        "properties": {**readings, "timestamp": TIMESTAMP},
        "not": {"required": ["readings"]},
        "description": "Declared readings as top-level keys; unknown keys are ignored.",
    }
    items = [
        {
            "type": "object",
            "properties": {"type": {"const": name}, "value": schema},
            "required": ["type", "value"],
        }
        for name, schema in readings.items()
    ]
    listed = {
        "title": "readings list",
        "type": "object",
        "properties": {
            "readings": {"type": "array", "items": {"anyOf": items} if items else {}},
            "timestamp": TIMESTAMP,
        },
        "required": ["readings"],
    }
    return {
        "$schema": DRAFT,
        "title": f"{device_type._meta.verbose_name} data",
        "oneOf": [flat, listed],
    }


def state_schema(device_type):
    """The ``state`` object a status message or a command reply may carry: the StateFields a device reports."""
    return {
        "type": "object",
        "properties": {name: f.json_schema() for name, f in device_type._state_fields.items() if f.reported},
        "description": "The device's current StateFields; the hub stores each valid value. Unknown keys are ignored.",
    }


def status_schema(device_type):
    """The ``status`` topic payload; every field is optional and ``battery`` is an alias of ``battery_level``."""
    battery = {"type": "number", "minimum": 0, "maximum": 100, "description": "percent"}
    return {
        "$schema": DRAFT,
        "title": f"{device_type._meta.verbose_name} status",
        "type": "object",
        "properties": {
            "status": {"enum": sorted(DeviceStatus.VALID)},
            "battery_level": battery,
            "battery": {**battery, "description": "alias of battery_level"},
            "firmware_version": {"type": "string", "maxLength": 64},
            "state": state_schema(device_type),
            "timestamp": TIMESTAMP,
        },
    }


def command_schemas(device_type):
    """Per command: the message the hub publishes on ``cmd`` and the reply the device sends on ``reply``."""
    reply = {
        "type": "object",
        "properties": {
            "correlation_id": {"type": "string"},
            "status": {"enum": ["ok", "error"]},
            "result": {},
            "state": state_schema(device_type),
        },
        "required": ["correlation_id"],
    }
    return {
        name: {
            "description": command.description,
            "qos": command.qos,
            "timeout": command.timeout,
            "command": _envelope(name, command.json_schema()),
            "reply": {"$schema": DRAFT, **reply},
        }
        for name, command in device_type._commands.items()
    }


def _envelope(name, params):
    """The ``cmd`` message around a command's params schema. Local ``#/$defs/...`` references in the params
    are written against the params' own root, so its ``$defs`` move to the envelope's root with them."""
    params = dict(params)
    definitions = {key: params.pop(key) for key in ("$defs", "definitions") if key in params}
    return {
        "$schema": DRAFT,
        "type": "object",
        "properties": {"command": {"const": name}, "payload": params, "correlation_id": {"type": "string"}},
        "required": ["command", "payload", "correlation_id"],
        **definitions,
    }


def device_type_schema(device_type):
    """Everything a device maker needs about one type, in one document."""
    return {
        "name": device_type.type_name(),
        "verbose_name": device_type._meta.verbose_name,
        "readings": {
            name: {
                "type": r.value_type.__name__,
                "unit": r.unit,
                "min_value": r.min_value,
                "max_value": r.max_value,
                "description": r.description,
            }
            for name, r in device_type._readings.items()
        },
        "state_fields": {name: f.json_schema() for name, f in device_type._state_fields.items()},
        "data": data_schema(device_type),
        "status": status_schema(device_type),
        "commands": command_schemas(device_type),
    }
