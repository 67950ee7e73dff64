"""How long each kind of row is kept: ``Meta.retention`` of a DeviceType over the ``HUBSERVER`` defaults.

    class WeatherStation(DeviceType):
        class Meta:
            retention = {"messages": "7d", "readings": "400d", "rollups": {"1m": "30d", "1d": None}}

Kinds: ``messages`` (the inbound audit trail, failed messages included), ``commands`` (outbound commands
and what their replies said), ``readings`` (raw readings, by their ``timestamp``) and ``rollups`` (per
bucket: one duration for all of ``1m``, ``1h`` and ``1d``, or a dict naming some of them). A kind the
type does not name comes from its parent's ``Meta.retention``, then from the settings
(``MESSAGE_RETENTION``, ``COMMAND_RETENTION``, ``READING_RETENTION``, ``ROLLUP_RETENTION``).
"""

from dataclasses import dataclass
from datetime import timedelta

from ..exceptions import ConfigurationError
from .buckets import BUCKETS
from .durations import parse_duration

KINDS = ("messages", "commands", "readings", "rollups")
SETTINGS = {
    "messages": "MESSAGE_RETENTION",
    "commands": "COMMAND_RETENTION",
    "readings": "READING_RETENTION",
    "rollups": "ROLLUP_RETENTION",
}


def parse_rollups(value, where):
    """``{bucket label: timedelta or None}`` for the buckets ``value`` names (all three for one duration)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(BUCKETS))
        if unknown:
            raise ConfigurationError(
                f"{where}: unknown bucket(s) {', '.join(map(repr, unknown))}; buckets are {', '.join(BUCKETS)}"
            )
        return {label: parse_duration(duration, f"{where}[{label!r}]") for label, duration in value.items()}
    duration = parse_duration(value, where)
    return dict.fromkeys(BUCKETS, duration)


def parse_declared(value, where):
    """Validate a ``Meta.retention`` dict; returns ``{kind: timedelta or None}`` (rollups: a dict per bucket)."""
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where} must be a dict such as {{'messages': '7d'}}, got {value!r}")
    unknown = sorted(set(value) - set(KINDS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown kind(s) {', '.join(map(repr, unknown))}; kinds are {', '.join(KINDS)}"
        )
    parsed = {}
    for kind, duration in value.items():
        if kind == "rollups":
            parsed[kind] = parse_rollups(duration, f"{where}['rollups']")
        else:
            parsed[kind] = parse_duration(duration, f"{where}[{kind!r}]")
    return parsed


def inherit(parent, own):
    """A subclass's retention: its own kinds over its parent's (rollup buckets merged one by one)."""
    merged = dict(parent or {})
    for kind, value in (own or {}).items():
        merged[kind] = {**merged.get(kind, {}), **value} if kind == "rollups" else value
    return merged


@dataclass(frozen=True)
class Retention:
    """How long a type's rows are kept; None means forever."""

    messages: timedelta | None
    commands: timedelta | None
    readings: timedelta | None
    rollups: dict  # bucket label -> timedelta or None

    def describe(self):
        from .durations import format_duration

        rollups = ", ".join(f"{label} {format_duration(self.rollups[label])}" for label in BUCKETS)
        return (
            f"messages {format_duration(self.messages)}, commands {format_duration(self.commands)}, "
            f"readings {format_duration(self.readings)}, rollups {rollups}"
        )


def defaults(settings):
    """The settings' retention (``hub_settings``, whose values ``conf`` has parsed) as ``{kind: ...}``."""
    return {kind: getattr(settings, key) for kind, key in SETTINGS.items()}


def retention_for(device_type, settings=None):
    """The Retention of ``device_type``: its (inherited) ``Meta.retention`` over the settings."""
    if settings is None:
        from ..conf import hub_settings as settings
    base = defaults(settings)
    declared = getattr(device_type._meta, "retention", {}) or {}
    rollups = {**base["rollups"], **declared.get("rollups", {})}
    return Retention(
        messages=declared.get("messages", base["messages"]),
        commands=declared.get("commands", base["commands"]),
        readings=declared.get("readings", base["readings"]),
        rollups={label: rollups.get(label) for label in BUCKETS},
    )
