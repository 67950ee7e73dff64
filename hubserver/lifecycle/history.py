"""History queries: raw readings or a rollup bucket, chosen for a range, as plain rows for the API.

``?bucket=1m|1h|1d`` asks for a bucket; ``?bucket=auto`` lets the hub choose: the raw readings when the
range holds at most ``limit`` of them (and the raw rows of the whole range are still kept), else the
finest bucket of which the range holds at most ``limit``. An aggregate row is::

    {"device": "ws-1", "bucket": "1h", "start": "...Z", "end": "...Z",
     "temperature": {"count": 60, "min": 3.5, "max": 4.25, "mean": 3.9, "last": 4.0, "last_at": "...Z"}, ...}

one key per numeric Reading (``count`` 0 and the rest null when the bucket has none of it).
"""

from datetime import UTC, datetime, timedelta

from django.db import connections
from django.utils import timezone

from .buckets import BUCKETS, LABELS
from .retention import retention_for
from .rollups import SUFFIXES

AUTO = "auto"
RAW = "raw"
CHOICES = (*BUCKETS, AUTO)


def iso(value):
    """``2026-11-29T10:00:00Z`` (UTC, as the rest of the API writes times). A naive datetime (how a plain
    SQLite cursor returns a stored one) or the stored text itself is UTC already."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.replace(" ", "T", 1) + "Z"
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def _as_datetime(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def rollup_values(device_type):
    """The columns ``aggregate_rows`` reads, in order."""
    names = device_type.get_rollup_model().reading_names
    return ("device__device_id", "bucket", "start", *(f"{n}_{s}" for n in names for s in SUFFIXES))


def aggregate_values(device_type, queryset):
    """``queryset`` (of a Rollup model) as the tuples ``aggregate_dicts`` takes (paginate this one)."""
    return queryset.values_list(*rollup_values(device_type))


def aggregate_rows(device_type, queryset):
    """The rollup rows of ``queryset`` (a Rollup queryset, ordered) as API dicts.

    Read with a plain cursor: the times stay as the database driver returns them instead of each going
    through Django's converters as well, which took most of the time of a month of hourly rows."""
    values = aggregate_values(device_type, queryset)
    sql, params = values.query.get_compiler(using=values.db).as_sql()
    with connections[values.db].cursor() as cursor:
        cursor.execute(sql, params)
        return aggregate_dicts(device_type, cursor.fetchall())


def aggregate_dicts(device_type, rows):
    """API dicts of rollup tuples (from ``aggregate_values``)."""
    names = device_type.get_rollup_model().reading_names
    out = []
    for row in rows:
        device_id, bucket, start = row[:3]
        item = {
            "device": device_id,
            "bucket": LABELS.get(bucket, str(bucket)),
            "start": iso(start),
            "end": iso(_as_datetime(start) + timedelta(seconds=bucket)),
        }
        position = 3
        for name in names:
            count, low, high, total, last, last_at = row[position : position + len(SUFFIXES)]
            position += len(SUFFIXES)
            item[name] = {
                "count": count,
                "min": low,
                "max": high,
                "mean": total / count if count else None,
                "last": last,
                "last_at": iso(last_at),
            }
        out.append(item)
    return out


def aggregate_csv_columns(device_type):
    names = device_type.get_rollup_model().reading_names
    return ["device", "bucket", "start", "end", *(f"{n}_{s}" for n in names for s in STATS)]


STATS = ("count", "min", "max", "mean", "last", "last_at")


def aggregate_csv_rows(device_type, queryset, chunk=2000):
    """Flat rows for a CSV export (``aggregate_csv_columns``), read in chunks."""
    names = device_type.get_rollup_model().reading_names
    for item in _chunked(device_type, queryset, chunk):
        yield [
            item["device"],
            item["bucket"],
            item["start"],
            item["end"],
            *(item[name][stat] for name in names for stat in STATS),
        ]


def _chunked(device_type, queryset, chunk):
    offset = 0
    while True:
        rows = aggregate_rows(device_type, queryset[offset : offset + chunk])
        yield from rows
        if len(rows) < chunk:
            return
        offset += chunk


def rollup_queryset(device_type, bucket, since=None, until=None, devices=None):
    """Rollup rows of one bucket length whose bucket starts in ``[since floored to the bucket, until)``."""
    seconds = BUCKETS[bucket]
    rows = device_type.get_rollup_model()._default_manager.filter(bucket=seconds)
    if devices is not None:
        rows = rows.filter(device__in=devices)
    if since is not None:
        rows = rows.filter(start__gte=floor(since, seconds))
    if until is not None:
        rows = rows.filter(start__lt=until)
    return rows


def floor(moment, seconds):
    """The start of the ``seconds``-long bucket ``moment`` falls in (UTC)."""
    stamp = int(moment.timestamp() // seconds * seconds)
    return datetime.fromtimestamp(stamp, UTC)


def choose(device_type, raw_queryset, since, until, limit):
    """``"raw"`` or a bucket label for ``[since, until)``: the raw readings if the range holds at most
    ``limit`` of them and none of the range is past the raw readings' retention, else the finest bucket of
    which the range holds at most ``limit`` and whose retention covers it; the day buckets without ``since``."""
    if device_type.get_rollup_model() is None:
        return RAW
    now = timezone.now()
    until = until or now
    keep = retention_for(device_type)

    def kept_since(duration):
        return since is not None and (duration is None or since >= now - duration)

    if kept_since(keep.readings):
        in_range = raw_queryset.filter(timestamp__gte=since, timestamp__lt=until)
        if in_range[: limit + 1].count() <= limit:
            return RAW
    if since is not None:
        span = (until - since).total_seconds()
        for label, seconds in BUCKETS.items():
            if span / seconds <= limit and kept_since(keep.rollups[label]):
                return label
    return list(BUCKETS)[-1]
