"""Device types the tests declare, discovered by the hub at ready() like any app's devices.py."""

from hubserver import Command, DeviceType, Reading, StateField


class BaseSensor(DeviceType):
    """Abstract: shared by the sensors below, never registered itself."""

    _abstract = True

    temperature = Reading(float, unit="°C", min_value=-40, max_value=85)
    uptime = Reading(int, unit="s", min_value=0)
    reboot = Command(description="Restart")


class Thermometer(BaseSensor):
    door_open = Reading(bool)
    label = Reading(str)
    mode = StateField(str, default="auto", choices=["auto", "manual"])
    setpoint = StateField(float, default=21.0)

    set_mode = Command(
        description="Switch mode",
        params={"type": "object", "properties": {"mode": {"enum": ["auto", "manual"]}}, "required": ["mode"]},
        qos=2,
        timeout=5,
    )

    class Meta:
        verbose_name = "Test thermometer"


class Hygrometer(BaseSensor):
    humidity = Reading(float, unit="%", min_value=0, max_value=100)
    # Overrides the inherited range: this probe survives the cold.
    temperature = Reading(float, unit="°C", min_value=-80, max_value=60)

    def on_data(self, device, readings):
        from . import hooks

        hooks.calls.append(("on_data", device.device_id, dict(readings)))

    def on_status_change(self, device, old_status, new_status):
        from . import hooks

        hooks.calls.append(("on_status_change", device.device_id, old_status, new_status))
