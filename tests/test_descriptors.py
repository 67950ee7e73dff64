"""Reading, StateField and Command: validation, Django fields and JSON Schema."""

import pytest
from django.db import models

from hubserver import Command, Reading, StateField
from hubserver.exceptions import ConfigurationError, HubserverError, ValidationError


class TestReading:
    def test_signature_defaults(self):
        reading = Reading(float)
        assert (reading.unit, reading.min_value, reading.max_value, reading.description) == ("", None, None, "")

    def test_float_accepts_ints_and_coerces(self):
        assert Reading(float).validate(3) == 3.0
        assert isinstance(Reading(float).validate(3), float)

    @pytest.mark.parametrize("value", [True, "21.5", None, float("nan"), float("inf"), [1]])
    def test_float_rejects_non_numbers(self, value):
        with pytest.raises(ValidationError):
            Reading(float).validate(value)

    def test_int_accepts_integral_floats_only(self):
        assert Reading(int).validate(4.0) == 4
        with pytest.raises(ValidationError, match="expected an integer"):
            Reading(int).validate(4.5)

    def test_bool_and_str(self):
        assert Reading(bool).validate(False) is False
        with pytest.raises(ValidationError):
            Reading(bool).validate(0)
        assert Reading(str).validate("ok") == "ok"
        with pytest.raises(ValidationError):
            Reading(str).validate(5)

    def test_range_is_inclusive_and_named_in_errors(self):
        reading = Reading(float, min_value=-40, max_value=85)
        reading.name = "temperature"
        assert reading.validate(-40) == -40.0
        assert reading.validate(85) == 85.0
        with pytest.raises(ValidationError, match=r"temperature: 85\.5 is above the maximum 85"):
            reading.validate(85.5)
        with pytest.raises(ValidationError, match="below the minimum"):
            reading.validate(-41)

    def test_bad_declarations_are_refused(self):
        with pytest.raises(ConfigurationError):
            Reading(list)
        with pytest.raises(ConfigurationError):
            Reading(float, min_value=10, max_value=0)
        with pytest.raises(ConfigurationError):
            Reading(str, min_value=1)

    @pytest.mark.parametrize(
        ("value_type", "field_class"),
        [
            (float, models.FloatField),
            (int, models.BigIntegerField),
            (bool, models.BooleanField),
            (str, models.TextField),
        ],
    )
    def test_django_field_is_nullable(self, value_type, field_class):
        field = Reading(value_type).to_django_field()
        assert type(field) is field_class
        assert field.null

    def test_json_schema(self):
        schema = Reading(float, unit="%", min_value=0, max_value=100, description="RH").json_schema()
        assert schema == {"type": "number", "minimum": 0, "maximum": 100, "description": "RH", "x-unit": "%"}


class TestStateField:
    def test_choices_and_default_become_the_django_field(self):
        field = StateField(str, default="off", choices=["on", "off"]).to_django_field()
        assert isinstance(field, models.CharField)
        assert field.default == "off"
        assert field.choices == [("on", "on"), ("off", "off")]
        assert not field.null

    def test_no_default_means_nullable(self):
        field = StateField(int).to_django_field()
        assert isinstance(field, models.BigIntegerField)
        assert field.null

    def test_default_must_be_a_valid_choice(self):
        with pytest.raises(ValidationError):
            StateField(str, default="dim", choices=["on", "off"])

    def test_validate(self):
        field = StateField(str, choices=[("on", "On"), ("off", "Off")])
        assert field.validate("on") == "on"
        with pytest.raises(ValidationError, match="not one of"):
            field.validate("maybe")


class TestCommand:
    def test_signature_defaults(self):
        command = Command()
        assert (command.description, command.params, command.qos, command.timeout) == ("", {"type": "object"}, 1, 30)

    def test_payload_is_validated_against_params(self):
        command = Command(
            params={
                "type": "object",
                "properties": {"seconds": {"type": "integer", "minimum": 1}},
                "required": ["seconds"],
            }
        )
        command.name = "set_interval"
        assert command.validate({"seconds": 5}) == {"seconds": 5}
        with pytest.raises(ValidationError, match="set_interval payload/seconds"):
            command.validate({"seconds": 0})
        with pytest.raises(ValidationError, match="'seconds' is a required property"):
            command.validate({})

    def test_empty_payload_is_an_empty_object(self):
        assert Command().validate(None) == {}

    @pytest.mark.parametrize(
        "kwargs", [{"qos": 3}, {"timeout": 0}, {"timeout": True}, {"params": []}, {"params": {"type": "nonsense"}}]
    )
    def test_bad_declarations_are_refused(self, kwargs):
        with pytest.raises(ConfigurationError):
            Command(**kwargs)


def test_every_package_error_derives_from_the_base():
    from django.core.exceptions import ImproperlyConfigured

    from hubserver import exceptions

    for name in dir(exceptions):
        value = getattr(exceptions, name)
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == exceptions.__name__:
            assert issubclass(value, HubserverError), name
    assert issubclass(ConfigurationError, ImproperlyConfigured)
