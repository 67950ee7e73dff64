"""Realistic device types that work out of the box; copy one into your own ``devices.py`` to adapt it."""

from hubserver import Command, DeviceType, Reading, StateField


class WeatherStation(DeviceType):
    """An outdoor station reporting every few minutes."""

    temperature = Reading(float, unit="°C", min_value=-60, max_value=70, description="Air temperature")
    humidity = Reading(float, unit="%", min_value=0, max_value=100, description="Relative humidity")
    pressure = Reading(float, unit="hPa", min_value=800, max_value=1100, description="Barometric pressure, sea level")
    wind_speed = Reading(float, unit="m/s", min_value=0, max_value=120, description="Mean wind speed")
    rain = Reading(float, unit="mm", min_value=0, max_value=500, description="Rain since the last report")

    report_interval = StateField(int, default=300, unit="s", description="Seconds between reports")

    set_interval = Command(
        description="Change how often the station reports",
        params={
            "type": "object",
            "properties": {"seconds": {"type": "integer", "minimum": 10, "maximum": 86400}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
    )
    reboot = Command(description="Restart the station", timeout=60)

    class Meta:
        verbose_name = "Weather station"


class SmartPlug(DeviceType):
    """A switchable mains socket that meters what it powers."""

    power = Reading(float, unit="W", min_value=0, max_value=3680, description="Active power")
    voltage = Reading(float, unit="V", min_value=0, max_value=260, description="RMS voltage")
    current = Reading(float, unit="A", min_value=0, max_value=16, description="RMS current")
    energy = Reading(float, unit="kWh", min_value=0, description="Energy counter since installation")

    relay = StateField(str, default="off", choices=["on", "off"], description="Relay position")
    power_on_state = StateField(
        str, default="last", choices=["on", "off", "last"], description="Relay position after a power cut"
    )

    switch = Command(
        description="Turn the relay on or off",
        params={
            "type": "object",
            "properties": {"state": {"enum": ["on", "off", "toggle"]}},
            "required": ["state"],
            "additionalProperties": False,
        },
        timeout=10,
    )
    reboot = Command(description="Restart the plug (the relay keeps its position)", timeout=60)

    class Meta:
        verbose_name = "Smart plug"


class GpsTracker(DeviceType):
    """A battery-powered asset tracker."""

    latitude = Reading(float, unit="°", min_value=-90, max_value=90)
    longitude = Reading(float, unit="°", min_value=-180, max_value=180)
    altitude = Reading(float, unit="m", min_value=-500, max_value=10000)
    speed = Reading(float, unit="km/h", min_value=0, max_value=400)
    heading = Reading(float, unit="°", min_value=0, max_value=360)
    satellites = Reading(int, min_value=0, max_value=64, description="Satellites in the fix")
    moving = Reading(bool, description="Motion sensor state")

    mode = StateField(str, default="normal", choices=["normal", "power_saving", "tracking"])

    locate = Command(description="Report a fix now", qos=1, timeout=120)
    set_mode = Command(
        description="Trade battery life against update rate",
        params={
            "type": "object",
            "properties": {"mode": {"enum": ["normal", "power_saving", "tracking"]}},
            "required": ["mode"],
        },
    )

    class Meta:
        verbose_name = "GPS tracker"


class EnergyMeter(DeviceType):
    """A three-phase electricity meter read out over its optical port."""

    import_energy = Reading(float, unit="kWh", min_value=0, description="Energy imported from the grid")
    export_energy = Reading(float, unit="kWh", min_value=0, description="Energy exported to the grid")
    active_power = Reading(float, unit="W", description="Net active power; negative when exporting")
    power_l1 = Reading(float, unit="W")
    power_l2 = Reading(float, unit="W")
    power_l3 = Reading(float, unit="W")
    frequency = Reading(float, unit="Hz", min_value=45, max_value=65)
    tariff = Reading(int, min_value=1, max_value=4, description="Active tariff register")

    class Meta:
        verbose_name = "Energy meter"
