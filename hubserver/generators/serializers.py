"""``create_serializers()``: the DRF serializers of a DeviceType's models.

Each generated class is named after its type (``ThermometerDeviceSerializer``...) so every type has its own
OpenAPI components, and is made once per type: calling again returns the same classes.
"""

from rest_framework import serializers

from ..api import openapi  # noqa: F401  (registers the OpenAPI extension of CommandRequestSerializer)
from ..exceptions import ValidationError as HubValidationError

# Never returned by the API at all: argon2id hashes of the device's secrets.
SECRET_FIELDS = ("mqtt_password_hash", "api_key")
# Returned but never written through the API: set by provisioning or reported by the device.
DEVICE_READ_ONLY_FIELDS = (
    "id",
    "mqtt_username",
    "status",
    "battery_level",
    "last_seen",
    "firmware_version",
    "created_at",
    "updated_at",
)
READING_BASE_FIELDS = ("id", "device", "timestamp", "received_at")
COMMAND_FIELDS = (
    "id",
    "command",
    "payload",
    "correlation_id",
    "command_status",
    "received_at",
    "processed_at",
    "expires_at",
    "command_result",
)

_cache = {}


def _cached(kind, device_type, build):
    """Build once per (kind, type, Device model); a re-created model (tests) gets fresh classes."""
    key = (kind, device_type, device_type._device_model)
    if key not in _cache:
        _cache[key] = build()
    return _cache[key]


def _models(device_type):
    device_model, reading_model, message_model = device_type.get_models()
    if device_model is None:
        raise HubValidationError(
            f"{device_type.__name__} has no models; call create_models() in an app's models.py first"
        )
    return device_model, reading_model, message_model


def _state_field_validator(state_field):
    def validate(self, value):
        try:
            return state_field.validate(value)
        except HubValidationError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    return validate


class BaseDeviceSerializer(serializers.ModelSerializer):
    """The device's fields without its secret hashes; ``device_id`` is set on create and cannot change, since
    the MQTT username and topics are made from it."""

    def validate_device_id(self, value):
        if self.instance is not None and value != self.instance.device_id:
            raise serializers.ValidationError("A device id cannot be changed; create a new device instead.")
        return value


def create_serializers(device_type):
    """Return ``(DeviceSerializer, ReadingSerializer)`` for ``device_type``."""
    return (
        _cached("device", device_type, lambda: _device_serializer(device_type)),
        _cached("reading", device_type, lambda: _reading_serializer(device_type)),
    )


def _device_serializer(device_type):
    device_model = _models(device_type)[0]
    fields = [f.name for f in device_model._meta.concrete_fields if f.name not in SECRET_FIELDS]
    attrs = {
        "Meta": type(
            "Meta",
            (),
            {
                "model": device_model,
                "fields": fields,
                "read_only_fields": DEVICE_READ_ONLY_FIELDS,
                # A choice is never blank; the model field is ``blank=True`` only for the admin's sake.
                "extra_kwargs": {
                    name: {"allow_blank": False}
                    for name, field in device_type._state_fields.items()
                    if field.value_type is str and field.choices is not None
                },
            },
        ),
        "__module__": __name__,
        "__doc__": f"A {device_type._meta.verbose_name} device.",
    }
    for name, state_field in device_type._state_fields.items():
        attrs[f"validate_{name}"] = _state_field_validator(state_field)
    return type(f"{device_type.__name__}DeviceSerializer", (BaseDeviceSerializer,), attrs)


def _reading_serializer(device_type):
    device_model, reading_model, _ = _models(device_type)
    attrs = {
        "device": serializers.SlugRelatedField(slug_field="device_id", queryset=device_model._default_manager.all()),
        "Meta": type(
            "Meta",
            (),
            {
                "model": reading_model,
                "fields": [*READING_BASE_FIELDS, *device_type._readings],
                "read_only_fields": ("id", "received_at"),
            },
        ),
        "__module__": __name__,
        "__doc__": f"One {device_type._meta.verbose_name} data message's readings.",
    }
    return type(f"{device_type.__name__}ReadingSerializer", (serializers.ModelSerializer,), attrs)


class CommandRequestSerializer(serializers.Serializer):
    """``{"command": name, "payload": {...}}``; the command and its payload are checked by ``send_command``."""

    device_type = None
    command = serializers.CharField(max_length=64)
    payload = serializers.JSONField(required=False, allow_null=True, default=None)


class BaseCommandSerializer(serializers.ModelSerializer):
    """An outbound command: ``received_at`` is when it was queued, ``processed_at`` when its reply came."""

    payload = serializers.SerializerMethodField()

    def get_payload(self, message) -> dict | None:
        body = message.payload_json
        return body.get("payload") if isinstance(body, dict) else None


def create_command_serializers(device_type):
    """Return ``(CommandSerializer, CommandRequestSerializer)`` for ``device_type``'s command history."""
    return (
        _cached("command", device_type, lambda: _command_serializer(device_type)),
        _cached("command-request", device_type, lambda: _command_request_serializer(device_type)),
    )


def _command_serializer(device_type):
    message_model = _models(device_type)[2]
    meta = type("Meta", (), {"model": message_model, "fields": COMMAND_FIELDS, "read_only_fields": COMMAND_FIELDS})
    return type(
        f"{device_type.__name__}CommandSerializer",
        (BaseCommandSerializer,),
        {"Meta": meta, "__module__": __name__, "__doc__": f"A command sent to a {device_type._meta.verbose_name}."},
    )


def _command_request_serializer(device_type):
    return type(
        f"{device_type.__name__}CommandRequestSerializer",
        (CommandRequestSerializer,),
        {"device_type": device_type, "__module__": __name__, "__doc__": CommandRequestSerializer.__doc__},
    )


class TopicsSerializer(serializers.Serializer):
    data = serializers.CharField()
    status = serializers.CharField()
    cmd = serializers.CharField()
    reply = serializers.CharField()


class ConnectionInfoSerializer(serializers.Serializer):
    """What ``provision`` returns: the device's new credentials, shown this once, and where to connect."""

    device_id = serializers.CharField()
    device_type = serializers.CharField()
    client_id = serializers.CharField()
    mqtt_username = serializers.CharField()
    mqtt_password = serializers.CharField()
    api_key = serializers.CharField()
    host = serializers.CharField()
    mqtt_port = serializers.IntegerField()
    topics = TopicsSerializer()


__all__ = ["ConnectionInfoSerializer", "create_command_serializers", "create_serializers"]
