"""The words devices and the hub share: the topic grammar, message kinds, device statuses, command states,
and the kinds of live events.

A leaf module: it imports nothing of the hub (nor Django), so every layer may use it and none has to
spell these strings itself. Device topics are ``{prefix}/{type}/{device_id}/{kind}``; the prefix is the
``TOPIC_PREFIX`` setting and may itself contain '/', so the functions here take it as an argument.
"""

import re
from typing import Final, NamedTuple


class Kind:
    """Message kinds: the last level of a device topic. Devices publish ``data``, ``status`` and ``reply``;
    only the hub publishes ``cmd``."""

    DATA: Final = "data"
    STATUS: Final = "status"
    REPLY: Final = "reply"
    CMD: Final = "cmd"
    ALL: Final = (DATA, STATUS, CMD, REPLY)
    INBOUND: Final = frozenset({DATA, STATUS, REPLY})


class Lifecycle:
    """Connection events the router records next to messages (they change a device's status)."""

    CONNECT: Final = "connect"
    DISCONNECT: Final = "disconnect"
    HEARTBEAT_TIMEOUT: Final = "heartbeat_timeout"  # silent for HEARTBEAT_TIMEOUT seconds


class DeviceStatus:
    """A device's ``status`` column; a status message may state any of them."""

    ONLINE: Final = "online"
    OFFLINE: Final = "offline"
    ERROR: Final = "error"
    MAINTENANCE: Final = "maintenance"
    LOW_BATTERY: Final = "low_battery"
    PROVISIONING: Final = "provisioning"
    CHOICES: Final = (
        (ONLINE, "Online"),
        (OFFLINE, "Offline"),
        (ERROR, "Error"),
        (MAINTENANCE, "Maintenance"),
        (LOW_BATTERY, "Low battery"),
        (PROVISIONING, "Provisioning"),
    )
    VALID: Final = frozenset(value for value, _ in CHOICES)


class CommandState:
    """An outbound command's life: pending -> sent -> delivered (acknowledged) -> replied, failed or expired.

    ``sent`` goes back to ``pending`` when the connection drops before the acknowledgement."""

    PENDING: Final = "pending"
    SENT: Final = "sent"
    DELIVERED: Final = "delivered"
    REPLIED: Final = "replied"
    FAILED: Final = "failed"
    EXPIRED: Final = "expired"
    CHOICES: Final = (
        (PENDING, "Pending"),
        (SENT, "Sent"),
        (DELIVERED, "Delivered"),
        (REPLIED, "Replied"),
        (FAILED, "Failed"),
        (EXPIRED, "Expired"),
    )
    OPEN: Final = (PENDING, SENT, DELIVERED)  # may still change
    FINAL: Final = frozenset({REPLIED, FAILED, EXPIRED})


class Direction:
    """Which way a stored Message went."""

    INBOUND: Final = "inbound"
    OUTBOUND: Final = "outbound"


class EventKind:
    """The ``type`` of a live event (WebSocket, SSE, polling)."""

    READING: Final = "reading"
    STATUS: Final = "status"
    CONNECTION: Final = "connection"
    COMMAND: Final = "command"
    STATE: Final = "state"
    CURSOR: Final = frozenset({READING, STATUS})  # events whose ``id`` is a resume cursor


# The topic grammar ----------------------------------------------------------------------------------------

# The Message model's ``topic`` column is a varchar(255): a longer topic could not be stored.
MAX_TOPIC_LENGTH: Final = 255
_TYPE_LEVEL = re.compile(r"\w+", re.ASCII)
# The canonical kind strings, so a kind sliced out of a topic becomes the constant itself.
_INBOUND = {kind: kind for kind in Kind.INBOUND}
_CMD_SUFFIX = "/" + Kind.CMD


class DeviceTopic(NamedTuple):
    """A parsed device topic; ``type_name`` is the level as sent (the registry normalizes names)."""

    type_name: str
    device_id: str
    kind: str


def is_topic_level(value: object) -> bool:
    """True if ``value`` can be one topic level (a type name or a device id): no '/', wildcards or NUL."""
    return (
        isinstance(value, str)
        and bool(value)
        and "/" not in value
        and "+" not in value
        and "#" not in value
        and "\x00" not in value
    )


def device_topic_base(prefix: str, type_name: str, device_id: str) -> str:
    """``{prefix}/{type}/{device_id}/``: a device's topics are this plus a kind."""
    return f"{prefix}/{type_name}/{device_id}/"


def device_topic(prefix: str, type_name: str, device_id: str, kind: str) -> str:
    """The topic a device of ``type_name`` uses for ``kind``."""
    return f"{prefix}/{type_name}/{device_id}/{kind}"


def device_topics(prefix: str, type_name: str, device_id: str) -> dict[str, str]:
    """``{"data": ..., "status": ..., "cmd": ..., "reply": ...}``: every topic of one device."""
    base = device_topic_base(prefix, type_name, device_id)
    return {kind: base + kind for kind in Kind.ALL}


def topic_length(prefix: str, type_name: str, device_id: str, kind: str) -> int:
    """The length of ``device_topic(...)``, without building it."""
    return len(prefix) + len(type_name) + len(device_id) + len(kind) + 3


def inbound_kind(topic: str, base: str) -> str | None:
    """The kind of ``topic`` when it is ``base`` (a ``device_topic_base``) plus ``data``, ``status`` or
    ``reply``, else None. The one check a device's own publish needs: no split, no parse."""
    if not topic.startswith(base):
        return None
    return _INBOUND.get(topic[len(base) :])


def parse_device_topic(topic: str, prefix: str, kinds: frozenset[str] = Kind.INBOUND) -> DeviceTopic | None:
    """The parts of ``topic`` if it is a device topic of one of ``kinds`` under ``prefix``, else None."""
    if len(topic) > MAX_TOPIC_LENGTH or "\x00" in topic or not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 3:
        return None
    type_name, device_id, kind = parts
    if kind not in kinds or not device_id or "+" in device_id or "#" in device_id:
        return None
    if not _TYPE_LEVEL.fullmatch(type_name):
        return None
    return DeviceTopic(type_name, device_id, kind)


def in_namespace(topic: str, prefix: str) -> bool:
    """True for the device namespace: ``{prefix}`` itself and everything under ``{prefix}/``."""
    return topic == prefix or topic.startswith(prefix + "/")


def is_cmd_topic(topic: str, prefix: str) -> bool:
    """True for a ``cmd`` topic in the device namespace (which only the hub publishes to)."""
    return topic.endswith(_CMD_SUFFIX) and in_namespace(topic, prefix)
