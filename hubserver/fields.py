"""``CompactDateTimeField``: a DateTimeField stored on SQLite as an integer, microseconds since 1970 (UTC).

Django stores a datetime on SQLite as 26 characters of text ("2026-11-30 02:49:18.732949"); the hub's
audit trail and readings have two each per row and three time indexes, most of the bytes a message costs.
An integer holds the same microseconds in 8 bytes, sorts the same, and compares as fast. On every other
database the field is a plain DateTimeField (``timestamp with time zone`` on PostgreSQL).

Python sees datetimes in and out. Django's SQLite date functions (``__date``, ``__month``, ``Trunc``,
``Extract``, ``.dates()``/``.datetimes()`` and so the admin's ``date_hierarchy``) parse stored text; the
``connection_created`` receiver ``install`` re-registers them on every SQLite connection so they accept
integers too, and makes the backend's datetime converter read them. ``__year``/``__iso_year``, which
Django turns into a range of text bounds, get their own lookups with integer bounds.

Not supported on these columns on SQLite: ``F("column") + timedelta`` (Django's SQLite arithmetic reads an
integer as a duration) and comparisons with ``Now()`` (text): compare with a Python datetime instead.

A table written by an older hub gets the column's new declared type from the migration (which copies the
table on SQLite, keeping the values) and its text converted to integers after ``migrate``
(``hubserver.lifecycle.timestamps``), so old rows read, sort and filter like new ones.
"""

import json
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.db import models
from django.db.models.fields.json import KeyTransform, KeyTransformFactory
from django.db.models.functions import ExtractIsoYear, ExtractYear
from django.db.models.lookups import YearExact, YearGt, YearGte, YearLt, YearLte
from django.utils import timezone

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAIVE_EPOCH = datetime(1970, 1, 1)
ONE = timedelta(microseconds=1)


def to_microseconds(value):
    """A datetime as integer microseconds since 1970 UTC (a naive one is taken as UTC, as Django's SQLite
    backend stores a naive value as it is)."""
    if value.tzinfo is None:
        return (value - NAIVE_EPOCH) // ONE
    return (value - EPOCH) // ONE


def from_microseconds(value):
    """The stored integer as a datetime: aware UTC when ``USE_TZ``, else naive."""
    # timedelta(0, 0, n): positional arguments build it twice as fast as microseconds=n.
    return (EPOCH if settings.USE_TZ else NAIVE_EPOCH) + timedelta(0, 0, value)


def _as_text(value):
    """The stored integer as the text Django's SQLite backend would have stored (naive UTC)."""
    return str(NAIVE_EPOCH + timedelta(0, 0, value))


class CompactDateTimeField(models.DateTimeField):
    """See the module docstring: integer microseconds on SQLite, a plain DateTimeField elsewhere."""

    description = "Date (with time), stored compactly on SQLite"

    def db_type(self, connection):
        # Declared "integer", not "datetime": Python's sqlite3 module would hand a "datetime" column's
        # values to Django's text parser (registered for that declared type) before anything else sees them.
        if connection.vendor == "sqlite":
            return "integer"
        return super().db_type(connection)

    def get_db_prep_value(self, value, connection, prepared=False):
        if connection.vendor != "sqlite":
            return super().get_db_prep_value(value, connection, prepared)
        if not prepared:
            value = self.get_prep_value(value)
        if value is None or hasattr(value, "resolve_expression"):
            return value
        if isinstance(value, str):  # what an already adapted value looks like
            value = datetime.fromisoformat(value)
        return to_microseconds(value)

    def from_db_value(self, value, expression, connection):
        # The backend's converter (``install``) has made a datetime of an integer already; this covers a
        # query compiled without it (a connection made before the receiver was connected).
        if isinstance(value, int):
            return from_microseconds(value)
        return value


class _CompactYearBounds:
    """A year lookup whose bounds are the field's stored values (integers on SQLite), not Django's text."""

    def year_lookup_bounds(self, connection, year):
        field = self.lhs.lhs.output_field
        if connection.vendor != "sqlite" or not isinstance(field, CompactDateTimeField):
            return super().year_lookup_bounds(connection, year)
        if isinstance(self.lhs, ExtractIsoYear):
            first = datetime.fromisocalendar(year, 1, 1)
            second = datetime.fromisocalendar(year + 1, 1, 1) - ONE
        else:
            first = datetime(year, 1, 1)
            second = datetime(year, 12, 31, 23, 59, 59, 999999)
        if settings.USE_TZ:
            zone = timezone.get_current_timezone()
            first, second = timezone.make_aware(first, zone), timezone.make_aware(second, zone)
        return [to_microseconds(first), to_microseconds(second)]


class CompactExtractYear(ExtractYear):
    pass


class CompactExtractIsoYear(ExtractIsoYear):
    pass


for _transform in (CompactExtractYear, CompactExtractIsoYear):
    for _lookup in (YearExact, YearGt, YearGte, YearLt, YearLte):
        _transform.register_lookup(type(_lookup.__name__, (_CompactYearBounds, _lookup), {}))
    CompactDateTimeField.register_lookup(_transform)


def _accepting_integers(function, position):
    """``function`` (one of Django's SQLite date functions) with an integer argument at ``position`` read as
    stored microseconds."""

    def wrapper(*args):
        value = args[position]
        if isinstance(value, int):
            args = (*args[:position], _as_text(value), *args[position + 1 :])
        return function(*args)

    return wrapper


def install(sender, connection, **kwargs):
    """``connection_created`` receiver: teach a new SQLite connection to read integer timestamps."""
    if connection.vendor != "sqlite":
        return
    from django.db.backends.sqlite3 import _functions as sqlite_functions

    for name, arity, function, position in (
        ("django_date_extract", 2, sqlite_functions._sqlite_datetime_extract, 1),
        ("django_date_trunc", 4, sqlite_functions._sqlite_date_trunc, 1),
        ("django_datetime_cast_date", 3, sqlite_functions._sqlite_datetime_cast_date, 0),
        ("django_datetime_cast_time", 3, sqlite_functions._sqlite_datetime_cast_time, 0),
        ("django_datetime_extract", 4, sqlite_functions._sqlite_datetime_extract, 1),
        ("django_datetime_trunc", 4, sqlite_functions._sqlite_datetime_trunc, 1),
    ):
        connection.connection.create_function(name, arity, _accepting_integers(function, position), deterministic=True)

    def timestamp_diff(lhs, rhs):
        lhs = _as_text(lhs) if isinstance(lhs, int) else lhs
        rhs = _as_text(rhs) if isinstance(rhs, int) else rhs
        return sqlite_functions._sqlite_timestamp_diff(lhs, rhs)

    connection.connection.create_function("django_timestamp_diff", 2, timestamp_diff, deterministic=True)
    convert = connection.ops.convert_datetimefield_value

    def convert_datetime(value, expression, connection):
        if isinstance(value, int):
            return from_microseconds(value)
        return convert(value, expression, connection)

    connection.ops.convert_datetimefield_value = convert_datetime


def compact_columns(model):
    """The columns of ``model`` that are CompactDateTimeFields."""
    return [f.column for f in model._meta.concrete_fields if isinstance(f, CompactDateTimeField)]


def text_to_microseconds_sql(column):
    """SQL turning the text Django's SQLite backend stored ("YYYY-MM-DD HH:MM:SS[.ffffff]", UTC) into
    integer microseconds; whole seconds from ``unixepoch``-style ``strftime('%s')``, the fraction as digits."""
    return (
        f"CAST(strftime('%s', {column}) AS INTEGER) * 1000000"
        f" + CAST(substr(substr({column}, 20, 7) || '000000', 2, 6) AS INTEGER)"
    )


class UsualValueCharField(models.CharField):
    """A CharField that stores its ``usual`` value as the empty string: zero bytes on disk instead of its text.

    Nearly every row of the audit trail says ``inbound``, ``completed`` and ``application/json``; stored in
    full, those words are about a tenth of what a message costs. Python sees the value in and out: it is
    mapped when it goes to the database (saves, updates, the writer's inserts, and the right-hand side of
    ``exact``/``in`` lookups, which is what filters, the admin's list filters and partial-index conditions
    use) and back in ``from_db_value``, so ``filter(direction="inbound")`` finds the rows stored as ``''``.

    An empty value reads back as ``usual`` (use this field only where ``''`` is not a value of its own), and
    pattern lookups (``contains``, ``startswith``...) and raw SQL see the stored ``''``. Rows written before the
    field stored them empty are converted after ``migrate`` (``hubserver.lifecycle.usual``).
    """

    description = "Text, its usual value stored empty"

    def __init__(self, *args, usual, **kwargs):
        self.usual = usual
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        kwargs["usual"] = self.usual
        return name, path, args, kwargs

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return "" if value == self.usual else value

    def from_db_value(self, value, expression, connection):
        return self.usual if value == "" else value


def usual_value_columns(model):
    """``[(column, usual value)]`` of ``model``'s UsualValueCharFields."""
    return [(f.column, f.usual) for f in model._meta.local_concrete_fields if isinstance(f, UsualValueCharField)]


# Audit payloads. The keys of a data message that holds exactly its type's Readings, in their declared order,
# are stored once, in a row of ``SHAPE_TABLE``; the payload as ``[shape id, value, value...]``.
SHAPE_TABLE = "hubserver_payloadshape"
LIST_KEY = "[]"  # a payload that is itself a list (or an object of only this key) is stored as {"[]": payload}
_shapes = {}  # database -> {shape id: keys}, only shapes known to be committed
_keys = {}  # database -> {keys: shape id}
_tables = {}  # database -> its tables, as last seen (is the shape table there yet?)


class AuditPayloadField(models.JSONField):
    """The Message's ``payload_json``: JSON, with the keys of the usual data message stored once, not per row.

    A data message whose object holds exactly its type's Readings, in their declared order (what most
    devices send), is written by the hub's writer as ``[shape, v1, v2...]``: ``shape`` is the id of a row of
    ``SHAPE_TABLE`` that holds the keys. ``from_db_value`` gives the object back, the same keys in the same
    order with the same values, so models, ``values()``, the admin and the API see what parsed. The keys are
    kept with the rows, not taken from the current declaration: adding, removing or reordering Readings
    later makes a new shape, and older rows keep reading as they were stored.

    JSON lookups (``payload_json__temperature__gt``, ``has_key``, ``contains``...) see the object too: the
    column is rebuilt in SQL (``ExpandedPayload``) before a key is looked up. Raw SQL sees the stored array.
    Anything else is stored as ``JSONField`` stores it; a payload that is a list is wrapped as
    ``{"[]": payload}`` so it cannot be mistaken for a compact one.
    """

    description = "JSON, the usual keys stored once"
    shape_keys = ()  # set on each generated Message model's field: its type's Reading names, in order

    def get_prep_value(self, value):
        if isinstance(value, list) or (isinstance(value, dict) and len(value) == 1 and LIST_KEY in value):
            value = {LIST_KEY: value}
        return super().get_prep_value(value)

    def from_db_value(self, value, expression, connection):
        value = super().from_db_value(value, expression, connection)
        if isinstance(expression, KeyTransform):
            return value
        if isinstance(value, list):
            return expand_payload(value, connection)
        if isinstance(value, dict) and len(value) == 1 and LIST_KEY in value:
            return value[LIST_KEY]
        return value

    def compactor(self, connection):
        """A function of one value to its database text, compacting the usual shape; for one batch (the shape
        id it looks up is remembered only for the calls of the function it returned)."""
        keys = tuple(self.shape_keys)
        size = len(keys) or -1
        prepare = self.get_prep_value
        dumps = orjson.dumps
        shape = None

        def convert(value):
            nonlocal shape
            if type(value) is dict:
                if len(value) == size and tuple(value) == keys:
                    if shape is None:
                        shape = shape_id(connection, keys)
                    try:
                        return dumps([shape, *value.values()]).decode()
                    except TypeError:
                        return _json_text([shape, *value.values()])
                if len(value) != 1 or LIST_KEY not in value:
                    return _json_text(value)
            return _json_text(prepare(value))

        return convert

    def get_transform(self, name):
        transform = super().get_transform(name)
        if isinstance(transform, KeyTransformFactory):
            return _ExpandingKeyTransformFactory(name)
        return transform

    def get_lookup(self, name):
        lookup = super().get_lookup(name)
        if lookup is None or name == "isnull":
            return lookup
        return _expanding_lookup(lookup)


def _json_text(value):
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # what orjson will not encode (integers beyond 64 bits): the standard library will
        return json.dumps(value)


def _database(connection):
    settings_dict = connection.settings_dict
    return (connection.alias, str(settings_dict.get("NAME")), settings_dict.get("HOST"), settings_dict.get("PORT"))


def shape_id(connection, keys):
    """The id of the shape of ``keys`` (created if new), in ``connection``'s current transaction."""
    database = _database(connection)
    known = _keys.get(database, {}).get(keys)
    if known is not None:
        return known
    text = _json_text(list(keys))
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {SHAPE_TABLE} (keys) VALUES (%s) ON CONFLICT (keys) DO NOTHING", [text])
        cursor.execute(f"SELECT id FROM {SHAPE_TABLE} WHERE keys = %s", [text])
        found = cursor.fetchone()[0]
    _remember(connection, database, {found: keys})
    return found


def _remember(connection, database, shapes):
    """Cache shapes once they are committed: a shape of a transaction that rolls back may come back with another
    id (SQLite reuses it), so it is known only to the transaction that made it until then."""

    def keep():
        _shapes.setdefault(database, {}).update(shapes)
        _keys.setdefault(database, {}).update({keys: pk for pk, keys in shapes.items()})

    if connection.in_atomic_block:
        _transaction_shapes(connection).update(shapes)
        connection.on_commit(keep)
    else:
        keep()


def _transaction_shapes(connection):
    outermost = connection.atomic_blocks[0] if connection.atomic_blocks else connection
    cache = getattr(outermost, "_hub_payload_shapes", None)
    if cache is None:
        cache = outermost._hub_payload_shapes = {}
    return cache


def shapes(connection):
    """``{shape id: keys}`` of every shape ``connection`` can see (cached once committed)."""
    database = _database(connection)
    known = _shapes.get(database)
    in_transaction = connection.in_atomic_block
    if known is None or in_transaction:
        database_tables = _tables.get(database)
        if database_tables is None or SHAPE_TABLE not in database_tables:  # not migrated yet: no shapes
            database_tables = _tables[database] = set(connection.introspection.table_names())
            if SHAPE_TABLE not in database_tables:
                return {}
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, keys FROM {SHAPE_TABLE}")
            found = {pk: tuple(orjson.loads(keys)) for pk, keys in cursor.fetchall()}
        if not in_transaction:
            _shapes[database] = found
            _keys[database] = {keys: pk for pk, keys in found.items()}
        return found
    return known


def _shape_keys(connection, shape):
    known = _shapes.get(_database(connection), {}).get(shape)
    if known is None and connection.in_atomic_block:
        known = _transaction_shapes(connection).get(shape)
    if known is None:
        known = shapes(connection).get(shape)
        if connection.in_atomic_block and known is not None:
            _transaction_shapes(connection)[shape] = known
    return known


def expand_payload(value, connection):
    """The object a compact payload stands for (a stored list that is not one is returned as it is)."""
    if not value or type(value[0]) is not int:
        return value
    keys = _shape_keys(connection, value[0])
    if keys is None or len(keys) != len(value) - 1:
        return value
    return dict(zip(keys, value[1:], strict=True))


def forget_shapes(**kwargs):
    """``post_migrate`` receiver (a flush emits it too): shapes are looked up again."""
    _shapes.clear()
    _keys.clear()
    _tables.clear()


class ExpandedPayload(models.Func):
    """``payload_json`` with its compact rows rebuilt as objects, in SQL: what JSON lookups look into."""

    def __init__(self, column):
        super().__init__(column, output_field=models.JSONField())

    def as_sql(self, compiler, connection, **extra_context):
        column, params = compiler.compile(self.source_expressions[0])
        known = shapes(connection)
        if not known or params:  # a column has no parameters; anything else is looked into as it is
            return column, params
        postgresql = connection.vendor == "postgresql"
        branches, keys_params = [], []
        for pk, keys in sorted(known.items()):
            if postgresql:
                pairs = ", ".join(f"%s::text, ({column} -> {n})" for n in range(1, len(keys) + 1))
                branches.append(f"WHEN '{int(pk)}' THEN jsonb_build_object({pairs})")
            else:
                pairs = ", ".join(f"%s, {column} -> '$[{n}]'" for n in range(1, len(keys) + 1))
                branches.append(f"WHEN {int(pk)} THEN json_object({pairs})")
            keys_params.extend(keys)
        if postgresql:
            test, shape = f"jsonb_typeof({column}) = 'array'", f"({column} ->> 0)"
        else:
            test, shape = f"json_type({column}) = 'array'", f"json_extract({column}, '$[0]')"
        return f"(CASE WHEN {test} THEN (CASE {shape} {' '.join(branches)} END) ELSE {column} END)", keys_params


class _ExpandingKeyTransformFactory(KeyTransformFactory):
    def __call__(self, *args, **kwargs):
        lhs, rest = args[0], args[1:]
        return KeyTransform(self.key_name, ExpandedPayload(lhs), *rest, **kwargs)


_expanding_lookups = {}


def _expanding_lookup(lookup):
    """``lookup`` (a class) applied to the rebuilt payload."""
    expanding = _expanding_lookups.get(lookup)
    if expanding is None:

        def __init__(self, lhs, rhs):
            lookup.__init__(self, ExpandedPayload(lhs), rhs)

        expanding = _expanding_lookups[lookup] = type(lookup.__name__, (lookup,), {"__init__": __init__})
    return expanding
