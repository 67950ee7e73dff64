"""The registry: normalized names, collisions, lookups."""

import pytest

from hubserver import DeviceType, RegistryError, registry
from hubserver.devicetype import DeviceTypeMeta
from hubserver.registry import DeviceTypeRegistry, normalize_name
from tests.testapp.devices import Hygrometer, Thermometer
from tests.testapp.models import HygrometerDevice, ThermometerDevice, ThermometerMessage, ThermometerReading


@pytest.mark.parametrize("name", ["WeatherStation", "weather_station", "WEATHERSTATION", "Weather_Station"])
def test_names_are_normalized(name):
    assert normalize_name(name) == "weatherstation"
    assert registry.get(name).__name__ == "WeatherStation"
    assert name in registry


def test_collision_names_both_classes_and_the_way_out():
    first = DeviceTypeMeta("PoolPump", (DeviceType,), {"__module__": "garden.devices"})
    try:
        with pytest.raises(RegistryError) as caught:
            DeviceTypeMeta("Pool_Pump", (DeviceType,), {"__module__": "backyard.devices"})
        message = str(caught.value)
        both = "backyard.devices.Pool_Pump and garden.devices.PoolPump"
        assert f"Two device types are named 'poolpump': {both}" in message
        assert "Rename one of the two classes" in message
        assert "\n" not in message
        assert registry.get("poolpump") is first
    finally:
        registry.unregister("poolpump")


def test_collision_with_the_catalogue_message():
    with pytest.raises(RegistryError) as caught:

        class Weather_Station(DeviceType):
            pass

    message = str(caught.value)
    here = f"tests.test_registry.test_collision_with_the_catalogue_message.<locals>.Weather_Station ({__file__}:"
    assert message.startswith(f"Two device types are named 'weatherstation': {here}")
    assert "hubserver.devicetypes.devices.WeatherStation (" in message and "devices.py:" in message
    assert "Weather_Station is in the hub's built-in catalogue" not in message
    assert "WeatherStation is in the hub's built-in catalogue" in message
    assert "HUBSERVER_CATALOGUE=1" in message and "INSTALLED_APPS" in message
    assert registry.get("weatherstation").__module__ == "hubserver.devicetypes.devices"


def test_lookups():
    assert registry.get("nonexistent") is None
    assert registry.get_models("thermometer") == (ThermometerDevice, ThermometerReading, ThermometerMessage)
    assert registry.get_models("nonexistent") is None
    assert registry.get_by_device_model(ThermometerDevice) is Thermometer
    assert registry.get_by_device_model(HygrometerDevice()) is Hygrometer
    assert registry.get_by_device_model(ThermometerReading) is None
    assert Thermometer in registry.all()
    assert (Thermometer, ThermometerDevice, ThermometerReading, ThermometerMessage) in registry.all_with_models()
    assert len(registry) == len(registry.all()) >= 6


def test_a_fresh_registry_is_independent():
    fresh = DeviceTypeRegistry()
    assert len(fresh) == 0
    fresh.register(Thermometer)
    assert "thermometer" in fresh and fresh.get_models("thermometer") is None
