"""The engines ``BROKERS`` names, loaded and checked: at start-up (``Hub``) and by ``hubserver check``.

Every entry's ``ENGINE`` is imported with ``import_string`` and must be a ``BaseBroker``; every key given
in the entry must be one the engine reads; every device type's ``Meta.broker`` must name an entry. Each
problem is a sentence naming the broker and the key.

An engine that is planned but not built yet (``NOT_AVAILABLE_YET``) cannot run: ``hubserver run`` refuses
its entry. ``hubserver check`` only warns, because such an entry already means something to the commands
that do not run engines (the device accounts ``hubserver provision`` and ``hubserver broker`` keep on an
external Mosquitto).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from ..conf import EMBEDDED_ENGINE, SETTINGS_NAME, hub_settings
from ..exceptions import ConfigurationError
from ..registry import registry
from .base import BaseBroker

# Engines that are planned but not built yet: naming one is refused with a reason, not ignored. (None now:
# the external engine, hubserver.brokers.mqtt.MQTTBroker, runs.)
NOT_AVAILABLE_YET: dict[str, str] = {}


# Keys the hub reads itself, whatever the engine: AUTH_BACKEND turns the HTTP auth endpoints on
# (views/broker_auth.py). And for an entry that is not the embedded broker's: whether the hub keeps the device
# accounts on that broker (brokers/accounts.py).
HUB_KEYS = frozenset({"AUTH_BACKEND"})
ACCOUNT_KEYS = frozenset({"DYNAMIC_SECURITY"})


@dataclass(frozen=True)
class EngineEntry:
    """One ``BROKERS`` entry with its engine class loaded."""

    name: str
    engine: type[BaseBroker]
    settings: Mapping[str, Any]  # the entry with defaults filled in


def _where(name: str, key: str | None = None) -> str:
    where = f"{SETTINGS_NAME}['BROKERS'][{name!r}]"
    return f"{where}[{key!r}]" if key else where


def _given_keys(name: str) -> set[str]:
    """The keys the user wrote in entry ``name`` (the defaults fill in the rest)."""
    user = getattr(settings, SETTINGS_NAME, {}) or {}
    brokers = user.get("BROKERS") if isinstance(user, dict) else None
    if not brokers:
        return {"ENGINE"}  # the default BROKERS entry
    return set(brokers.get(name) or ())


def _engine_class(name: str, path: str) -> type[BaseBroker]:
    try:
        engine = import_string(path)
    except ImportError as exc:
        if path in NOT_AVAILABLE_YET:
            raise ConfigurationError(_unavailable(name, path)) from None
        raise ConfigurationError(f"{_where(name, 'ENGINE')}: cannot import {path!r}: {exc}") from None
    if not (isinstance(engine, type) and issubclass(engine, BaseBroker)):
        raise ConfigurationError(f"{_where(name, 'ENGINE')}: {path!r} is not a hubserver.brokers.base.BaseBroker")
    return engine


def _unavailable(name: str, path: str) -> str:
    return f"{_where(name, 'ENGINE')} is {path!r}: {NOT_AVAILABLE_YET[path]}"


def _entry_problems(name: str, entry: Mapping[str, Any]) -> tuple[EngineEntry | None, list[str]]:
    try:
        engine = _engine_class(name, entry["ENGINE"])
    except ConfigurationError as exc:
        return None, [str(exc)]
    read = {"ENGINE"} | engine.settings_keys | HUB_KEYS
    if entry["ENGINE"] != EMBEDDED_ENGINE:
        read |= ACCOUNT_KEYS
    unused = sorted(_given_keys(name) - read)
    if unused:
        reads = ", ".join(sorted(read))
        return None, [
            f"{_where(name, key)}: {engine.__name__} does not use {key} (it reads only {reads}); remove it"
            for key in unused
        ]
    return EngineEntry(name, engine, entry), []


@dataclass
class BrokerCheck:
    """What ``check_brokers()`` found: the loaded entries, the problems, and the entries whose engine is
    not available yet (a problem for ``hubserver run`` only)."""

    entries: list[EngineEntry]
    problems: list[str]
    unavailable: list[str]


def check_brokers() -> BrokerCheck:
    """Every ``BROKERS`` entry loaded, and every problem found (empty lists when all is well)."""
    entries: list[EngineEntry] = []
    problems: list[str] = []
    unavailable: list[str] = []
    for name, entry in hub_settings.BROKERS.items():
        if entry["ENGINE"] in NOT_AVAILABLE_YET and not _importable(entry["ENGINE"]):
            unavailable.append(_unavailable(name, entry["ENGINE"]))
            continue
        loaded, found = _entry_problems(name, entry)
        problems.extend(found)
        if loaded is not None:
            entries.append(loaded)
    for engine in {entry.engine for entry in entries if entry.engine.one_per_process}:
        names = [entry.name for entry in entries if entry.engine is engine]
        if len(names) > 1:
            problems.append(
                f"{SETTINGS_NAME}['BROKERS']: {', '.join(map(repr, names))} all use {engine.__name__}, which "
                "runs once per process (it listens on MQTT_HOST/MQTT_PORT); keep one"
            )
    configured = hub_settings.BROKERS
    for device_type in registry.all():
        broker = device_type._meta.broker
        if broker not in configured:
            problems.append(
                f"{device_type.__name__}.Meta.broker is {broker!r}, which is not an entry of "
                f"{SETTINGS_NAME}['BROKERS'] (configured: {', '.join(sorted(configured))})"
            )
    return BrokerCheck(entries, problems, unavailable)


def _importable(path: str) -> bool:
    try:
        import_string(path)
    except ImportError:
        return False
    return True


def load_engines() -> list[EngineEntry]:
    """The engines to start; ConfigurationError (an ImproperlyConfigured) naming every problem."""
    found = check_brokers()
    if found.problems or found.unavailable:
        raise ConfigurationError("; ".join(found.problems + found.unavailable))
    return found.entries
