"""Turning a batch of ``Work`` into rows, and committing them in one transaction (runs in the ORM thread).

Per message: parse, validate, build a plain row (a tuple of values, no model instance) for its Message
and Reading, and apply status, battery, firmware and ``last_seen`` to the cached device instance. Then one
transaction: a multi-row INSERT per model (``inserts.RowInserter``), the readings merged into their
type's per-minute, -hour and -day rollups (``lifecycle.rollups``), and one ``executemany`` UPDATE per
Device model for every device the batch touched, so ``last_seen`` costs one statement per batch whatever
the message rate. If the commit fails the in-memory device state is rolled back too, so the next batch
computes status changes from what is really stored.
"""

import logging
import zlib

from django.db import connections, transaction
from django.utils import timezone

from ..conf import hub_settings
from ..exceptions import PayloadError
from ..lifecycle.rollups import upsert_readings
from ..models import BaseMessage
from ..vocabulary import DeviceStatus, Direction, Kind, Lifecycle, device_topic
from . import payloads
from .inserts import RowInserter, RowUpdater, StoredRow
from .results import RouteResult, refused
from .work import CONNECTED, DISCONNECTED

logger = logging.getLogger("hubserver.routing")

ONLINE = DeviceStatus.ONLINE
OFFLINE = DeviceStatus.OFFLINE
COMPLETED = BaseMessage.Status.COMPLETED.value
FAILED = BaseMessage.Status.FAILED.value
_DEVICE_FIELDS = ("status", "battery_level", "firmware_version", "last_seen")
INBOUND = Direction.INBOUND
# The Message columns an inbound message sets; the others (command fields, content type...) take defaults.
MESSAGE_COLUMNS = (
    "device_id",
    "topic",
    "direction",
    "payload_json",
    "payload_raw",
    "correlation_id",
    "processing_status",
    "processing_error",
    "received_at",
    "processed_at",
)
# ... and those of a message that carries its own (MQTT 5 properties): a statement of their own, so the many
# messages without any pay nothing for them.
PROPERTY_COLUMNS = (*MESSAGE_COLUMNS, "content_type", "user_properties")
_inserters = {}  # (model, columns) -> RowInserter
_updaters = {}  # Device model -> RowUpdater
# pg_advisory_xact_lock(namespace, table key): the hub's writers take one per table they write.
_LOCK_NAMESPACE = 0x48554221


def write_batch(works, cache):
    """Resolve devices, build rows and commit them; sets ``result`` (or ``error``) on every Work."""
    _resolve_devices(works, cache)
    rows = Rows(hub_settings.TOPIC_PREFIX)  # a Message's ``topic`` column: the topic its parts stand for
    now = timezone.now()
    for work in works:
        if work.result is not None:
            continue
        try:
            _HANDLERS[work.kind](work, rows, now)
        except Exception as exc:  # a bug must cost this message, not its whole batch
            logger.exception("could not process %s for %s/%s", work.kind, *work.key)
            work.error = exc
    try:
        with transaction.atomic():
            rows.save()
    except BaseException:
        rows.restore()
        raise
    for work in works:
        if work.result is None and work.error is None:
            work.result = _result(work, rows.cursors.get(work.models[2]))


def _resolve_devices(works, cache):
    states = {}
    missing = {}
    for work in works:
        if work.key not in states:
            states[work.key] = state = cache.peek(work.key)
            if state is None:
                missing[work.key] = work.models[0]
    if missing:
        states.update(cache.load(missing))
    for work in works:
        state = states[work.key]
        if isinstance(state, str):
            work.result = refused(
                state,
                f"{state.replace('_', ' ')} {work.device_id!r}",
                kind=work.kind,
                type_name=work.key[0],
                device_id=work.device_id,
            )
        else:
            work.device = state


class Rows:
    """The rows of one batch, and a snapshot of every device it changed (to undo on a failed commit)."""

    def __init__(self, prefix=""):
        self.prefix = prefix
        self.inserts = {}  # (model, columns) -> [StoredRow]
        self.devices = {}  # id(device) -> (device, snapshot of _DEVICE_FIELDS)
        self.device_fields = {}  # Device model -> names of fields changed in this batch
        self.cursors = {}  # Message model -> (newest pk before this batch, newest pk of this batch)

    def add(self, row):
        columns = row.columns
        if columns is MESSAGE_COLUMNS and (row.model, PROPERTY_COLUMNS) in self.inserts:
            _widen(row)
        elif columns is PROPERTY_COLUMNS:
            # Messages with and without properties in one batch: all of them in one statement, so that their
            # ids follow their arrival order.
            narrow = self.inserts.pop((row.model, MESSAGE_COLUMNS), None)
            if narrow:
                for earlier in narrow:
                    _widen(earlier)
                self.inserts.setdefault((row.model, PROPERTY_COLUMNS), []).extend(narrow)
        self.inserts.setdefault((row.model, row.columns), []).append(row)
        return row

    def update_device(self, device, **values):
        if id(device) not in self.devices:
            self.devices[id(device)] = (device, {name: getattr(device, name) for name in _DEVICE_FIELDS})
        snapshot = self.devices[id(device)][1]
        for name, value in values.items():
            snapshot.setdefault(name, getattr(device, name))  # StateFields: their value before this batch
            setattr(device, name, value)
        self.device_fields.setdefault(type(device), set()).update(values)

    def seen(self, device, when):
        """Raise the device's ``last_seen`` to ``when`` (cheap per message: one dict write, or none)."""
        last = device.last_seen
        if last is None or when > last:
            if id(device) not in self.devices:
                self.update_device(device, last_seen=when)
            else:
                device.last_seen = when
                self.device_fields[type(device)].add("last_seen")

    def save(self):
        """Write the batch (inside the caller's transaction).

        Message ids are the resume cursor of live streams, so a row must never become visible after a row
        with a higher id of the same table: a reader that saw the higher one would skip it. One process
        writes in order anyway, and SQLite commits one transaction at a time; on PostgreSQL several hub
        processes commit concurrently, so each batch first takes a transaction-level advisory lock per
        table it writes (in one order: no deadlock), and ids are drawn and committed in lock order. The
        lock also orders the batches' device updates, which would otherwise deadlock across processes.
        """
        messages = sorted(
            {model for model, _ in self.inserts if issubclass(model, BaseMessage)}, key=lambda m: m._meta.db_table
        )
        connection = connections["default"]
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                tables = {m._meta.db_table for m in messages} | {m._meta.db_table for m in self.device_fields}
                for table in sorted(tables):
                    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, _table_key(table)])
            newest = {}
            for model in messages:
                quote = connection.ops.quote_name
                cursor.execute(f"SELECT MAX({quote(model._meta.pk.column)}) FROM {quote(model._meta.db_table)}")
                newest[model] = cursor.fetchone()[0] or 0
        converted = {}  # one conversion per datetime value per batch (rows share receive and process times)
        for key, stored in self.inserts.items():
            inserter = _inserters.get(key)
            if inserter is None:
                inserter = _inserters[key] = RowInserter(*key)
            values = [row.values for row in stored]
            pks = inserter.insert(values, converted=converted)
            for row, pk in zip(stored, pks, strict=True):
                row.pk = pk
            upsert_readings(*key, values)  # a Reading model's rollups, in the same transaction
            if key[0] in newest and pks:
                before, last = self.cursors.get(key[0], (newest[key[0]], 0))
                self.cursors[key[0]] = (before, max(last, max(pks)))
        by_model = {}
        for device, _ in self.devices.values():
            by_model.setdefault(type(device), []).append(device)
        for model, devices in by_model.items():
            fields = sorted(self.device_fields.get(model, ()))
            if fields:
                updater = _updaters.get(model)
                if updater is None:
                    updater = _updaters[model] = RowUpdater(model)
                devices.sort(key=lambda device: device.pk)  # one row order in every process
                updater.update(devices, fields)

    def restore(self):
        for device, snapshot in self.devices.values():
            for name, value in snapshot.items():
                setattr(device, name, value)


# Handlers: compute first (may fail), then record into ``rows`` (does not fail).


def _handle_data(work, rows, now):
    obj, error = _decode(work.payload)
    reading = None
    errors = [error] if error else []
    if obj is not None:
        parsed = payloads.parse_data(work.device_type, obj, work.received_at)
        errors = parsed.errors
        if parsed.readings:
            reading = _reading(work, parsed)
            work.readings = parsed.readings
    message = _message(work, rows, obj, errors, now)
    _record_activity(work, rows, stay=False)
    work.message = rows.add(message)
    if reading is not None:
        work.reading = rows.add(reading)


def _handle_status(work, rows, now):
    obj, error = _decode(work.payload)
    parsed = payloads.parse_status(obj) if obj is not None else None
    errors = parsed.errors if parsed is not None else [error]
    state, state_errors = payloads.parse_state(work.device_type, obj) if obj is not None else ({}, [])
    errors = [*errors, *state_errors]
    fields = dict(parsed.fields) if parsed is not None else {}
    work.status_fields = parsed.fields if parsed is not None else {}
    message = _message(work, rows, obj, errors, now)
    status = fields.pop("status", None)
    _record_activity(work, rows, stay=status is not None)
    if status is not None:
        _set_status(work, rows, status)
    changed = {name: value for name, value in fields.items() if getattr(work.device, name) != value}
    if changed:
        rows.update_device(work.device, **changed)
    _apply_state(work, rows, state)
    work.message = rows.add(message)


def _handle_reply(work, rows, now):
    obj, error = _decode(work.payload)
    by_property = work.properties.correlation_id if work.properties is not None else ""
    reply = payloads.parse_reply(obj, by_property) if obj is not None else None
    errors = reply.errors if reply is not None else [error]
    state, state_errors = payloads.parse_state(work.device_type, obj) if obj is not None else ({}, [])
    errors = [*errors, *state_errors]
    message = _message(work, rows, obj, errors, now, correlation_id=reply.correlation_id if reply else "")
    _record_activity(work, rows, stay=False)
    _apply_state(work, rows, state)
    work.message = rows.add(message)
    if reply is not None and not reply.errors:
        work.reply = reply  # the hook for command tracking: Dispatcher reply listeners get it after commit


def _handle_connect(work, rows, now):
    _record_activity(work, rows, stay=True)
    _set_status(work, rows, ONLINE)
    work.event = CONNECTED


def _handle_disconnect(work, rows, now):
    _set_status(work, rows, OFFLINE)
    work.event = DISCONNECTED


def _handle_timeout(work, rows, now):
    device = work.device
    if device.status == OFFLINE:
        return
    # Other hub processes (workers sharing a broker's messages) may have heard from the device since this
    # one did: the database's last_seen says. One query, only when a device seems silent.
    stored = type(device)._base_manager.filter(pk=device.pk).values_list("last_seen", flat=True).first()
    if stored is not None and (device.last_seen is None or stored > device.last_seen):
        device.last_seen = stored
        if (now - stored).total_seconds() < hub_settings.HEARTBEAT_TIMEOUT:
            return
    _set_status(work, rows, OFFLINE)
    work.event = DISCONNECTED


_HANDLERS = {
    Kind.DATA: _handle_data,
    Kind.STATUS: _handle_status,
    Kind.REPLY: _handle_reply,
    Lifecycle.CONNECT: _handle_connect,
    Lifecycle.DISCONNECT: _handle_disconnect,
    Lifecycle.HEARTBEAT_TIMEOUT: _handle_timeout,
}


def _decode(payload):
    try:
        return payloads.decode_object(payload), None
    except PayloadError as exc:
        return None, str(exc)


def _message(work, rows, obj, errors, now, correlation_id=""):
    properties = work.properties
    if properties is not None and not correlation_id:
        correlation_id = properties.correlation_id
    values = (
        work.device.pk,
        device_topic(rows.prefix, work.key[0], work.key[1], work.kind),
        INBOUND,
        obj,
        bytes(work.payload) if obj is None else None,
        correlation_id,
        FAILED if errors else COMPLETED,
        "; ".join(errors),
        work.received_at,
        now,
    )
    if properties is None:
        return StoredRow(work.models[2], MESSAGE_COLUMNS, values, device=work.device)
    extra = (properties.content_type or _DEFAULT_CONTENT_TYPE, properties.user_properties or {})
    return StoredRow(work.models[2], PROPERTY_COLUMNS, values + extra, device=work.device)


_DEFAULT_CONTENT_TYPE = BaseMessage._meta.get_field("content_type").default


def _widen(row):
    """A Message row without properties as one with the defaults of theirs."""
    row.columns = PROPERTY_COLUMNS
    row.values = (*row.values, _DEFAULT_CONTENT_TYPE, {})


def _reading(work, parsed):
    model = work.models[1]
    names = _reading_names(work.device_type)
    values = (work.device.pk, parsed.timestamp, work.received_at, *map(parsed.readings.get, names))
    return StoredRow(model, _READING_HEAD + names, values, device=work.device)


_READING_HEAD = ("device_id", "timestamp", "received_at")


def _reading_names(device_type):
    names = _reading_columns.get(device_type)
    if names is None:
        names = _reading_columns[device_type] = tuple(device_type._readings)
    return names


_reading_columns = {}  # DeviceType -> its Reading columns, in declaration order


def _record_activity(work, rows, stay):
    """Any message is a heartbeat: refresh last_seen, and bring an offline device back online."""
    device = work.device
    rows.seen(device, work.received_at)
    if not stay and device.status == OFFLINE:
        _set_status(work, rows, ONLINE)


def _apply_state(work, rows, state):
    """Store the StateFields a device reported that differ from what the hub holds."""
    device = work.device
    changes = {name: (getattr(device, name), value) for name, value in state.items() if getattr(device, name) != value}
    if changes:
        rows.update_device(device, **{name: new for name, (_, new) in changes.items()})
        work.state_changes = changes


def _set_status(work, rows, status):
    old = work.device.status
    if old != status:
        rows.update_device(work.device, status=status)
        work.old_status, work.new_status = old, status


def _table_key(table):
    """A table's advisory-lock key: a stable signed 32-bit number."""
    key = zlib.crc32(table.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


def _result(work, cursors=None):
    message, reading = work.message, work.reading
    return RouteResult(
        stored=True,
        kind=work.kind,
        type_name=work.key[0],
        device_id=work.device_id,
        processing_status=message.get("processing_status") if message is not None else None,
        error=message.get("processing_error") if message is not None else "",
        message_id=message.pk if message is not None else None,
        reading_id=reading.pk if reading is not None else None,
        readings=work.readings,
        timestamp=reading.get("timestamp") if reading is not None else None,
        old_status=work.old_status,
        new_status=work.new_status,
        correlation_id=message.get("correlation_id") if message is not None else "",
        cursors=cursors,
        received_at=work.received_at,
        status_fields=work.status_fields,
        state={name: new for name, (_, new) in work.state_changes.items()} if work.state_changes else None,
    )
