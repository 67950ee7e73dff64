"""Rollups: per device, minute, hour and day, the count, min, max, mean and last of each numeric Reading,
written with the readings by the hub, from what devices publish."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from channels.db import database_sync_to_async

from hubserver.lifecycle.rollups import aggregate, bucket_rows, combine
from tests.conftest import device_client
from tests.mqtt import until
from tests.testapp.devices import Hygrometer, Thermometer
from tests.testapp.models import HygrometerReading, ThermometerReading

# Ten days ago at 10:00: device timestamps must lie within TIMESTAMP_MAX_PAST of the receive time.
T0 = (datetime.now(UTC) - timedelta(days=10)).replace(hour=10, minute=0, second=0, microsecond=0)


def at(seconds):
    return T0 + timedelta(seconds=seconds)


@database_sync_to_async
def rollups(model, device_id, bucket):
    """``{start: row}`` of a device's rollups of one bucket length."""
    rows = model.objects.filter(device__device_id=device_id, bucket=bucket).order_by("start")
    return {row.start: row for row in rows}


async def publish(client, device_id, readings, when):
    await client.publish(f"things/hygrometer/{device_id}/data", json.dumps({**readings, "timestamp": when.isoformat()}))


@pytest.mark.django_db(transaction=True)
async def test_published_readings_are_rolled_up_per_minute_hour_and_day(hub, clients):
    client, _ = await device_client(hub, clients, "hygrometer", "h-1")
    await publish(client, "h-1", {"humidity": 40.0, "temperature": 10.0}, at(5))
    await publish(client, "h-1", {"humidity": 44.0}, at(20))  # no temperature in this one
    await publish(client, "h-1", {"humidity": 42.0, "temperature": 12.0}, at(50))
    await publish(client, "h-1", {"humidity": 50.0, "temperature": 11.0}, at(70))  # the next minute
    await hub.router.flush()
    model = Hygrometer.get_rollup_model()

    minutes = await rollups(model, "h-1", 60)
    assert list(minutes) == [at(0), at(60)]
    first = minutes[at(0)]
    assert (first.humidity_count, first.humidity_min, first.humidity_max) == (3, 40.0, 44.0)
    assert first.humidity_sum == pytest.approx(126.0)
    assert (first.humidity_last, first.humidity_last_at) == (42.0, at(50))
    assert (first.temperature_count, first.temperature_min, first.temperature_max) == (2, 10.0, 12.0)
    assert (first.temperature_last, first.temperature_last_at) == (12.0, at(50))
    assert (first.uptime_count, first.uptime_min, first.uptime_last) == (0, None, None)

    for bucket, start in ((3600, at(0)), (86400, T0.replace(hour=0))):
        [(key, row)] = (await rollups(model, "h-1", bucket)).items()
        assert key == start
        assert (row.humidity_count, row.humidity_min, row.humidity_max, row.humidity_last) == (4, 40.0, 50.0, 50.0)
        assert row.humidity_sum == pytest.approx(176.0)
        assert (row.temperature_count, row.temperature_last, row.temperature_last_at) == (3, 11.0, at(70))


@pytest.mark.django_db(transaction=True)
async def test_a_late_reading_merges_into_its_own_bucket_without_becoming_the_last(hub, clients):
    client, _ = await device_client(hub, clients, "hygrometer", "h-2")
    await publish(client, "h-2", {"humidity": 60.0}, at(30))
    await hub.router.flush()
    await publish(client, "h-2", {"humidity": 20.0}, at(10))  # arrives later, happened earlier
    await publish(client, "h-2", {"humidity": 30.0}, at(-3600))  # an hour before: another hour and minute
    await hub.router.flush()
    model = Hygrometer.get_rollup_model()

    minute = (await rollups(model, "h-2", 60))[at(0)]
    assert (minute.humidity_count, minute.humidity_min, minute.humidity_max) == (2, 20.0, 60.0)
    assert (minute.humidity_last, minute.humidity_last_at) == (60.0, at(30))
    hours = await rollups(model, "h-2", 3600)
    assert [(start, row.humidity_count) for start, row in hours.items()] == [(at(-3600), 1), (at(0), 2)]
    [day] = (await rollups(model, "h-2", 86400)).values()
    assert (day.humidity_count, day.humidity_min, day.humidity_last) == (3, 20.0, 60.0)
    assert await database_sync_to_async(HygrometerReading.objects.count)() == 3  # raw rows all kept


@pytest.mark.django_db(transaction=True)
async def test_only_numeric_readings_have_rollup_columns_and_deleting_a_device_removes_them(hub, clients):
    model = Thermometer.get_rollup_model()
    columns = {field.name for field in model._meta.fields}
    assert {"temperature_min", "uptime_last"} <= columns
    assert not {name for name in columns if name.startswith(("door_open", "label"))}  # bool and str readings

    client, _ = await device_client(hub, clients, "thermometer", "t-1")
    await client.publish("things/thermometer/t-1/data", json.dumps({"temperature": 20.5, "door_open": True}))
    await hub.router.flush()
    assert await database_sync_to_async(model.objects.filter(device__device_id="t-1").count)() == 3

    @database_sync_to_async
    def delete_device():
        from tests.testapp.models import ThermometerDevice

        ThermometerDevice.objects.get(device_id="t-1").delete()
        return model.objects.count(), ThermometerReading.objects.count()

    assert await delete_device() == (0, 0)


@pytest.mark.django_db(transaction=True)
async def test_devices_publishing_at_once_each_get_their_own_rollups(hub, clients):
    devices = [await device_client(hub, clients, "hygrometer", f"h-{n}") for n in range(5)]
    sent = []
    for n, (client, _) in enumerate(devices):  # not waiting for each PUBACK: they share batches
        for value in range(10):
            payload = json.dumps({"humidity": n * 10.0 + value})
            sent.append(await client.publish(f"things/hygrometer/h-{n}/data", payload, wait=False))
    await until(lambda: all(info.is_published() for info in sent), message="every PUBACK")
    await hub.router.flush()
    model = Hygrometer.get_rollup_model()
    for n in range(5):
        [row] = (await rollups(model, f"h-{n}", 86400)).values()
        assert (row.humidity_count, row.humidity_min, row.humidity_max) == (10, n * 10.0, n * 10.0 + 9)
        assert row.humidity_sum == pytest.approx(sum(n * 10.0 + v for v in range(10)))


def test_aggregates_fold_like_one_bucket():
    rows = [
        (1, at(0), None, 5.0, 1),
        (1, at(30), None, None, 3),
        (1, at(30), None, 7.0, 2),  # same time as the row before: arrived later, so it is the last
        (1, at(10), None, -1.0, None),
    ]
    assert aggregate(rows, [3, 4]) == [(3, -1.0, 7.0, 11.0, 7.0, at(30)), (3, 1, 3, 6.0, 2, at(30))]
    halves = combine([aggregate(rows[:2], [3, 4]), aggregate(rows[2:], [3, 4])])
    assert halves == aggregate(rows, [3, 4])
    out = bucket_rows([*rows, (2, at(3600 * 25), None, 1.0, None)], [3, 4])
    assert sorted((device, bucket, start) for device, bucket, start, _ in out) == [
        (1, 60, int(at(0).timestamp())),
        (1, 3600, int(at(0).timestamp())),
        (1, 86400, int(T0.replace(hour=0).timestamp())),
        (2, 60, int(at(3600 * 25).timestamp())),
        (2, 3600, int(at(3600 * 25).timestamp())),
        (2, 86400, int(T0.replace(hour=0).timestamp()) + 86400),
    ]


@pytest.mark.django_db(transaction=True)
def test_readings_stored_before_rollups_existed_get_them_at_the_next_migrate():
    from django.core.management import call_command

    from tests.testapp.models import HygrometerDevice

    device = HygrometerDevice.objects.create(device_id="h-old")
    for n in range(12):  # the ORM, as an older hub wrote them: no rollups
        HygrometerReading.objects.create(device=device, timestamp=at(n * 600), humidity=float(n))
    model = Hygrometer.get_rollup_model()
    assert not model.objects.exists()

    call_command("migrate", verbosity=0)
    hours = model.objects.filter(device=device, bucket=3600).order_by("start")
    assert [(row.start, row.humidity_count, row.humidity_min, row.humidity_last) for row in hours] == [
        (at(0), 6, 0.0, 5.0),
        (at(3600), 6, 6.0, 11.0),
    ]
    assert model.objects.filter(device=device, bucket=60).count() == 12
    call_command("migrate", verbosity=0)  # once only: nothing is counted twice
    assert model.objects.get(device=device, bucket=86400).humidity_count == 12
