"""The data lifecycle on PostgreSQL: the catalogue's migrations (dropped and partial indexes, rollup
tables), the writer's multi-row INSERT ... RETURNING and rollup upserts, retention's batched deletes, the
API's buckets, and a deleted device's data, against a real server."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, django
    from datetime import UTC, datetime, timedelta
    from django.core.management import call_command
    django.setup()
    call_command("migrate", verbosity=0)
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection, connections
    from django.test import Client, override_settings
    from django.utils import timezone
    from hubserver.devicetypes.devices import WeatherStation
    from hubserver.devicetypes.models import WeatherStationDevice, WeatherStationMessage, WeatherStationReading
    from hubserver.lifecycle.prune import plan, prune_now
    from hubserver.routing import MessageRouter

    out = {}
    with connection.cursor() as cursor:
        indexes = connection.introspection.get_constraints(cursor, WeatherStationMessage._meta.db_table)
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [WeatherStationMessage._meta.db_table]
        )
        definitions = dict(cursor.fetchall())
    out["message_indexes"] = sorted(
        list(info["columns"]) + (["partial"] if " WHERE " in definitions.get(name, "") else [])
        for name, info in indexes.items()
        if info["index"] and not info["primary_key"]
    )

    now = timezone.now().replace(second=30, microsecond=0)
    for n in range(3):
        WeatherStationDevice.objects.create(device_id=f"pg-{n}")
    connections.close_all()

    async def write(rounds, extra=()):
        router = MessageRouter()
        await router.start()
        futures = []
        for n, (device, value, when) in enumerate(rounds):
            payload = json.dumps({"temperature": value, "humidity": 50.0, "timestamp": when.isoformat()}).encode()
            futures.append(await router.submit("data", "weatherstation", device, payload, qos=1))
        for device, payload, properties in extra:
            futures.append(await router.submit("data", "weatherstation", device, payload, properties=properties))
        results = await asyncio.gather(*futures)
        await router.stop()
        return results

    first = asyncio.run(write([(f"pg-{n % 3}", n / 10, now + timedelta(seconds=n % 20)) for n in range(300)]))
    late = [("pg-0", 65.0, now + timedelta(seconds=25)), ("pg-0", -5.0, now - timedelta(days=400))]
    # Values that the bulk write must carry through unchanged: tabs, newlines, backslashes, quotes, NUL
    # bytes in a payload that is not JSON, and MQTT 5 properties (no readings: the counts below stay).
    from hubserver.routing.properties import MessageProperties

    tab, newline, backslash = chr(9), chr(10), chr(92)
    raw = b"not json" + bytes([9, 0, 92, 32, 10, 13, 255])
    note = f"tab{tab}newline{newline}back{backslash}slash {chr(34)}q{chr(34)} {chr(233)}"
    odd = [
        ("pg-2", raw, None),
        (
            "pg-2",
            json.dumps({"note": note}).encode(),
            MessageProperties(f"text/x-{tab}weird", f"corr{backslash}1", {f"k{tab}": f"v{newline}{backslash}"}),
        ),
    ]
    second = asyncio.run(write(late, odd))
    rows = WeatherStationMessage.objects.filter(pk__in=[r.message_id for r in second[2:]]).order_by("pk")
    out["odd"] = [
        [row.payload_json, bytes(row.payload_raw) if row.payload_raw is not None else None, row.content_type,
         row.correlation_id, row.user_properties]
        for row in rows
    ]
    out["odd"] = [[v.hex() if isinstance(v, bytes) else v for v in row] for row in out["odd"]]
    second = second[:2]
    out["stored"] = sum(r.stored and r.processing_status == "completed" for r in first + second)
    out["message_ids_unique"] = len({r.message_id for r in first + second})
    with connection.cursor() as cursor:  # the usual direction, status and content type are stored as ''
        cursor.execute(
            f"SELECT DISTINCT direction, processing_status, content_type FROM {WeatherStationMessage._meta.db_table}"
        )
        out["stored_usual"] = sorted(cursor.fetchall())
    out["found_usual"] = WeatherStationMessage.objects.filter(
        direction="inbound", processing_status="completed", content_type="application/json"
    ).count()
    out["read_usual"] = sorted(
        set(WeatherStationMessage.objects.values_list("direction", "processing_status", "content_type"))
    )
    rollups = WeatherStation.get_rollup_model().objects.filter(device__device_id="pg-0")
    minute = rollups.get(bucket=60, start=now.replace(second=0))
    out["minute"] = [minute.temperature_count, minute.temperature_min, minute.temperature_max, minute.temperature_last]
    out["days"] = rollups.filter(bucket=86400).count()

    user = get_user_model().objects.create_superuser("pg-admin", "", "pw")
    client = Client()
    client.force_login(user)
    since = (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    answer = client.get(f"/api/weatherstation/devices/pg-0/readings/?bucket=1h&since={since}")
    out["api_status"] = answer.status_code
    out["api_rows"] = [(row["bucket"], row["temperature"]["count"], row["temperature"]["max"]) for row in answer.json()]

    with override_settings(HUBSERVER={"READING_RETENTION": "30d", "ROLLUP_RETENTION": "30d"}):
        steps = plan(type_names=["weatherstation"])
        out["would_remove"] = {step.kind: step.count() for step in steps if step.count()}
        removed = prune_now(steps, batch_size=1)
        out["removed"] = {step.kind: count for step, count in removed.items() if count}
    out["readings_left"] = WeatherStationReading.objects.count()

    WeatherStationDevice.objects.get(device_id="pg-1").delete()
    out["after_delete"] = [
        WeatherStationReading.objects.filter(device__device_id="pg-1").count(),
        WeatherStationMessage.objects.filter(device__device_id="pg-1").count(),
        WeatherStation.get_rollup_model().objects.filter(device__device_id="pg-1").count(),
        WeatherStationReading.objects.filter(device__device_id="pg-2").count(),
    ]
    usual = {"temperature": 1.5, "humidity": 40.0, "pressure": 1000.5, "wind_speed": 2.0, "rain": 0.0}

    async def write_usual():
        router = MessageRouter()
        await router.start()
        result = await router.route("data", "weatherstation", "pg-2", json.dumps(usual).encode(), qos=1)
        await router.stop()
        return result.message_id

    usual_id = asyncio.run(write_usual())
    with connection.cursor() as cursor:  # the usual keys are stored once
        table = WeatherStationMessage._meta.db_table
        cursor.execute(f"SELECT payload_json::text FROM {table} WHERE id = %s", [usual_id])
        out["usual_stored"] = json.loads(cursor.fetchone()[0])
    out["usual_read"] = WeatherStationMessage.objects.get(pk=usual_id).payload_json
    usual_rows = WeatherStationMessage.objects.filter(device__device_id="pg-2")
    out["usual_lookups"] = [
        list(usual_rows.filter(payload_json__pressure__gt=1000).values_list("pk", flat=True)) == [usual_id],
        list(usual_rows.filter(payload_json__contains={"humidity": 40.0}).values_list("pk", flat=True)) == [usual_id],
        usual_rows.filter(payload_json__has_key="rain").count() == 1,
        usual_rows.filter(payload_json__has_key="temperature").count() == 101,
        list(usual_rows.filter(pk=usual_id).values_list("payload_json__wind_speed", flat=True)) == [2.0],
    ]
    print(json.dumps(out))
    """
)


def test_lifecycle_on_postgresql(postgres_url, tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hubserver.settings",
        "DATABASE_URL": postgres_url,
        "HUBSERVER_DATA_DIR": str(tmp_path),
        "HUBSERVER_LOG_LEVEL": "WARNING",
        "HUBSERVER_CATALOGUE": "1",
        "HUBSERVER_ALLOWED_HOSTS": "testserver",
    }
    env.pop("HUBSERVER_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["message_indexes"] == [
        ["command_status", "expires_at", "partial"],
        ["correlation_id", "partial"],
        ["device_id"],
        ["device_id", "received_at", "partial"],
        ["received_at"],
        ["received_at", "partial"],
        ["received_at", "partial"],
    ]
    # 302 messages in two runs of the writer, every one stored once with its own id.
    assert out["stored"] == out["message_ids_unique"] == 302
    weird = f"text/x-{chr(9)}weird"
    assert out["stored_usual"] == [["", "", ""], ["", "", weird], ["", "failed", ""]]
    assert out["usual_stored"][1:] == [1.5, 40.0, 1000.5, 2.0, 0.0]
    assert list(out["usual_read"].items()) == [
        ("temperature", 1.5),
        ("humidity", 40.0),
        ("pressure", 1000.5),
        ("wind_speed", 2.0),
        ("rain", 0.0),
    ]
    assert out["usual_lookups"] == [True] * 5
    assert out["found_usual"] == 302
    assert out["read_usual"] == [
        ["inbound", "completed", "application/json"],
        ["inbound", "completed", weird],
        ["inbound", "failed", "application/json"],
    ]
    # pg-0 got 0.0, 0.3, ..., 29.7 within the minute in the first run, then 65 at :55 (the latest: the last)
    # and an old -5 in the second.
    assert out["minute"] == [101, 0.0, 65.0, 65.0]
    assert out["days"] == 2  # today and 400 days ago
    tab, newline, backslash = chr(9), chr(10), chr(92)
    note = f"tab{tab}newline{newline}back{backslash}slash {chr(34)}q{chr(34)} {chr(233)}"
    assert out["odd"] == [
        [None, (b"not json" + bytes([9, 0, 92, 32, 10, 13, 255])).hex(), "application/json", "", {}],
        [
            {"note": note},
            None,
            f"text/x-{tab}weird",
            f"corr{backslash}1",
            {f"k{tab}": f"v{newline}{backslash}"},
        ],
    ]
    assert out["api_status"] == 200
    assert out["api_rows"] == [["1h", 101, 65.0]]
    # The 400-day-old reading and its three rollups are past a 30-day retention.
    assert out["would_remove"] == {"readings": 1, "rollups 1m": 1, "rollups 1h": 1, "rollups 1d": 1}
    assert out["removed"] == out["would_remove"]
    assert out["readings_left"] == 301
    assert out["after_delete"] == [0, 0, 0, 100]
