"""Timestamps an older hub stored as text, converted to the integers ``CompactDateTimeField`` stores.

Runs after every ``migrate`` (SQLite only), on the columns a migration has already declared ``integer`` (a
devices file's tables change when the hub writes and applies their migration: ``hubserver run`` or any
command but ``migrate``). Whether a table has any text left is one look at the end of its time index (text
sorts after every integer in SQLite); a table with some gets all its compact columns converted in one
UPDATE, in one transaction.
"""

import logging

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ..fields import CompactDateTimeField, text_to_microseconds_sql

logger = logging.getLogger("hubserver.lifecycle")


def convert_text_timestamps(using=DEFAULT_DB_ALIAS):
    """Convert text timestamps of every installed model's CompactDateTimeFields; returns
    ``{db_table: rows converted}`` for the tables that had some."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return {}
    tables = set(connection.introspection.table_names())
    done = {}
    for model in apps.get_models():
        meta = model._meta
        if not meta.managed or meta.proxy or meta.db_table not in tables:
            continue
        fields = [f for f in meta.local_concrete_fields if isinstance(f, CompactDateTimeField)]
        if not fields:
            continue
        quote = connection.ops.quote_name
        table = quote(meta.db_table)
        with connection.cursor() as cursor:
            # Only columns the migrations have declared "integer": Python's sqlite3 module hands a value of a
            # column still declared "datetime" to Django's text parser, which reads an integer as nothing.
            cursor.execute(f"PRAGMA table_info({table})")
            integer = {row[1] for row in cursor.fetchall() if row[2].lower() == "integer"}
            fields = [f for f in fields if f.column in integer]
            if not fields:
                continue
            indexed = [f for f in fields if f.db_index] or fields
            if not any(_has_text(cursor, table, quote(f.column)) for f in indexed):
                continue
            columns = [quote(f.column) for f in fields]
            assignments = ", ".join(
                f"{c} = CASE WHEN typeof({c}) = 'text' THEN {text_to_microseconds_sql(c)} ELSE {c} END" for c in columns
            )
            where = " OR ".join(f"typeof({c}) = 'text'" for c in columns)
            logger.info("converting the text timestamps of %s to integers", meta.db_table)
            with transaction.atomic(using=using):
                cursor.execute(f"UPDATE {table} SET {assignments} WHERE {where}")
                done[meta.db_table] = cursor.rowcount
    return done


def _has_text(cursor, table, column):
    # MAX() over an indexed column reads the index's last entry; text is greater than any number.
    cursor.execute(f"SELECT typeof(MAX({column})) FROM {table}")
    return cursor.fetchone()[0] == "text"


def after_migrate(sender, using=DEFAULT_DB_ALIAS, **kwargs):
    """``post_migrate`` receiver of the hub's app (before the rollup backfill, which reads timestamps)."""
    convert_text_timestamps(using)
