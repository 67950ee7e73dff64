"""Realistic behaviour of common quantities, recognised by a Reading's name and unit (the catalogue's, and
any type of a user's that names its readings the same way): a temperature drifts around a mild value, wind
is usually a breeze and rarely reaches storm force, rain comes in showers and is counted in tipping-bucket
steps of 0.2 mm, a plug's power follows the appliance behind it (and its relay), energy counters grow by
the power over the report interval, a tracker moves along its heading at its speed.

A declared range is what the hub accepts, not what is typical (a station may accept -60..70 °C), so a
profile has its own typical centre and spread; every value is still clamped to the declared range.

Each profile is ``next(rng, context) -> value``; ``context`` has the values already made for this report
(``values``), the seconds since the last report (``interval``) and the device's StateFields (``state``).
Profiles of one phase only read values of earlier phases.
"""

import math

from ..descriptors import Reading

M_PER_DEGREE = 111_320.0
STORM_FORCE = 24.5  # m/s, Beaufort 10


class Walk:
    """A mean-reverting random walk (Ornstein-Uhlenbeck): starts anywhere in its typical spread, moves a
    little each report, and is pulled back to ``center`` (in log space with ``log``, for skewed quantities).

    ``reversion`` is the pull over ``per`` seconds (a weather station's five-minute report): reported every
    2 s, a temperature moves as far in five minutes as it does in one report every five minutes, not 150
    times as far. The stationary spread is ``spread`` whatever the interval."""

    phase = 0
    PER = 300.0

    def __init__(self, center, spread, low=None, high=None, reversion=0.05, log=False, decimals=None, per=PER):
        self.center, self.spread = (math.log(center), spread) if log else (center, spread)
        self.low, self.high, self.reversion, self.log, self.decimals = low, high, reversion, log, decimals
        self.per = per
        self.x = None

    def next(self, rng, context):
        if self.x is None:
            self.x = rng.gauss(self.center, self.spread)
        else:
            # The exact step of the process over the interval: pull a, noise that keeps the spread.
            pull = 1 - (1 - self.reversion) ** (max(context["interval"], 0.001) / self.per)
            self.x += pull * (self.center - self.x) + rng.gauss(0, self.spread * math.sqrt(pull * (2 - pull)))
        value = math.exp(self.x) if self.log else self.x
        if self.low is not None:
            value = max(value, self.low)
        if self.high is not None:
            value = min(value, self.high)
        return value


class RainGauge:
    """Dry spells and showers; while it rains, a rate in mm/h. The gauge tips every 0.2 mm and reports the
    tips since the last report, so rain accumulates over reports instead of appearing in lumps."""

    phase = 0
    TIP = 0.2

    def __init__(self, start_probability=0.01, stop_probability=0.05, median_rate=2.0):
        self.start, self.stop, self.median_rate = start_probability, stop_probability, median_rate
        self.raining = False
        self.rate = 0.0
        self.collected = 0.0

    def next(self, rng, context):
        if self.raining and rng.random() < self.stop:
            self.raining = False
        elif not self.raining and rng.random() < self.start:
            self.raining = True
            self.rate = self.median_rate * math.exp(rng.gauss(0, 0.8))  # drizzle to downpour
        if self.raining:
            self.rate = max(0.1, self.rate * math.exp(rng.gauss(0, 0.1)))
            self.collected += self.rate * context["interval"] / 3600
        tips = int(self.collected / self.TIP)
        self.collected -= tips * self.TIP
        return round(tips * self.TIP, 1)


class Sticky:
    """A value that stays and now and then changes to another of ``choices`` (a tariff register)."""

    phase = 0

    def __init__(self, choices, change_probability=0.01):
        self.choices, self.change, self.value = list(choices), change_probability, None

    def next(self, rng, context):
        if self.value is None or rng.random() < self.change:
            self.value = rng.choice(self.choices)
        return self.value


class Appliance:
    """What a smart plug powers: off some of the time or on at the appliance's own level (a lamp, a TV, a
    kettle), with a little noise; nothing while the plug's relay is off, and on at once when it is switched on."""

    phase = 0
    LOADS = (6.0, 40.0, 60.0, 110.0, 450.0, 800.0, 1200.0, 2000.0)

    def __init__(self, switch_probability=0.03):
        self.switch = switch_probability
        self.on = None
        self.load = 0.0
        self.relay = None

    def next(self, rng, context):
        relay = context["state"].get("relay")
        switched_on, self.relay = self.relay == "off" and relay != "off", relay
        if relay == "off":
            return 0.0
        if switched_on:
            self.on = True  # a plug is switched on to use what it powers
            self.load = rng.choice(self.LOADS)
        elif self.on is None or rng.random() < self.switch:
            self.on = rng.random() < 0.5 if self.on is None else not self.on
            if self.on:
                self.load = rng.choice(self.LOADS)
        return round(self.load * rng.gauss(1, 0.02), 1) if self.on else round(rng.uniform(0.2, 0.5), 1)


class Ratio:
    """A value derived from this report's others: ``numerator / denominator`` (current = power / voltage)."""

    phase = 1

    def __init__(self, numerator, denominator):
        self.numerator, self.denominator = numerator, denominator

    def next(self, rng, context):
        values = context["values"]
        below = values.get(self.denominator) or 0
        return abs(values.get(self.numerator, 0)) / below if below else 0.0


class Sum:
    """The sum of this report's ``names`` (a meter's net power over its phases)."""

    phase = 1

    def __init__(self, names):
        self.names = names

    def next(self, rng, context):
        return sum(context["values"].get(name, 0) for name in self.names)


class EnergyCounter:
    """A kWh counter since installation that grows by ``power`` (W, this report's value) over the interval:
    only what is imported (``sign`` 1) or exported (``sign`` -1)."""

    phase = 2
    decimals = 3

    def __init__(self, power, sign=1):
        self.power, self.sign = power, sign
        self.value = None

    def next(self, rng, context):
        if self.value is None:
            self.value = rng.uniform(50, 5000)
        watts = max(0.0, self.sign * context["values"].get(self.power, 0.0))
        self.value += watts * context["interval"] / 3_600_000
        return self.value


class Moving:
    """A tracker is moving or parked, for a while each."""

    phase = 0

    def __init__(self, stay_probability=0.97):
        self.stay, self.value = stay_probability, None

    def next(self, rng, context):
        if self.value is None:
            self.value = rng.random() < 0.5
        elif rng.random() > self.stay:
            self.value = not self.value
        return self.value


class Speed:
    phase = 1

    def __init__(self):
        self.walk = Walk(50, 20, low=0, high=130, reversion=0.1)

    def next(self, rng, context):
        return self.walk.next(rng, context) if context["values"].get("moving", True) else 0.0


class Heading:
    phase = 1

    def __init__(self):
        self.value = None

    def next(self, rng, context):
        if self.value is None:
            self.value = rng.uniform(0, 360)
        elif context["values"].get("moving", True):
            self.value = (self.value + rng.gauss(0, 8)) % 360
        return self.value


class Position:
    """Latitude or longitude of a tracker that travels at ``speed`` (km/h) along ``heading`` (degrees); the
    two share one position, moved once per report."""

    phase = 2
    decimals = 6

    def __init__(self, axis):
        self.axis = axis

    def next(self, rng, context):
        shared = context["shared"]
        if "position" not in shared:
            shared["position"] = [rng.uniform(45, 55), rng.uniform(5, 15)]
            shared["moved"] = context["report"]
        position = shared["position"]
        if shared["moved"] != context["report"]:
            shared["moved"] = context["report"]
            metres = context["values"].get("speed", 0.0) / 3.6 * context["interval"]
            heading = math.radians(context["values"].get("heading", 0.0))
            position[0] = min(89.9, max(-89.9, position[0] + metres * math.cos(heading) / M_PER_DEGREE))
            scale = M_PER_DEGREE * max(0.01, math.cos(math.radians(position[0])))
            position[1] = (position[1] + metres * math.sin(heading) / scale + 180) % 360 - 180
        return position[0] if self.axis == "latitude" else position[1]


def _unit(reading):
    return (reading.unit or "").strip()


def mains_powered(readings):
    """Does a type with these readings (name -> Reading) run on the mains? It meters the grid: a voltage in
    V, a frequency in Hz or an energy counter in kWh. Such a device (a plug, a meter) has no battery."""
    return any(
        (_unit(reading), name.lower()) in {("V", "voltage"), ("Hz", "frequency")} or _unit(reading) == "kWh"
        for name, reading in readings.items()
    )


def profile_for(name, reading: Reading, readings, rng):
    """The realistic profile of ``reading`` (named ``name``, among the type's ``readings``), or None."""
    unit, lowered = _unit(reading), name.lower()
    numeric = reading.value_type in (int, float)
    if reading.value_type is bool and lowered in ("moving", "motion", "in_motion"):
        return Moving()
    if not numeric:
        return None
    if unit == "°C" and "temp" in lowered:
        return Walk(rng.uniform(8, 20), 5, reversion=0.004)  # about 0.5 °C in five minutes at most
    if unit == "%" and "humid" in lowered:
        return Walk(65, 12, low=15, high=100, reversion=0.005)
    if unit == "hPa":
        return Walk(1013, 8, reversion=0.002)
    if unit == "m/s" and "wind" in lowered:
        return Walk(4.0, 0.5, reversion=0.1, log=True)  # median 4 m/s; above storm force about once in 2,000
    if unit == "mm" and ("rain" in lowered or "precip" in lowered):
        return RainGauge()
    if unit == "V":
        return Walk(230, 1.5, reversion=0.2)
    if unit == "Hz":
        return Walk(50, 0.02, reversion=0.3, decimals=3)  # the grid holds it within a few hundredths
    if unit == "A" and "power" in readings and "voltage" in readings:
        return Ratio("power", "voltage")
    if unit == "W" and lowered == "power":
        return Appliance()
    if unit == "W" and lowered.startswith("power_l"):
        return Walk(rng.uniform(100, 600), 150, low=0, reversion=0.1)
    if unit == "W" and lowered == "active_power":
        phases = [n for n in readings if n.startswith("power_l") and _unit(readings[n]) == "W"]
        return Sum(phases) if phases else Walk(800, 400, reversion=0.1)
    if unit == "kWh":
        power = next((n for n in ("power", "active_power") if n in readings), None)
        if power is not None:
            return EnergyCounter(power, sign=-1 if "export" in lowered else 1)
        return None
    if lowered == "tariff" and reading.value_type is int:
        low, high = reading.min_value or 1, min(reading.max_value or 2, 2)
        return Sticky(range(int(low), int(high) + 1))
    if lowered == "speed" and unit == "km/h":
        return Speed()
    if lowered == "heading" and unit == "°":
        return Heading()
    if lowered in ("latitude", "longitude") and unit == "°":
        return Position(lowered)
    if lowered == "altitude" and unit == "m":
        return Walk(rng.uniform(50, 600), 15, reversion=0.05)
    if lowered == "satellites":
        return Walk(9, 2, low=4, high=14, reversion=0.2, decimals=0)
    return None
