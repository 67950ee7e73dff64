"""ready() imports every app's devices.py and honours AUTO_ADMIN."""

from django.contrib.admin import AdminSite
from django.test import override_settings

from hubserver.apps import discover
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading


def test_devices_modules_of_installed_apps_are_imported():
    import sys

    from hubserver import registry

    assert "tests.testapp.devices" in sys.modules
    assert "hubserver.devicetypes.devices" in sys.modules
    assert registry.get("thermometer").__module__ == "tests.testapp.devices"


def test_default_admin_site_has_generated_admins():
    from django.contrib import admin

    for model in (ThermometerDevice, ThermometerReading, ThermometerMessage):
        assert admin.site.is_registered(model)


def test_auto_admin_true_registers_every_type():
    site = AdminSite(name="scratch")
    discover(site=site)
    assert site.is_registered(ThermometerDevice)
    device_admin = site._registry[ThermometerDevice]
    assert {"mode", "setpoint"} <= set(device_admin.list_display)
    assert {"mqtt_password_hash", "api_key"} <= set(device_admin.readonly_fields)


def test_auto_admin_false_registers_nothing():
    site = AdminSite(name="scratch")
    with override_settings(HUBSERVER={"AUTO_ADMIN": False}):
        discover(site=site)
    assert not site.is_registered(ThermometerDevice)
