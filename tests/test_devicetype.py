"""The metaclass: collection, inheritance and override, abstract types, Meta, payload schemas."""

import jsonschema
import pytest

from hubserver import Command, DeviceType, Reading, StateField, registry
from hubserver.exceptions import ConfigurationError
from tests.testapp.devices import BaseSensor, Hygrometer, Thermometer


@pytest.fixture
def scratch_types():
    """Unregister the types a test declares, so the global registry stays as the apps made it."""
    before = {t.type_name() for t in registry.all()}
    yield
    for device_type in registry.all():
        if device_type.type_name() not in before:
            registry.unregister(device_type)


def test_descriptors_are_collected_and_removed_from_the_class():
    assert set(Thermometer._readings) == {"temperature", "uptime", "door_open", "label"}
    assert set(Thermometer._state_fields) == {"mode", "setpoint"}
    assert set(Thermometer._commands) == {"reboot", "set_mode"}
    assert "temperature" not in vars(Thermometer)
    assert Thermometer._readings["door_open"].name == "door_open"


def test_subclass_inherits_and_overrides():
    assert Hygrometer._readings["uptime"] is BaseSensor._readings["uptime"]
    assert Hygrometer._readings["temperature"].min_value == -80
    assert BaseSensor._readings["temperature"].min_value == -40
    assert list(Hygrometer._commands) == ["reboot"]


def test_abstract_types_are_not_registered_but_their_subclasses_are():
    assert "basesensor" not in registry
    assert registry.get("thermometer") is Thermometer
    assert "devicetype" not in registry


def test_override_may_change_the_kind_of_declaration(scratch_types):
    class Lamp(DeviceType):
        brightness = Reading(int)

    class DimmableLamp(Lamp):
        brightness = StateField(int, default=100)

    assert "brightness" not in DimmableLamp._readings
    assert DimmableLamp._state_fields["brightness"].default == 100
    assert "brightness" in Lamp._readings


def test_meta_verbose_name_and_inherited_broker(scratch_types):
    class LoRaNode(DeviceType):
        class Meta:
            broker = "lorawan"

    class LoRaValve(LoRaNode):
        class Meta:
            verbose_name = "Valve on LoRa"

    assert LoRaNode._meta.verbose_name == "Lo Ra Node"
    assert LoRaNode._meta.broker == "lorawan"
    assert LoRaValve._meta.broker == "lorawan"
    assert LoRaValve._meta.verbose_name == "Valve on LoRa"
    assert Thermometer._meta.broker == "default"


def test_unknown_meta_option_is_an_error(scratch_types):
    with pytest.raises(ConfigurationError, match="unknown option"):

        class Oops(DeviceType):
            class Meta:
                ordering = ["x"]


def test_type_name_is_normalized():
    assert Thermometer.type_name() == "thermometer"


class TestPayloadSchemas:
    def test_data_schema_accepts_both_formats_and_rejects_wrong_types(self):
        schema = Thermometer.data_schema()
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate({"temperature": 21.5, "door_open": False, "extra": 1}, schema)
        jsonschema.validate(
            {"readings": [{"type": "temperature", "value": 21.5}], "timestamp": "2025-01-15T12:00:00+00:00"}, schema
        )
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"temperature": 120}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"readings": [{"type": "temperature", "value": "hot"}]}, schema)

    def test_status_schema(self):
        schema = Thermometer.status_schema()
        jsonschema.validate({"status": "online", "battery": 50, "firmware_version": "1.0"}, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"status": "sleepy"}, schema)

    def test_command_schemas(self):
        schemas = Thermometer.command_schemas()
        assert set(schemas) == {"reboot", "set_mode"}
        assert schemas["set_mode"]["qos"] == 2
        jsonschema.validate(
            {"command": "set_mode", "payload": {"mode": "auto"}, "correlation_id": "c1"}, schemas["set_mode"]["command"]
        )
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(
                {"command": "set_mode", "payload": {"mode": "turbo"}, "correlation_id": "c1"},
                schemas["set_mode"]["command"],
            )
        jsonschema.validate({"correlation_id": "c1", "status": "ok", "result": {"x": 1}}, schemas["set_mode"]["reply"])

    def test_whole_document(self):
        document = Thermometer.json_schema()
        assert document["name"] == "thermometer"
        assert document["readings"]["temperature"]["unit"] == "°C"
        assert document["state_fields"]["mode"]["enum"] == ["auto", "manual"]


def test_command_declared_in_class_body_keeps_its_settings():
    command = Thermometer._commands["set_mode"]
    assert isinstance(command, Command)
    assert (command.qos, command.timeout, command.name) == (2, 5, "set_mode")


def test_meta_quota_overrides_the_client_quotas_and_is_checked(scratch_types):
    class Gateway(DeviceType):
        class Meta:
            quota = {"message_rate": 5000, "message_burst": 10000}

    class SubGateway(Gateway):
        pass

    assert Gateway._meta.quota == {"message_rate": 5000, "message_burst": 10000}
    assert SubGateway._meta.quota == Gateway._meta.quota, "inherited"
    assert Thermometer._meta.quota == {}
    with pytest.raises(ConfigurationError, match="unknown key 'rate'"):

        class Typo(DeviceType):
            class Meta:
                quota = {"rate": 10}

    with pytest.raises(ConfigurationError, match="must be a number >= 0"):

        class Negative(DeviceType):
            class Meta:
                quota = {"byte_rate": -1}
