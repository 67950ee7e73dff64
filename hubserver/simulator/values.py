"""What a simulated device reports: one generator per declared Reading.

Without ``realistic`` every report draws fresh uniform values (within the declared range, or 0..100 where
none is declared), so the hub stores valid data of no particular shape. With ``realistic`` a reading
of a common quantity (temperature, wind, rain, power, position...: see ``profiles``) behaves like one;
any other numeric reading starts near the middle of its range and moves as a bounded random walk with a
little pull back towards the middle (a temperature drifts, it does not jump from -60 to 70); readings in
energy or volume units (kWh, Wh, m³, l) are counters that only grow; booleans flip now and then; strings
keep their value most of the time. Every value is clamped to the declared range, so a realistic run never
produces a reading the hub refuses.
"""

import math
import random

from .profiles import profile_for

DEFAULT_SPAN = 100.0
COUNTER_UNITS = frozenset({"kWh", "Wh", "MWh", "m³", "m3", "l", "L"})
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")
# Realistic walk: a step is this fraction of the range (one standard deviation); the pull towards the middle.
STEP_FRACTION = 0.02
PULL = 0.05
FLIP_PROBABILITY = 0.05
DECIMALS = 2


def bounds(reading):
    """``(low, high)`` for a numeric reading: the declared range, widened to DEFAULT_SPAN where open."""
    low, high = reading.min_value, reading.max_value
    if low is None and high is None:
        low, high = 0.0, DEFAULT_SPAN
    elif low is None:
        low = high - DEFAULT_SPAN
    elif high is None:
        high = low + DEFAULT_SPAN
    if reading.value_type is int:
        low, high = math.ceil(low), math.floor(high)
    return low, high


def _finish(reading, value, decimals=DECIMALS):
    """Round for the wire and clamp to the declared range (rounding must not step over a bound)."""
    if isinstance(value, bool) or reading.value_type is bool:
        return bool(value)
    value = round(value) if reading.value_type is int else round(value, decimals)
    if reading.min_value is not None:
        value = max(value, reading.min_value)
    if reading.max_value is not None:
        value = min(value, reading.max_value)
    return int(value) if reading.value_type is int else float(value)


class ValueSource:
    """The next value of one Reading, each time ``next()`` is called."""

    def __init__(self, reading, realistic=False, rng=None):
        self.reading = reading
        self.realistic = realistic
        self.rng = rng or random.Random()
        self.value = None
        self._counter = realistic and reading.value_type in (int, float) and reading.unit in COUNTER_UNITS

    def next(self):
        kind = self.reading.value_type
        if kind is bool:
            self.value = self._next_bool()
        elif kind is str:
            self.value = self._next_str()
        else:
            self.value = _finish(self.reading, self._next_number())
        return self.value

    def _next_bool(self):
        if not self.realistic or self.value is None:
            return self.rng.random() < 0.5
        return (not self.value) if self.rng.random() < FLIP_PROBABILITY else self.value

    def _next_str(self):
        if self.realistic and self.value is not None and self.rng.random() >= FLIP_PROBABILITY:
            return self.value
        return f"{self.rng.choice(WORDS)}-{self.rng.randint(1, 99)}"

    def _next_number(self):
        low, high = bounds(self.reading)
        if not self.realistic:
            if self.reading.value_type is int:
                return self.rng.randint(low, high)
            return self.rng.uniform(low, high)
        span = high - low
        if self._counter:
            start = self.rng.uniform(low, low + span * 0.1) if self.value is None else self.value
            step = abs(self.rng.gauss(0, span * STEP_FRACTION / 10))
            if self.reading.max_value is not None and start + step > high:
                return high
            return start + step
        middle = (low + high) / 2
        if self.value is None:
            return middle + self.rng.uniform(-0.25, 0.25) * span
        value = self.value + self.rng.gauss(0, span * STEP_FRACTION) + PULL * (middle - self.value)
        # Bounce off the bounds instead of sticking to them.
        if value > high:
            value = high - (value - high)
        if value < low:
            value = low + (low - value)
        return min(max(value, low), high)


class ReadingValues:
    """One value source per Reading of a DeviceType; ``next()`` is a data payload's readings.

    ``interval`` is the seconds between reports (rain and energy accumulate over it); ``next(state)`` may be
    given the device's StateFields (a plug whose relay is off draws no power)."""

    def __init__(self, device_type, realistic=False, rng=None, interval=5.0):
        self.rng = rng or random.Random()
        self.interval = interval
        readings = device_type._readings
        self.order = list(readings)
        self.sources = {}
        for name, reading in readings.items():
            profile = profile_for(name, reading, readings, self.rng) if realistic else None
            self.sources[name] = profile or ValueSource(reading, realistic, self.rng)
        self.readings = readings
        self.phases = sorted(self.order, key=lambda name: getattr(self.sources[name], "phase", 0))
        self.shared = {}
        self.reports = 0

    def next(self, state=None):
        self.reports += 1
        context = {
            "values": {},
            "interval": self.interval,
            "state": state or {},
            "shared": self.shared,
            "report": self.reports,
        }
        for name in self.phases:
            source = self.sources[name]
            if isinstance(source, ValueSource):
                value = source.next()
            else:
                decimals = getattr(source, "decimals", None)
                value = _finish(self.readings[name], source.next(self.rng, context), decimals or DECIMALS)
            context["values"][name] = value
        return {name: context["values"][name] for name in self.order}
