"""Rollups for readings stored before a type had any: computed once, after ``migrate``.

The writer keeps rollups current from the moment the rollup table exists. Readings stored earlier (by an
older hub) have none; after every ``migrate`` a type whose rollup table is empty while it has readings
gets them computed from its raw readings, in chunks of ``CHUNK`` rows, each chunk its own transaction.
"""

import logging

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from ..registry import registry
from .rollups import RollupUpserter

logger = logging.getLogger("hubserver.lifecycle")
CHUNK = 5000


def backfill_rollups(using=DEFAULT_DB_ALIAS):
    """Compute rollups from the raw readings of every type whose rollup table is empty; returns
    ``{type name: readings read}`` for the types it filled."""
    done = {}
    tables = set(connections[using].introspection.table_names())
    for device_type, _, reading_model, _ in registry.all_with_models():
        rollup_model = device_type.get_rollup_model()
        if rollup_model is None or rollup_model._meta.db_table not in tables:
            continue
        if reading_model._meta.db_table not in tables:
            continue
        if rollup_model._default_manager.using(using).exists():
            continue
        readings = reading_model._default_manager.using(using)
        if not readings.exists():
            continue
        name = device_type.type_name()
        total = readings.count()
        logger.info("computing the rollups of %d existing %s readings", total, name)
        try:
            done[name] = _fill(readings, rollup_model, using)
        except BaseException:
            # Start again from nothing next time rather than leave the type half filled.
            rollup_model._default_manager.using(using).all().delete()
            raise
        logger.info("computed the rollups of %s", name)
    return done


def _fill(readings, rollup_model, using):
    columns = ("device_id", "timestamp", *rollup_model.reading_names)
    upserter = RollupUpserter(rollup_model, columns, using=using)
    last = 0
    read = 0
    while True:
        rows = list(readings.filter(pk__gt=last).order_by("pk").values_list("pk", *columns)[:CHUNK])
        if not rows:
            return read
        with transaction.atomic(using=using):
            upserter.upsert([row[1:] for row in rows])
        last = rows[-1][0]
        read += len(rows)


def after_migrate(sender, using=DEFAULT_DB_ALIAS, **kwargs):
    """``post_migrate`` receiver of the hub's app."""
    backfill_rollups(using)
