"""Several writers on one PostgreSQL database, as several hub processes are: every row is stored once, and
a reader that follows the resume cursor (polling, SSE replay) never skips a row that committed late."""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, threading, django
    from django.core.management import call_command
    django.setup()
    call_command("migrate", verbosity=0)
    from django.db import connections
    from hubserver.devicetypes.models import WeatherStationDevice, WeatherStationMessage
    from hubserver.realtime.events import stored_events
    from hubserver.routing import MessageRouter

    DEVICES, PER_WRITER, WRITERS = 20, 1500, 3
    for n in range(DEVICES):
        WeatherStationDevice.objects.create(device_id=f"pg-{n}")
    connections.close_all()

    seen, done = [], threading.Event()

    def follow():  # what polling and an SSE replay do, as fast as they can
        cursor = 0
        while True:
            finished = done.is_set()
            events, cursor = stored_events("weatherstation", after=cursor, limit=200)
            seen.extend(event["id"] for event in events)
            if finished and not events:
                break
        connections.close_all()

    async def main():
        routers = [MessageRouter() for _ in range(WRITERS)]
        for router in routers:
            await router.start()
        reader = threading.Thread(target=follow)
        reader.start()

        async def feed(index, router):
            futures = []
            for n in range(PER_WRITER):
                payload = json.dumps({"temperature": n % 50, "humidity": index}).encode()
                futures.append(await router.submit("data", "weatherstation", f"pg-{n % DEVICES}", payload, qos=1))
                if n % 50 == 0:
                    await asyncio.sleep(0)
            return await asyncio.gather(*futures)

        results = await asyncio.gather(*(feed(i, r) for i, r in enumerate(routers)))
        # Values survive the PostgreSQL insert path: readings, JSON, raw bytes of an unparseable payload.
        exact = await routers[0].route("data", "weatherstation", "pg-0", b'{"temperature": 21, "humidity": 40.5}')
        raw = await routers[1].route("data", "weatherstation", "pg-1", bytes([255]) + b" not json")
        for router in routers:
            await router.stop()
        done.set()
        await asyncio.to_thread(reader.join)
        stored = [r.message_id for batch in results for r in batch if r.stored]
        from hubserver.devicetypes.models import WeatherStationReading

        def check():
            reading = WeatherStationReading.objects.get(pk=exact.reading_id)
            message = WeatherStationMessage.objects.get(pk=exact.message_id)
            failed = WeatherStationMessage.objects.get(pk=raw.message_id)
            return {
                "reading": [reading.temperature, reading.humidity, reading.device.device_id],
                "json": message.payload_json,
                "failed": [failed.processing_status, bytes(failed.payload_raw).hex(), failed.payload_json],
            }

        values = await asyncio.to_thread(check)
        rows = await asyncio.to_thread(lambda: list(WeatherStationMessage.objects.values_list("pk", flat=True)))
        print(json.dumps({"stored": len(stored), "rows": len(rows), "unique_rows": len(set(rows)),
                          "seen": len(seen), "unique_seen": len(set(seen)),
                          "missed": sorted(set(rows) - set(seen) - {raw.message_id})[:20], "values": values}))

    asyncio.run(main())
    """
)


def test_concurrent_writers_commit_rows_in_cursor_order(postgres_url, tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hubserver.settings",
        "DATABASE_URL": postgres_url,
        "HUBSERVER_DATA_DIR": str(tmp_path),
        "HUBSERVER_LOG_LEVEL": "WARNING",
    }
    env.pop("HUBSERVER_DEVICES", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["stored"] + 2 == figures["rows"] == figures["unique_rows"] == 3 * 1500 + 2
    assert figures["values"] == {
        "reading": [21.0, 40.5, "pg-0"],
        "json": {"temperature": 21, "humidity": 40.5},
        "failed": ["failed", (b"\xff not json").hex(), None],
    }
    assert figures["missed"] == [], f"the reader skipped rows that committed after a higher id: {figures}"
    assert figures["seen"] == figures["unique_seen"] == figures["rows"] - 1  # the unparseable one has no event
