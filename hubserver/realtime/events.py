"""Server events, built from committed RouteResults (live) or from Message rows (SSE replay, polling).

Every event is a plain JSON-ready dict (strings, numbers, booleans, None, lists, dicts), so any channel
layer can carry it:

- ``{"type": "reading", "device_type", "device_id", "id", "timestamp", "readings"}``
- ``{"type": "status", "device_type", "device_id", "id", "timestamp", "status", "old_status",
  "battery_level", "firmware_version"}``
- ``{"type": "connection", "device_type", "device_id", "state": "online" | "offline", "timestamp"}``
- ``{"type": "command", "device_type", "device_id", "id", "correlation_id", "command", "command_status",
  "result", "timestamp"}`` (``command_status`` is a ``vocabulary.CommandState``)
- ``{"type": "state", "device_type", "device_id", "state", "source": "status" | "reply", "timestamp"}``: the
  StateFields a device's status message or command reply changed, ``{name: new value}`` (live only)

``id`` of reading and status events is the pk of the type's Message row: monotonic per type, so it is the
resume cursor of SSE and polling. ``connection`` events have no id; a ``command`` event's ``id`` is its
outbound Message's pk, which is not a cursor (its status changes after the row is written).
"""

import hashlib
from datetime import UTC

from django.db.models import Q
from django.utils import timezone

from ..registry import registry
from ..routing.payloads import parse_data, parse_status
from ..vocabulary import DeviceStatus, Direction, EventKind, Kind, Lifecycle
from .errors import UNKNOWN_DEVICE_TYPE, EventError

READING = EventKind.READING
STATUS = EventKind.STATUS
CONNECTION = EventKind.CONNECTION
COMMAND = EventKind.COMMAND
STATE = EventKind.STATE
CURSOR_EVENTS = EventKind.CURSOR  # events whose "id" is a cursor

ONLINE = DeviceStatus.ONLINE
OFFLINE = DeviceStatus.OFFLINE
_CONNECTION_KINDS = {Lifecycle.CONNECT: ONLINE, Lifecycle.DISCONNECT: OFFLINE, Lifecycle.HEARTBEAT_TIMEOUT: OFFLINE}


# Groups ----------------------------------------------------------------------------------------------


def type_group(type_name):
    """The channel-layer group of every event of a device type."""
    return f"hub.{type_name}"


def device_group(type_name, device_id):
    """The group of one device's events; device ids may hold characters group names may not, so: a hash."""
    digest = hashlib.sha1(device_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"hub.{type_name}.d{digest}"


def resolve_type(name):
    """``(DeviceType, (Device, Reading, Message))`` for a type name in any spelling, else EventError."""
    device_type = registry.get(name) if isinstance(name, str) and name else None
    models = registry.get_models(name) if device_type is not None else None
    if models is None:
        raise EventError(UNKNOWN_DEVICE_TYPE, f"unknown device type {name!r}")
    return device_type, models


# Builders --------------------------------------------------------------------------------------------


def _iso(value):
    if value is None:
        return None
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def reading_event(type_name, device_id, message_id, timestamp, readings):
    return {
        "type": READING,
        "device_type": type_name,
        "device_id": device_id,
        "id": message_id,
        "timestamp": _iso(timestamp),
        "readings": dict(readings),
    }


def status_event(type_name, device_id, message_id, fields, received_at, old_status=None):
    """From the valid fields a status message stated (``parse_status(payload).fields``): ``status`` is
    None when it stated none (e.g. a battery-only update); ``old_status`` the status it replaced, known
    live only (None in replays and when unchanged)."""
    fields = fields or {}
    status = fields.get("status")
    return {
        "type": STATUS,
        "device_type": type_name,
        "device_id": device_id,
        "id": message_id,
        "timestamp": _iso(received_at),
        "status": status,
        "old_status": old_status if old_status != status else None,
        "battery_level": fields.get("battery_level"),
        "firmware_version": fields.get("firmware_version"),
    }


def state_event(type_name, device_id, state, source, timestamp=None):
    return {
        "type": STATE,
        "device_type": type_name,
        "device_id": device_id,
        "state": dict(state),
        "source": source,
        "timestamp": _iso(timestamp or timezone.now()),
    }


def connection_event(type_name, device_id, state, timestamp=None):
    return {
        "type": CONNECTION,
        "device_type": type_name,
        "device_id": device_id,
        "state": state,
        "timestamp": _iso(timestamp or timezone.now()),
    }


def command_event(type_name, device_id, message):
    """From an outbound Message row (an instance, or a dict of its fields)."""
    get = message.get if isinstance(message, dict) else lambda name: getattr(message, name, None)
    return {
        "type": COMMAND,
        "device_type": type_name,
        "device_id": device_id,
        "id": get("pk") or get("id"),
        "correlation_id": get("correlation_id"),
        "command": get("command"),
        "command_status": get("command_status"),
        "result": get("command_result"),
        "timestamp": _iso(get("processed_at") or get("received_at")),
    }


def command_change_event(change):
    """From a ``CommandChange`` (the dispatcher's): the same event as ``command_event`` of its row."""
    return {
        "type": COMMAND,
        "device_type": change.type_name,
        "device_id": change.device_id,
        "id": change.message_id,
        "correlation_id": change.correlation_id,
        "command": change.command,
        "command_status": change.state,
        "result": change.result,
        "timestamp": _iso(change.at),
    }


def events_from_result(result):
    """The events of one committed RouteResult (it carries everything they show: no query)."""
    type_name, device_id = result.type_name, result.device_id
    events = []
    kind = result.kind
    if kind in _CONNECTION_KINDS:
        if kind != Lifecycle.HEARTBEAT_TIMEOUT or result.status_changed:
            events.append(connection_event(type_name, device_id, _CONNECTION_KINDS[kind]))
        return events
    if kind != Kind.STATUS and result.status_changed and result.new_status in (ONLINE, OFFLINE):
        events.append(connection_event(type_name, device_id, result.new_status))  # back online by data/reply
    if kind == Kind.DATA and result.readings and result.message_id is not None:
        events.append(reading_event(type_name, device_id, result.message_id, result.timestamp, result.readings))
    elif kind == Kind.STATUS and result.message_id is not None:
        event = status_event(
            type_name, device_id, result.message_id, result.status_fields, result.received_at, result.old_status
        )
        if event["status"] is None and result.status_changed and result.new_status in (ONLINE, OFFLINE):
            events.append(connection_event(type_name, device_id, result.new_status))  # e.g. battery-only
        events.append(event)
    if result.state and kind in (Kind.STATUS, Kind.REPLY):
        events.append(state_event(type_name, device_id, result.state, kind, result.received_at))
    return events


# The database: replay and polling (sync: call through database_sync_to_async) ------------------------


def _stored_rows(models, device_id):
    rows = (
        models[2]
        ._default_manager.filter(direction=Direction.INBOUND)
        .filter(Q(topic__endswith="/" + Kind.DATA) | Q(topic__endswith="/" + Kind.STATUS))
    )
    if device_id is not None:
        rows = rows.filter(device__device_id=device_id)
    return rows.values_list("pk", "device__device_id", "topic", "payload_json", "received_at")


def _row_event(device_type, type_name, row):
    pk, device_id, topic, payload, received_at = row
    if topic.endswith("/" + Kind.STATUS):
        fields = parse_status(payload).fields if isinstance(payload, dict) else {}
        return status_event(type_name, device_id, pk, fields, received_at)
    if not isinstance(payload, dict):
        return None
    parsed = parse_data(device_type, payload, received_at)
    if not parsed.readings:
        return None  # nothing valid to show (the live stream sent no reading either)
    return reading_event(type_name, device_id, pk, parsed.timestamp, parsed.readings)


def stored_events(type_name, device_id=None, *, after=None, limit=100):
    """Reading and status events stored after cursor ``after`` (oldest first), or the latest ``limit`` when
    ``after`` is None; returns ``(events, cursor)`` where cursor is the last row looked at (rows that hold
    no event, e.g. unparseable payloads, still move it) or ``after`` (0) when there was none."""
    device_type, models = resolve_type(type_name)
    type_name = device_type.type_name()
    rows = _stored_rows(models, device_id)
    if after is None:
        rows = list(rows.order_by("-pk")[:limit])[::-1]
    else:
        rows = list(rows.filter(pk__gt=after).order_by("pk")[:limit])
    events = [event for row in rows if (event := _row_event(device_type, type_name, row)) is not None]
    cursor = rows[-1][0] if rows else (after or 0)
    return events, cursor


def latest_cursor(type_name):
    """The newest data/status Message pk of a type (0 if none): "everything up to now" for a fresh stream.
    Only the writer's rows count: they become visible in id order; a command row, written elsewhere, may not."""
    _, models = resolve_type(type_name)
    return _stored_rows(models, None).order_by("-pk").values_list("pk", flat=True).first() or 0
