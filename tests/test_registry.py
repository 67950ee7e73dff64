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


def test_collision_names_both_classes():
    first = DeviceTypeMeta("PoolPump", (DeviceType,), {"__module__": "garden.devices"})
    try:
        with pytest.raises(RegistryError) as caught:
            DeviceTypeMeta("Pool_Pump", (DeviceType,), {"__module__": "backyard.devices"})
        message = str(caught.value)
        assert "DeviceType name conflict: 'Pool_Pump'" in message
        assert "backyard.devices.Pool_Pump" in message
        assert "already registered by garden.devices.PoolPump" in message
        assert registry.get("poolpump") is first
    finally:
        registry.unregister("poolpump")


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
