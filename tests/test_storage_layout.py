"""The tables' indexes: only those the hub's queries use, and every one of those queries uses an index.

An index costs bytes on disk and time on every insert, per message; a query without one reads the whole
table. These tests read the real schema and SQLite's query plans of the queries the hub makes.
"""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

pytestmark = pytest.mark.django_db


def indexes(model):
    """``{(columns..., partial?): name}`` of the table's indexes (the primary key is not an index here)."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
        found = {}
        for name, info in constraints.items():
            if info["index"] and not info["primary_key"]:
                sql = cursor.execute("SELECT sql FROM sqlite_schema WHERE name = %s", [name]).fetchone()
                partial = bool(sql and sql[0] and " WHERE " in sql[0])
                found[(*info["columns"], "partial" if partial else "all rows")] = name
        return found


def plan(queryset):
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        return " | ".join(row[3] for row in cursor.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())


def test_every_message_and_reading_pays_for_few_index_entries():
    assert set(indexes(ThermometerReading)) == {
        ("device_id", "timestamp", "all rows"),
        ("timestamp", "all rows"),
    }
    assert set(indexes(ThermometerMessage)) == {
        ("device_id", "all rows"),
        ("received_at", "all rows"),
        ("received_at", "partial"),  # failed messages
        ("device_id", "received_at", "partial"),  # commands by device
        ("correlation_id", "partial"),  # commands by correlation id
        ("command_status", "expires_at", "partial"),  # open commands
    }


def test_the_hubs_message_and_reading_queries_use_an_index():
    device = ThermometerDevice.objects.create(device_id="t-1")
    now = timezone.now()
    messages = ThermometerMessage.objects
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
        "a device's latest readings": device.readings.order_by("-timestamp", "-id")[:100],
    }
    few = {"dispatcher: pending commands", "dispatcher: overdue commands", "a reply's command"}
    for what, queryset in queries.items():
        described = plan(queryset)
        table = queryset.model._meta.db_table
        assert f"SCAN {table}" not in described.split(" | "), f"{what} reads the whole table: {described}"
        if what not in few:  # open commands are few; sorting them is cheap
            assert "TEMP B-TREE" not in described, f"{what} sorts what it read: {described}"


@pytest.mark.django_db(transaction=True)
def test_the_slimming_migration_keeps_every_row():
    executor = MigrationExecutor(connection)
    executor.migrate([("testapp", "0001_initial")])
    try:
        assert ("device_id", "all rows") in indexes(ThermometerReading)  # the old layout is back
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
    assert ("device_id", "all rows") not in indexes(ThermometerReading)
