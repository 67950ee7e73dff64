"""Emptying the database after a transactional test without rebuilding content types and permissions.

Django ends each transactional test (``transactional_db``, ``django_db(transaction=True)``) with ``flush``:
every table is emptied, then ``post_migrate`` runs again and creates every content type and permission
anew. That second half costs about 40 ms a test, three quarters of each hub test's teardown, and yields the
same rows each time. ``install()`` keeps those two tables instead when they hold exactly the rows they held
after the last full flush, and empties every other table as ``flush`` does: the next test starts from the
same database. A test that changed a content type or a permission gets the full ``flush``.

The other ``post_migrate`` receivers have nothing to redo after a flush: guardian's cache is of content
types, which stay as they were; the hub's timestamp conversion and rollup backfill work on stored messages,
which the flush has just removed. One is called here: the hub's cache of payload shapes
(``hubserver.fields.forget_shapes``), whose table the flush has emptied.
"""

from django.core.management import call_command
from django.core.management.color import no_style
from django.db import connections
from django.test import TransactionTestCase

from hubserver.fields import forget_shapes

_full_teardown = TransactionTestCase._fixture_teardown
_kept_rows = {}  # database alias -> the rows of the kept tables after its last full flush


def _kept_tables():
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    return [ContentType._meta.db_table, Permission._meta.db_table]


def _rows(connection, tables):
    with connection.cursor() as cursor:
        rows = []
        for table in tables:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)} ORDER BY 1")
            rows.append(cursor.fetchall())
        return rows


def _fixture_teardown(self):
    if self.available_apps is not None or self.serialized_rollback:
        return _full_teardown(self)  # flushes that skip post_migrate on purpose: Django's own way
    kept = _kept_tables()
    for alias in self._databases_names(include_mirrors=False):
        connection = connections[alias]
        if _kept_rows.get(alias) == _rows(connection, kept):
            tables = [
                table
                for table in connection.introspection.django_table_names(only_existing=True, include_views=False)
                if table not in kept
            ]
            statements = connection.ops.sql_flush(no_style(), tables, reset_sequences=False, allow_cascade=False)
            connection.ops.execute_sql_flush(statements)
            forget_shapes()
        else:
            # What Django's teardown does for this database (no available_apps, no serialized rollback)
            call_command(
                "flush",
                verbosity=0,
                interactive=False,
                database=alias,
                reset_sequences=False,
                allow_cascade=False,
                inhibit_post_migrate=False,
            )
            _kept_rows[alias] = _rows(connection, kept)


def install():
    TransactionTestCase._fixture_teardown = _fixture_teardown


def uninstall():
    TransactionTestCase._fixture_teardown = _full_teardown
