"""Audit rows an older hub stored with their usual values in full, rewritten as ``UsualValueCharField`` stores
them (``''``), so filters find old and new rows alike.

Runs after every ``migrate`` (like ``timestamps``: a devices file's tables are converted when the hub applies
their migration). Whether a table still has any is one look at its oldest rows (an older hub's rows are the
oldest, and nearly all of them hold a usual value); a table with some gets one UPDATE, in one transaction.
"""

import logging

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ..fields import usual_value_columns

logger = logging.getLogger("hubserver.lifecycle")

PROBE = 1000  # the oldest rows looked at to tell whether a table needs converting


def convert_usual_values(using=DEFAULT_DB_ALIAS):
    """Store the usual values of every installed model's UsualValueCharFields as ``''``; returns
    ``{db_table: rows converted}`` for the tables that had some."""
    connection = connections[using]
    tables = set(connection.introspection.table_names())
    quote = connection.ops.quote_name
    done = {}
    for model in apps.get_models():
        meta = model._meta
        if not meta.managed or meta.proxy or meta.db_table not in tables:
            continue
        columns = usual_value_columns(model)
        if not columns:
            continue
        table, pk = quote(meta.db_table), quote(meta.pk.column)
        matches = " OR ".join(f"{quote(column)} = %s" for column, _ in columns)
        usual = [value for _, value in columns]
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM (SELECT * FROM {table} ORDER BY {pk} LIMIT {PROBE}) AS oldest WHERE {matches} LIMIT 1",
                usual,
            )
            if cursor.fetchone() is None:
                continue
            assignments = ", ".join(
                f"{quote(column)} = CASE WHEN {quote(column)} = %s THEN '' ELSE {quote(column)} END"
                for column, _ in columns
            )
            logger.info("storing the usual values of %s as ''", meta.db_table)
            with transaction.atomic(using=using):
                cursor.execute(f"UPDATE {table} SET {assignments} WHERE {matches}", usual + usual)
                done[meta.db_table] = cursor.rowcount
    return done


def after_migrate(sender, using=DEFAULT_DB_ALIAS, **kwargs):
    """``post_migrate`` receiver of the hub's app."""
    convert_usual_values(using)
