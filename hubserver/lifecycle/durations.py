"""Retention durations: ``"90d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"``, ``"1y"`` (365 days), or
``None`` for forever."""

import re
from datetime import timedelta

from ..exceptions import ConfigurationError

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
FOREVER = None
EXAMPLES = '"90d", "12h", "30m", "2w", "1y" or None (forever)'


def parse_duration(value, where):
    """A positive ``timedelta`` from ``"<number><unit>"``, or None for None; ConfigurationError otherwise."""
    if value is None:
        return None
    match = _PATTERN.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigurationError(f"{where} must be a duration such as {EXAMPLES}, got {value!r}")
    amount = int(match.group(1))
    if amount <= 0:
        raise ConfigurationError(f"{where} must be longer than zero, got {value!r} (use None to keep forever)")
    return timedelta(seconds=amount * UNITS[match.group(2)])


def format_duration(delta):
    """``timedelta(days=90)`` -> ``"90d"``; None -> ``"forever"``."""
    if delta is None:
        return "forever"
    seconds = int(delta.total_seconds())
    for unit in ("y", "d", "h", "m"):
        if seconds % UNITS[unit] == 0:
            return f"{seconds // UNITS[unit]}{unit}"
    return f"{seconds}s"
