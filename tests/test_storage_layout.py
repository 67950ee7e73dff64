"""The tables' indexes: only those the hub's queries use, and every one of those queries uses an index.

An index costs bytes on disk and time on every insert, per message; a query without one reads the whole
table. These tests read the real schema and SQLite's query plans of the queries the hub makes.
"""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

pytestmark = pytest.mark.django_db


def indexes(model):
    """``{name: (columns..., partial?)}`` of the table's indexes (the primary key is not an index here)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
        found = {}
        for name, info in constraints.items():
            if info["index"] and not info["primary_key"]:
                sql = cursor.execute("SELECT sql FROM sqlite_schema WHERE name = %s", [name]).fetchone()
                partial = bool(sql and sql[0] and " WHERE " in sql[0])
                found[name] = (*info["columns"], "partial" if partial else "all rows")
        return found


def plan_of(queryset):
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        return " | ".join(row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())


def test_every_message_and_reading_pays_for_few_index_entries():
    assert sorted(indexes(ThermometerReading).values()) == [
        ("device_id", "timestamp", "all rows"),
        ("timestamp", "all rows"),
    ]
    assert sorted(indexes(ThermometerMessage).values()) == [
        ("command_status", "expires_at", "partial"),  # open commands
        ("correlation_id", "partial"),  # commands by correlation id
        ("device_id", "all rows"),
        ("device_id", "received_at", "partial"),  # commands by device
        ("received_at", "all rows"),
        ("received_at", "partial"),  # failed messages
        ("received_at", "partial"),  # commands by age (retention)
    ]


def test_the_hubs_message_and_reading_queries_use_an_index():
    device = ThermometerDevice.objects.create(device_id="t-1")
    now = timezone.now()
    messages = ThermometerMessage.objects
    rollups = Thermometer.get_rollup_model().objects
    queries = {
        "dispatcher: pending commands": messages.filter(
            direction="outbound", command_status="pending", expires_at__gt=now, device__is_active=True
        ),
        "dispatcher: overdue commands": messages.filter(
            direction="outbound", command_status__in=["pending", "sent", "delivered"], expires_at__lte=now
        ),
        "a reply's command": messages.filter(device=device, direction="outbound", correlation_id="c1"),
        "command history": messages.filter(device=device, direction="outbound")
        .exclude(command="")
        .order_by("-received_at", "-id"),
        "failed messages, newest first": messages.filter(processing_status="failed").order_by("-received_at")[:100],
        "messages, newest first": messages.order_by("-received_at")[:100],
        "a device's messages after a cursor": messages.filter(device=device, pk__gt=10).order_by("pk")[:100],
        "a device's readings in a range": ThermometerReading.objects.filter(
            device=device, timestamp__gte=now, timestamp__lt=now
        ).order_by("timestamp"),
        "readings, newest first": ThermometerReading.objects.order_by("-timestamp", "-id")[:100],
        "a device's aggregates in a range": rollups.filter(device__in=[device], bucket=3600, start__gte=now)
        .filter(start__lt=now)
        .order_by("-start")[:1000],
        "every device's aggregates in a range": rollups.filter(bucket=60, start__gte=now, start__lt=now).order_by(
            "-start", "-id"
        )[:100],
        "a device's latest readings": device.readings.order_by("-timestamp", "-id")[:100],
    }
    few = {"dispatcher: pending commands", "dispatcher: overdue commands", "a reply's command"}
    for what, queryset in queries.items():
        described = plan_of(queryset)
        table = queryset.model._meta.db_table
        assert f"SCAN {table}" not in described.split(" | "), f"{what} reads the whole table: {described}"
        if what not in few:  # open commands are few; sorting them is cheap
            assert "TEMP B-TREE" not in described, f"{what} sorts what it read: {described}"


def test_retention_finds_what_to_remove_through_an_index():
    from django.test import override_settings

    from hubserver.lifecycle.prune import plan

    finite = {"MESSAGE_RETENTION": "1d", "COMMAND_RETENTION": "1d", "READING_RETENTION": "1d", "ROLLUP_RETENTION": "1d"}
    with override_settings(HUBSERVER=finite):
        steps = plan(type_names=["thermometer"])
    assert len(steps) == 6
    for step in steps:
        described = plan_of(step.queryset().order_by(step.order).values("pk")[:1000])
        table = step.model._meta.db_table
        assert f"SCAN {table}" not in described.split(" | "), f"{step.kind} reads the whole table: {described}"
        assert "TEMP B-TREE" not in described, f"{step.kind} sorts what it read: {described}"


@pytest.mark.django_db(transaction=True)
def test_the_slimming_migration_keeps_every_row():
    executor = MigrationExecutor(connection)
    executor.migrate([("testapp", "0001_initial")])
    try:
        assert ("device_id", "all rows") in indexes(ThermometerReading).values()  # the old layout is back
        now = timezone.now().isoformat(" ")
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO testapp_thermometerdevice (device_id, name, status, firmware_version, is_active, "
                "mqtt_password_hash, api_key, metadata, created_at, updated_at, mode, setpoint) "
                "VALUES ('t-old', '', 'offline', '', 1, '', '', '{}', %s, %s, 'auto', 21.0)",
                [now, now],
            )
            device_pk = cursor.lastrowid
            cursor.execute(
                "INSERT INTO testapp_thermometerreading (device_id, timestamp, received_at, temperature) "
                "VALUES (%s, %s, %s, 19.5)",
                [device_pk, now, now],
            )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert ThermometerReading.objects.get().temperature == 19.5
    assert ("device_id", "all rows") not in indexes(ThermometerReading).values()
