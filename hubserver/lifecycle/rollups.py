"""Rollups: per device, per minute, hour and day, the count, minimum, maximum, sum and last value of each
numeric Reading, kept current in the transaction that stores the readings.

The writer hands ``upsert_readings`` the rows of a batch it has just inserted (plain tuples, the readings
are already in memory); they are grouped by device and minute in Python, the hours and days are made from
the minutes, and one multi-row ``INSERT ... ON CONFLICT DO UPDATE`` per chunk merges them into the rows
already there. Old raw rows are never read again, so the cost per batch depends on the batch only. A late
reading (an old ``timestamp``) merges into its own, older bucket.
"""

import sqlite3
from datetime import UTC, datetime
from operator import itemgetter

from django.db import connections

from .buckets import BUCKETS

SUFFIXES = ("count", "min", "max", "sum", "last", "last_at")
MINUTE, HOUR, DAY = BUCKETS["1m"], BUCKETS["1h"], BUCKETS["1d"]
_HEAD = ("device_id", "bucket", "start")
_by_timestamp = itemgetter(1)


def numeric_readings(device_type):
    """``{name: Reading}`` of the int and float Readings (booleans and strings have no rollups)."""
    return {name: r for name, r in device_type._readings.items() if r.value_type in (int, float)}


def rollup_columns(names):
    return [f"{name}_{suffix}" for name in names for suffix in SUFFIXES]


def aggregate(rows, positions):
    """``[(count, min, max, sum, last, last_at), ...]`` per position over reading rows
    ``(device_id, timestamp, ...)``; ``last`` is the value with the latest timestamp (the later row on a tie).
    A position of None (a column the rows do not have) aggregates nothing."""
    latest = max(reversed(rows), key=_by_timestamp)
    out = []
    for position in positions:
        present = [row[position] for row in rows if row[position] is not None] if position is not None else ()
        if not present:
            out.append((0, None, None, None, None, None))
            continue
        last, last_at = latest[position], latest[1]
        if last is None:  # the latest row lacks this reading: the latest row that has it
            last_at = None
            for row in rows:
                value = row[position]
                if value is not None and (last_at is None or row[1] >= last_at):
                    last, last_at = value, row[1]
        out.append((len(present), min(present), max(present), float(sum(present)), last, last_at))
    return out


def combine(parts):
    """Aggregates of several buckets (lists as ``aggregate`` returns) folded into one."""
    combined = []
    for columns in zip(*parts, strict=True):
        count = 0
        low = high = total = last = last_at = None
        for n, mn, mx, sm, ls, at in columns:
            if not n:
                continue
            count += n
            low = mn if low is None or mn < low else low
            high = mx if high is None or mx > high else high
            total = sm if total is None else total + sm
            if last_at is None or at >= last_at:
                last, last_at = ls, at
        combined.append((count, low, high, total, last, last_at))
    return combined


def bucket_rows(rows, positions):
    """The rollup rows (``device_id, bucket, start, *aggregates``) of a batch of reading rows."""
    minutes = {}
    for row in rows:
        key = (row[0], int(row[1].timestamp() // MINUTE))
        group = minutes.get(key)
        if group is None:
            minutes[key] = [row]
        else:
            group.append(row)
    out = []
    hours = {}
    for (device, minute), group in minutes.items():
        values = aggregate(group, positions)
        out.append((device, MINUTE, minute * MINUTE, values))
        hours.setdefault((device, minute * MINUTE // HOUR), []).append(values)
    days = {}
    for (device, hour), parts in hours.items():
        values = parts[0] if len(parts) == 1 else combine(parts)
        out.append((device, HOUR, hour * HOUR, values))
        days.setdefault((device, hour * HOUR // DAY), []).append(values)
    for (device, day), parts in days.items():
        out.append((device, DAY, day * DAY, parts[0] if len(parts) == 1 else combine(parts)))
    return out


class RollupUpserter:
    """Merges batches of reading rows (tuples in ``columns`` order) into ``rollup_model``."""

    def __init__(self, rollup_model, columns, using="default"):
        self.model = rollup_model
        self.using = using
        names = list(rollup_model.reading_names)
        self.names = names
        self.positions = [columns.index(name) if name in columns else None for name in names]
        if columns[:2] != ("device_id", "timestamp"):
            raise ValueError(f"reading rows must start with device_id and timestamp, got {columns[:2]}")
        self.columns = (*_HEAD, *rollup_columns(names))
        self._prepared = None

    def _prepare(self, connection):
        quote = connection.ops.quote_name
        table = quote(self.model._meta.db_table)
        mark = "%s"
        updates = []
        for name in self.names:
            col = {suffix: quote(f"{name}_{suffix}") for suffix in SUFFIXES}
            old = {suffix: f"{table}.{c}" for suffix, c in col.items()}
            new = {suffix: f"excluded.{c}" for suffix, c in col.items()}
            newer = (
                f"{new['last_at']} IS NOT NULL AND ({old['last_at']} IS NULL OR {new['last_at']} >= {old['last_at']})"
            )
            updates += [
                f"{col['count']} = {old['count']} + {new['count']}",
                f"{col['min']} = CASE WHEN {new['min']} IS NULL THEN {old['min']} WHEN {old['min']} IS NULL "
                f"OR {new['min']} < {old['min']} THEN {new['min']} ELSE {old['min']} END",
                f"{col['max']} = CASE WHEN {new['max']} IS NULL THEN {old['max']} WHEN {old['max']} IS NULL "
                f"OR {new['max']} > {old['max']} THEN {new['max']} ELSE {old['max']} END",
                f"{col['sum']} = CASE WHEN {new['sum']} IS NULL THEN {old['sum']} WHEN {old['sum']} IS NULL "
                f"THEN {new['sum']} ELSE {old['sum']} + {new['sum']} END",
                f"{col['last']} = CASE WHEN {newer} THEN {new['last']} ELSE {old['last']} END",
                f"{col['last_at']} = CASE WHEN {newer} THEN {new['last_at']} ELSE {old['last_at']} END",
            ]
        self._head = f"INSERT INTO {table} ({', '.join(quote(c) for c in self.columns)}) VALUES "
        self._row = "(" + ", ".join([mark] * len(self.columns)) + ")"
        self._tail = (
            f" ON CONFLICT ({quote('device_id')}, {quote('bucket')}, {quote('start')}) DO UPDATE SET "
            + ", ".join(updates)
        )
        # SQLite gets "?" placeholders and the raw cursor (no %s -> ? rewrite of a long statement), as the
        # writer's RowInserter does, unless queries are being logged.
        self._qmark = connection.vendor == "sqlite"
        if self._qmark:
            self._row = self._row.replace("%s", "?")
        from ..routing.inserts import _converter  # not at import: the routing package imports this module

        self._to_db = _converter(self.model._meta.get_field("start"), connection)
        self._chunk = max(1, connection.ops.bulk_batch_size(list(self.columns), [None] * 1000))
        # PostgreSQL: the rows go by COPY (formatted by psycopg in C) into a temporary table of this
        # connection, and one INSERT ... SELECT moves them over: a VALUES list of thousands of placeholders
        # is parsed and quoted by psycopg in Python for every batch. The temporary table is created (if this
        # session has none) in the same transaction, so a pooler that hands out connections per transaction
        # does no harm. An account without the TEMPORARY privilege on the database keeps the VALUES list.
        self._copy = None
        if connection.vendor == "postgresql" and _may_create_temporary_tables(connection):
            names = ", ".join(quote(c) for c in self.columns)
            stage = quote(f"hubserver_stage_{self.model._meta.db_table}"[:63])
            self._copy = (
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} AS SELECT {names} FROM {table} WITH NO DATA",
                f"COPY {stage} ({names}) FROM STDIN",
                f"WITH staged AS (DELETE FROM {stage} RETURNING {names}) "
                f"INSERT INTO {table} ({names}) SELECT {names} FROM staged{self._tail}",
            )
        self._prepared = connection.alias

    def upsert(self, reading_rows):
        """Merge ``reading_rows`` (tuples starting ``device_id, timestamp``) into the rollups."""
        if not reading_rows:
            return 0
        connection = connections[self.using]
        if self._prepared != connection.alias:
            self._prepare(connection)
        to_db = self._to_db
        converted = {}

        def db_time(value):
            if value is None:
                return None
            db_value = converted.get(value)
            if db_value is None:
                db_value = converted[value] = to_db(value)
            return db_value

        params_rows = []
        starts = {}
        for device, bucket, start, values in bucket_rows(reading_rows, self.positions):
            db_start = starts.get(start)
            if db_start is None:
                db_start = starts[start] = to_db(datetime.fromtimestamp(start, UTC))
            params = [device, bucket, db_start]
            for count, low, high, total, last, last_at in values:
                params += (count, low, high, total, last, db_time(last_at) if count else None)
            params_rows.append(params)
        if self._copy is not None:
            create, copy_sql, move = self._copy
            with connection.cursor() as cursor, connection.wrap_database_errors:
                raw = cursor.cursor
                raw.execute(create)
                with raw.copy(copy_sql) as copy:
                    for row in params_rows:
                        copy.write_row(row)
                raw.execute(move)
            return len(params_rows)
        with connection.cursor() as cursor:
            for begin in range(0, len(params_rows), self._chunk):
                chunk = params_rows[begin : begin + self._chunk]
                sql = self._head + ", ".join([self._row] * len(chunk)) + self._tail
                params = [value for row in chunk for value in row]
                if self._qmark and not connection.queries_logged:
                    with connection.wrap_database_errors:
                        sqlite3.Cursor.execute(cursor.cursor, sql, params)
                else:
                    cursor.execute(sql.replace("?", "%s") if self._qmark else sql, params)
        return len(params_rows)


def _may_create_temporary_tables(connection):
    with connection.cursor() as cursor:
        cursor.execute("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
        return bool(cursor.fetchone()[0])


_upserters = {}  # (reading model, columns) -> RollupUpserter or None


def upserter_for(reading_model, columns):
    """The RollupUpserter for rows of ``reading_model`` in ``columns`` order, or None (no rollups)."""
    key = (reading_model, columns)
    try:
        return _upserters[key]
    except KeyError:
        pass
    rollup_model = getattr(reading_model, "_rollup_model", None)
    upserter = _upserters[key] = RollupUpserter(rollup_model, columns) if rollup_model is not None else None
    return upserter


def upsert_readings(reading_model, columns, rows):
    """Merge reading rows into the type's rollups, if it has any; returns the rollup rows written."""
    upserter = upserter_for(reading_model, tuple(columns))
    return upserter.upsert(rows) if upserter is not None else 0
