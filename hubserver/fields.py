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

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import models
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
