"""Plain-row writes for the hot path: multi-row ``INSERT ... RETURNING`` and ``executemany`` UPDATEs.

``bulk_create`` builds a model instance per row and compiles its INSERT field by field, value by value;
on a busy hub that was most of the writer's time. Here each model's statement is prepared once (columns,
quoting, placeholders) and a batch is a list of tuples of Python values: only the columns whose values
need converting for the database (datetimes, JSON) go through a converter, the same one Django's field
would use. Model instances are built only when somebody asks for one (``StoredRow.instance``).
"""

import itertools
import json
import sqlite3
from datetime import UTC

import orjson

try:
    import psycopg
except ImportError:  # PostgreSQL is optional (hubserver[postgres])
    psycopg = None
from django.conf import settings
from django.db import connections
from django.db.models import BigIntegerField, DateTimeField, FloatField, IntegerField, JSONField

from ..fields import AuditPayloadField, CompactDateTimeField, UsualValueCharField, to_microseconds


class RowInserter:
    """Insert tuples of ``columns`` (attnames, in order) into ``model``'s table; returns their primary keys."""

    def __init__(self, model, columns, using="default"):
        self.model = model
        self.columns = tuple(columns)
        self.using = using
        meta = model._meta
        fields = [_field(meta, name) for name in self.columns]
        self._fields = fields
        supplied = {field.attname for field in fields}
        # Columns a row does not carry get their field's default, computed once per batch.
        self._defaulted = [f for f in meta.concrete_fields if f.attname not in supplied and not f.primary_key]
        self._prepared = None

    def _prepare(self, connection):
        quote = connection.ops.quote_name
        all_fields = self._fields + self._defaulted
        names = ", ".join(quote(f.column) for f in all_fields)
        # SQLite gets its own "?" placeholders, so the statement skips Django's %s -> ? rewrite (a regex over
        # the whole multi-row statement) unless queries are being logged (DEBUG, tests counting queries).
        self._qmark = connection.vendor == "sqlite"
        mark = "?" if self._qmark else "%s"
        self._placeholders = "(" + ", ".join([mark] * len(all_fields)) + ")"
        self._head = f"INSERT INTO {quote(self.model._meta.db_table)} ({names}) VALUES "
        self._tail = f" RETURNING {quote(self.model._meta.pk.column)}"
        self._converters = [
            (index, converter, isinstance(field, DateTimeField))  # datetimes: hashable and often shared
            for index, field in enumerate(self._fields)
            if (converter := _converter(field, connection)) is not None
        ]
        self._chunk = max(1, connection.ops.bulk_batch_size(all_fields, [None] * 1000))
        # PostgreSQL: the batch's keys drawn from the table's sequence in one query, then the rows with them
        # in one COPY, whose rows psycopg formats in C. A multi-row VALUES list of thousands of placeholders
        # is parsed and quoted again by psycopg for every batch (client-side binding), and the arrays of an
        # INSERT ... SELECT FROM unnest are dumped element by element in Python: each was most of a
        # worker's time at 2,000 rows. A table without a sequence behind its key takes the unnest INSERT.
        # JSON goes as text (orjson), parsed by the server.
        self._unnest = self._copy = None
        if connection.vendor == "postgresql":
            self._copy = self._copy_statements(connection, names)
            arrays, selected = [], []
            for n, field in enumerate(all_fields):
                is_json = isinstance(field, JSONField)
                arrays.append(f"%s::{'text' if is_json else field.db_type(connection)}[]")
                selected.append(f"c{n}::jsonb" if is_json else f"c{n}")
            aliases = ", ".join(f"c{n}" for n in range(len(all_fields)))
            self._unnest = (
                f"INSERT INTO {quote(self.model._meta.db_table)} ({names}) SELECT {', '.join(selected)} "
                f"FROM unnest({', '.join(arrays)}) WITH ORDINALITY AS u({aliases}, n) ORDER BY n{self._tail}"
            )
            self._floats = [n for n, f in enumerate(all_fields) if isinstance(f, FloatField)]
            self._json_defaults = [
                n for n, f in enumerate(self._defaulted, len(self._fields)) if isinstance(f, JSONField)
            ]
        self._prepared = connection.alias

    def insert(self, rows, converted=None):
        """Insert ``rows`` (sequences of values in ``columns`` order); returns the new primary keys in order.

        ``converted`` (a dict, optional) remembers database values of hashable values across calls (per
        converter), so a datetime shared by many rows of a batch is converted once."""
        if not rows:
            return []
        connection = connections[self.using]
        if self._prepared != connection.alias:
            self._prepare(connection)
        defaults = [f.get_db_prep_save(f.get_default(), connection) for f in self._defaulted]
        if self._copy is not None:  # a default of a JSON column the rows do not carry, as text
            offset = len(self._fields)
            for index in self._json_defaults:
                value = defaults[index - offset]
                if value is not None:
                    defaults[index - offset] = _json_text(getattr(value, "obj", value))
        memo = {} if converted is None else converted
        # One cache per converter: the same datetime is text in one column and an integer in another.
        converters = [
            (index, converter, memo.setdefault(converter, {}) if cacheable else None)
            for index, converter, cacheable in self._converters
        ]
        for n, (index, converter, cache) in enumerate(converters):
            if isinstance(converter, _PerInsert):  # made for this statement (looks things up in its transaction)
                converters[n] = (index, converter.make(connection), cache)
        prepared = []
        for row in rows:
            values = list(row)
            for index, converter, cache in converters:
                value = values[index]
                if value is None:
                    continue
                if cache is not None:
                    db_value = cache.get(value)
                    if db_value is None:
                        db_value = cache[value] = converter(value)
                    values[index] = db_value
                else:
                    values[index] = converter(value)
            if defaults:
                values.extend(defaults)
            prepared.append(values)
        pks = []
        if self._copy is not None:
            return self._copy_rows(connection, prepared)
        if self._unnest is not None:
            columns = [list(column) for column in zip(*prepared, strict=True)]
            for index in self._floats:  # one element type per array: 20 and 20.5 both as float8
                columns[index] = [None if v is None else float(v) for v in columns[index]]
            for index in self._json_defaults:  # a default of a JSON column the rows do not carry, as text
                columns[index] = [None if v is None else _json_text(getattr(v, "obj", v)) for v in columns[index]]
            # Server-side binding (binary) on the same connection, in the same transaction.
            with (
                connection.cursor() as cursor,
                connection.wrap_database_errors,
                psycopg.Cursor(cursor.cursor.connection) as server,
            ):
                server.execute(self._unnest, columns, binary=True)
                pks = [row[0] for row in server.fetchall()]
            if len(pks) != len(rows):
                raise RuntimeError(f"{self.model.__name__}: inserted {len(rows)} rows but got {len(pks)} keys back")
            return pks
        with connection.cursor() as cursor:
            for start in range(0, len(prepared), self._chunk):
                chunk = prepared[start : start + self._chunk]
                sql = self._head + ", ".join([self._placeholders] * len(chunk)) + self._tail
                params = list(itertools.chain.from_iterable(chunk))
                if self._qmark and not connection.queries_logged:
                    with connection.wrap_database_errors:
                        raw = sqlite3.Cursor.execute(cursor.cursor, sql, params)
                else:
                    raw = cursor.execute(self._as_format(sql), params)
                pks.extend(row[0] for row in raw.fetchall())
        if len(pks) != len(rows):
            raise RuntimeError(f"{self.model.__name__}: inserted {len(rows)} rows but got {len(pks)} keys back")
        return pks

    def _copy_statements(self, connection, names):
        """``(the sequence query, the COPY statement)``, or None when the key has no sequence behind it."""
        meta = self.model._meta
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [meta.db_table, meta.pk.column])
            sequence = cursor.fetchone()[0]
        if sequence is None:
            return None
        quote = connection.ops.quote_name
        # generate_series runs nextval once per row, in order: the keys rise in the order of the rows.
        keys = "SELECT nextval(%s::regclass) FROM generate_series(1, %s)"
        copy = f"COPY {quote(meta.db_table)} ({quote(meta.pk.column)}, {names}) FROM STDIN"
        return keys, sequence, copy

    def _copy_rows(self, connection, prepared):
        keys, sequence, copy_sql = self._copy
        with connection.cursor() as cursor, connection.wrap_database_errors:
            raw = cursor.cursor
            raw.execute(keys, (sequence, len(prepared)))
            pks = [row[0] for row in raw.fetchall()]
            with raw.copy(copy_sql) as copy:
                write = copy.write_row
                for pk, values in zip(pks, prepared, strict=True):
                    values.insert(0, pk)
                    write(values)
        return pks

    def _as_format(self, sql):
        """The statement in Django's own ``%s`` style (the logged, wrapped path)."""
        return sql.replace("?", "%s") if self._qmark else sql


class RowUpdater:
    """``UPDATE table SET <fields> WHERE pk = %s`` for many rows at once (``executemany``)."""

    def __init__(self, model, using="default"):
        self.model = model
        self.using = using
        self._statements = {}

    def update(self, instances, field_names):
        connection = connections[self.using]
        key = (connection.alias, tuple(field_names))
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = self._prepare(connection, field_names)
        sql, fields = statement
        params = []
        for instance in instances:
            values = [f.get_db_prep_save(getattr(instance, f.attname), connection) for f in fields]
            values.append(instance.pk)
            params.append(values)
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)

    def _prepare(self, connection, field_names):
        quote = connection.ops.quote_name
        meta = self.model._meta
        fields = [meta.get_field(name) for name in field_names]
        assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
        return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {quote(meta.pk.column)} = %s", fields


class StoredRow:
    """A row written by ``RowInserter``: its values and primary key, and a model instance on demand."""

    __slots__ = ("_instance", "columns", "device", "model", "pk", "values")

    def __init__(self, model, columns, values, device=None):
        self.model = model
        self.columns = columns
        self.values = values
        self.device = device  # the already loaded device the row belongs to (set on the instance: no query)
        self.pk = None
        self._instance = None

    def get(self, column):
        return self.values[self.columns.index(column)]

    def instance(self):
        """The saved model instance (built once; nothing is queried)."""
        if self._instance is None:
            instance = self.model(**dict(zip(self.columns, self.values, strict=True)))
            instance.pk = self.pk
            instance._state.adding = False
            instance._state.db = "default"
            if self.device is not None:
                instance.device = self.device
            self._instance = instance
        return self._instance


def _field(meta, attname):
    for field in meta.concrete_fields:
        if field.attname == attname:
            return field
    raise LookupError(f"{meta.label} has no column {attname!r}")


def _converter(field, connection):
    """What turns a Python value into the database value for ``field``; None when the value goes as is.

    Same conversions as the fields' ``get_db_prep_save`` for the types the hub writes, faster; any other
    field type uses ``get_db_prep_save`` itself.
    """
    if isinstance(field, AuditPayloadField):
        return _PerInsert(field.compactor)
    if isinstance(field, UsualValueCharField):
        usual = field.usual
        return lambda value: "" if value == usual else value
    if field.is_relation or field.get_internal_type() in _AS_IS:
        return None
    if isinstance(field, CompactDateTimeField) and connection.vendor == "sqlite":
        return to_microseconds
    if isinstance(field, DateTimeField):
        if connection.vendor == "sqlite" and settings.USE_TZ and connection.timezone is UTC:
            return _sqlite_utc_datetime
        return connection.ops.adapt_datetimefield_value
    if isinstance(field, (BigIntegerField, IntegerField)):
        return int
    if isinstance(field, JSONField) and connection.vendor in ("sqlite", "postgresql") and field.encoder is None:
        return _json_text  # PostgreSQL: text, cast to jsonb by the INSERT
    return lambda value: field.get_db_prep_save(value, connection)


class _PerInsert:
    """A converter that ``make(connection)`` builds anew for each insert."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


_AS_IS = frozenset({"CharField", "TextField", "FloatField", "BooleanField", "BinaryField"})


def _sqlite_utc_datetime(value):
    """What Django's SQLite backend stores for a datetime when the connection's time zone is UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return str(value)


def _json_text(value):
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson will not encode (integers beyond 64 bits): the stdlib will
        return json.dumps(value)
