"""What the stored data costs: rows, bytes (table and indexes) and the oldest row kept, per type and table.

Counting rows and sizing tables reads a lot on a big database, so the figures are taken in a thread of
their own, at most every ``MAX_AGE`` seconds, and whoever shows them (``/metrics``, the admin's Storage
page) gets the latest ones with their age. The oldest row comes from the table's time index.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from ..registry import registry

logger = logging.getLogger("hubserver.lifecycle")

MAX_AGE = 300  # seconds a set of figures is shown before a new one is taken
TABLES = (("messages", 2, "received_at"), ("readings", 1, "timestamp"), ("rollups", None, "start"))


@dataclass(frozen=True)
class TableFigures:
    type_name: str
    table: str  # "messages" (inbound and outbound), "readings" or "rollups"
    db_table: str
    rows: int
    bytes: int | None  # the table and its indexes; None where the database cannot say
    oldest: datetime | None


@dataclass(frozen=True)
class Snapshot:
    tables: tuple
    database_bytes: int | None
    taken_at: float  # time.time()
    seconds: float  # how long taking it took

    def age(self):
        return max(0.0, time.time() - self.taken_at)


def collect(using=DEFAULT_DB_ALIAS):
    """Take the figures now (in this thread); returns a Snapshot."""
    started = time.monotonic()
    connection = connections[using]
    tables = []
    for device_type, *models in sorted(registry.all_with_models(), key=lambda row: row[0].type_name()):
        for table, position, time_field in TABLES:
            model = models[position] if position is not None else device_type.get_rollup_model()
            if model is None:
                continue
            rows = model._base_manager.using(using)
            oldest = rows.order_by(time_field).values_list(time_field, flat=True).first()
            tables.append(
                TableFigures(
                    device_type.type_name(),
                    table,
                    model._meta.db_table,
                    rows.count(),
                    _table_bytes(connection, model._meta.db_table),
                    oldest,
                )
            )
    return Snapshot(tuple(tables), _database_bytes(connection), time.time(), time.monotonic() - started)


def _table_bytes(connection, table):
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                names = [table]
                names += [
                    row[0]
                    for row in cursor.execute(
                        "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = %s", [table]
                    ).fetchall()
                ]
                total = 0
                for name in names:  # dbstat answers one b-tree at a time without walking the others
                    cursor.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = %s AND aggregate = TRUE", [name])
                    total += cursor.fetchone()[0] or 0
                return total
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_total_relation_size(%s::regclass)", [connection.ops.quote_name(table)])
                return cursor.fetchone()[0]
    except DatabaseError:  # SQLite built without dbstat, or a database that cannot tell
        return None
    return None


def _database_bytes(connection):
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("PRAGMA page_count")
                pages = cursor.fetchone()[0]
                cursor.execute("PRAGMA page_size")
                return pages * cursor.fetchone()[0]
            if connection.vendor == "postgresql":
                cursor.execute("SELECT pg_database_size(current_database())")
                return cursor.fetchone()[0]
    except DatabaseError:
        return None
    return None


class StorageFigures:
    """The latest Snapshot, taken again in a background thread once it is older than ``max_age``."""

    def __init__(self, max_age=MAX_AGE):
        self.max_age = max_age
        self.snapshot = None
        self.errors = 0
        self._lock = threading.Lock()
        self._thread = None

    def latest(self):
        """The latest figures (None before the first are taken); starts taking new ones if they are old."""
        snapshot = self.snapshot
        if snapshot is None or snapshot.age() > self.max_age:
            self.refresh_in_background()
        return snapshot

    def refresh_in_background(self):
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._take, name="hubserver-storage-figures", daemon=True)
            self._thread.start()

    def refresh(self):
        """Take the figures now, in this thread, and return them."""
        self.snapshot = collect()
        return self.snapshot

    def _take(self):
        try:
            self.refresh()
        except Exception:
            self.errors += 1
            logger.exception("taking the storage figures failed")
        finally:
            connections.close_all()  # this thread's own connections


storage_figures = StorageFigures()
