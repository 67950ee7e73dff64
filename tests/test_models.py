"""Generated models: fields, indexes, related names, app placement, and real rows."""

import pytest
from django.db import connection, models

from hubserver.models import BaseDevice
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

SEED_DEVICE_FIELDS = [
    "device_id",
    "name",
    "status",
    "battery_level",
    "last_seen",
    "firmware_version",
    "is_active",
    "mqtt_username",
    "mqtt_password_hash",
    "api_key",
    "metadata",
    "created_at",
    "updated_at",
]
SEED_MESSAGE_FIELDS = [
    "topic",
    "payload_json",
    "payload_raw",
    "content_type",
    "correlation_id",
    "user_properties",
    "processing_status",
    "processing_error",
    "received_at",
    "processed_at",
]


def field_names(model):
    return {f.name for f in model._meta.get_fields()}


def test_device_model_has_seed_fields_state_columns_and_type_link():
    assert ThermometerDevice.__name__ == "ThermometerDevice"
    assert issubclass(ThermometerDevice, BaseDevice)
    assert set(SEED_DEVICE_FIELDS) <= field_names(ThermometerDevice)
    assert {"mode", "setpoint"} <= field_names(ThermometerDevice)
    assert ThermometerDevice._meta.get_field("mode").default == "auto"
    assert ThermometerDevice._device_type_cls is Thermometer
    assert ThermometerDevice._meta.verbose_name == "Test thermometer"


def test_models_live_in_the_calling_app():
    for model in (ThermometerDevice, ThermometerReading, ThermometerMessage):
        assert model._meta.app_label == "testapp"
        assert model.__module__ == "tests.testapp.models"
    assert Thermometer.get_models() == (ThermometerDevice, ThermometerReading, ThermometerMessage)


def test_reading_model_columns_fk_and_indexes():
    fk = ThermometerReading._meta.get_field("device")
    assert fk.related_model is ThermometerDevice
    assert fk.remote_field.related_name == "readings"
    assert ThermometerReading._meta.get_field("timestamp").db_index
    assert "received_at" in field_names(ThermometerReading)
    for name in ("temperature", "uptime", "door_open", "label"):
        assert ThermometerReading._meta.get_field(name).null
    assert isinstance(ThermometerReading._meta.get_field("door_open"), models.BooleanField)
    assert [tuple(index.fields) for index in ThermometerReading._meta.indexes] == [("device", "timestamp")]


def test_message_model_fields_and_direction():
    assert set(SEED_MESSAGE_FIELDS) <= field_names(ThermometerMessage)
    fk = ThermometerMessage._meta.get_field("device")
    assert fk.remote_field.related_name == "messages"
    direction = ThermometerMessage._meta.get_field("direction")
    assert [value for value, _ in direction.choices] == ["inbound", "outbound"]
    assert direction.default == "inbound"


def test_create_models_again_returns_the_same_models():
    assert Thermometer.create_models(module="tests.testapp.models") == (
        ThermometerDevice,
        ThermometerReading,
        ThermometerMessage,
    )


def test_reserved_names_are_refused():
    from hubserver import DeviceType, Reading, registry
    from hubserver.exceptions import ConfigurationError

    class Clashing(DeviceType):
        timestamp = Reading(float)

    try:
        with pytest.raises(ConfigurationError, match="clash with built-in fields"):
            Clashing.create_models(module="tests.testapp.models")
    finally:
        registry.unregister(Clashing)


@pytest.mark.django_db
def test_rows_round_trip_and_message_marking():
    device = ThermometerDevice.objects.create(device_id="t-1", name="Kitchen")
    assert device.mode == "auto" and device.status == "offline" and device.device_type is Thermometer
    device.readings.create(temperature=21.5, door_open=True, label="ok")
    assert device.readings.get().temperature == 21.5
    message = device.messages.create(topic="things/thermometer/t-1/data", payload_raw=b"\xff{", payload_json=None)
    message.mark_failed("payload is not JSON")
    message.refresh_from_db()
    assert (message.processing_status, message.processing_error) == ("failed", "payload is not JSON")
    assert message.processed_at is not None
    assert message.payload_text == "\\xff{"
    message.mark_completed()
    message.refresh_from_db()
    assert (message.processing_status, message.processing_error) == ("completed", "")


@pytest.mark.django_db
def test_composite_index_exists_in_the_database():
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, ThermometerReading._meta.db_table)
    assert any(c["index"] and c["columns"] == ["device_id", "timestamp"] for c in constraints.values())
