"""A devices file of your own, used without a Django project:

    hubserver --devices examples/greenhouse_devices.py run

The hub generates the models, writes their migrations into its data directory and applies them.
"""

from hubserver import Command, DeviceType, Reading, StateField


class SoilProbe(DeviceType):
    moisture = Reading(float, unit="%", min_value=0, max_value=100, description="Volumetric water content")
    soil_temperature = Reading(float, unit="°C", min_value=-20, max_value=60)
    conductivity = Reading(float, unit="mS/cm", min_value=0, max_value=20)


class IrrigationValve(DeviceType):
    flow_rate = Reading(float, unit="l/min", min_value=0, max_value=200)
    valve = StateField(str, default="closed", choices=["open", "closed"])

    open = Command(
        description="Open the valve for a number of minutes",
        params={
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 240}},
            "required": ["minutes"],
        },
    )
    close = Command(description="Close the valve now")

    def on_data(self, device, readings):
        if readings.get("flow_rate", 0) > 150:
            print(f"{device.device_id}: flow {readings['flow_rate']} l/min, check for a burst pipe")
