"""Message and reading times are stored on SQLite as integer microseconds, and everything Django does with
a datetime still works on them: exact round trips, filters, ordering, ``__date``/``__year``/``__month``,
``Trunc``/``Extract``, ``.dates()``, the admin's date hierarchy, the readings API's ``since``/``until``;
rows an older hub stored as text read and sort like new ones after ``migrate``."""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Max, Min
from django.db.models.functions import ExtractHour, TruncDay, TruncMonth
from django.urls import reverse

from hubserver.lifecycle.timestamps import convert_text_timestamps
from hubserver.routing import MessageRouter
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

# Two years apart, microseconds kept, one just before midnight UTC and one just after.
TIMES = [
    datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2025, 3, 15, 13, 30, 0, 123456, tzinfo=UTC),
]


def stored(table, column, pk):
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT typeof("{column}"), "{column}" FROM "{table}" WHERE id = %s', [pk])
        return cursor.fetchone()


@pytest.fixture
def readings(db):
    device = ThermometerDevice.objects.create(device_id="t-1")
    return device, [
        ThermometerReading.objects.create(device=device, timestamp=moment, received_at=moment, temperature=n)
        for n, moment in enumerate(TIMES)
    ]


def test_times_are_integers_on_sqlite_and_read_back_exactly(readings):
    device, rows = readings
    for row, moment in zip(rows, TIMES, strict=True):
        kind, value = stored(ThermometerReading._meta.db_table, "timestamp", row.pk)
        assert kind == "integer"
        assert value == int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6 + moment.microsecond
        row.refresh_from_db()
        assert row.timestamp == moment and row.timestamp.tzinfo is not None
    message = ThermometerMessage.objects.create(device=device, topic="t", received_at=TIMES[0])
    message.mark_completed()
    message.refresh_from_db()
    assert message.received_at == TIMES[0] and message.processed_at > TIMES[0]
    assert stored(ThermometerMessage._meta.db_table, "processed_at", message.pk)[0] == "integer"


def test_filters_ordering_and_aggregates(readings):
    _, rows = readings
    by_time = ThermometerReading.objects.order_by("timestamp")
    assert list(by_time.values_list("temperature", flat=True)) == [0, 1, 2]
    assert list(ThermometerReading.objects.values_list("temperature", flat=True)) == [2, 1, 0]  # newest first
    assert by_time.filter(timestamp__gte=TIMES[1]).count() == 2
    assert by_time.filter(timestamp__lt=TIMES[1]).get().pk == rows[0].pk
    assert by_time.filter(timestamp__range=(TIMES[0] + timedelta(microseconds=1), TIMES[2])).count() == 2
    assert by_time.filter(timestamp__in=[TIMES[2]]).get().pk == rows[2].pk
    assert by_time.filter(timestamp=TIMES[1]).get().pk == rows[1].pk
    assert ThermometerReading.objects.aggregate(first=Min("timestamp"), last=Max("timestamp")) == {
        "first": TIMES[0],
        "last": TIMES[2],
    }
    assert ThermometerReading.objects.latest().pk == rows[2].pk


def test_date_lookups_and_functions(readings):
    objects = ThermometerReading.objects
    assert objects.filter(timestamp__date=date(2024, 12, 31)).get().temperature == 0
    assert objects.filter(timestamp__date__gte=date(2025, 1, 1)).count() == 2
    assert objects.filter(timestamp__year=2025).count() == 2
    assert objects.filter(timestamp__year__lt=2025).get().temperature == 0
    assert objects.filter(timestamp__year__gte=2024).count() == 3
    # 2024-12-31 is a Tuesday of ISO week 1 of 2025
    assert objects.filter(timestamp__iso_year=2025).count() == 3
    assert not objects.filter(timestamp__iso_year=2024).exists()
    assert objects.filter(timestamp__month=3, timestamp__day=15).get().temperature == 2
    assert objects.filter(timestamp__hour=13).get().temperature == 2
    assert list(objects.dates("timestamp", "year")) == [date(2024, 1, 1), date(2025, 1, 1)]
    assert list(objects.datetimes("timestamp", "month")) == [
        datetime(2024, 12, 1, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 3, 1, tzinfo=UTC),
    ]
    days = objects.annotate(day=TruncDay("timestamp"), month=TruncMonth("received_at"), hour=ExtractHour("timestamp"))
    assert [(r.day, r.month, r.hour) for r in days.order_by("timestamp")] == [
        (datetime(2024, 12, 31, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC), 23),
        (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC), 0),
        (datetime(2025, 3, 15, tzinfo=UTC), datetime(2025, 3, 1, tzinfo=UTC), 13),
    ]


def test_admin_date_hierarchy_drills_down(admin_client, readings):
    changelist = reverse("admin:testapp_thermometerreading_changelist")
    page = admin_client.get(changelist).content.decode()
    assert "timestamp__year=2024" in page and "timestamp__year=2025" in page
    page = admin_client.get(changelist, {"timestamp__year": 2025}).content.decode()
    assert "timestamp__month=1" in page and "timestamp__month=3" in page and "timestamp__month=12" not in page
    assert page.count('name="_selected_action"') == 2
    page = admin_client.get(changelist, {"timestamp__year": 2025, "timestamp__month": 3, "timestamp__day": 15})
    assert page.status_code == 200
    assert page.content.decode().count('name="_selected_action"') == 1


def test_readings_api_since_until(admin_client, readings):
    url = "/api/thermometer/devices/t-1/readings/"
    got = admin_client.get(url, {"since": "2025-01-01T00:00:00Z", "until": "2025-03-15T13:30:00.123456Z"}).json()
    results = got["results"] if isinstance(got, dict) else got
    assert [r["timestamp"] for r in results] == ["2025-01-01T00:00:00.000001Z"]


@pytest.mark.django_db(transaction=True)
async def test_the_writer_stores_integers_that_read_back_as_the_router_saw_them():
    from asgiref.sync import sync_to_async

    device = await ThermometerDevice.objects.acreate(device_id="t1")
    router = MessageRouter()
    await router.start()
    try:
        result = await router.route("data", "thermometer", "t1", b'{"temperature": 20.5}', qos=1, client_id="t1")
    finally:
        await router.stop()
    reading = await ThermometerReading.objects.aget(device=device)
    message = await ThermometerMessage.objects.aget(device=device)
    assert reading.timestamp == reading.received_at == message.received_at
    assert message.processed_at >= message.received_at and result.reading_id == reading.pk
    table = ThermometerMessage._meta.db_table
    kinds = await sync_to_async(lambda: [stored(table, c, message.pk)[0] for c in ("received_at", "processed_at")])()
    assert kinds == ["integer", "integer"]


OLD = "0004_command_age_index"  # the last migration of the test app whose times are text


@pytest.mark.django_db(transaction=True)
def test_rows_an_older_hub_stored_as_text_read_back_after_migrate():
    executor = MigrationExecutor(connection)
    executor.migrate([("testapp", OLD)])
    try:
        # The models as an older hub had them: Django's DateTimeField, stored as text.
        old = executor.loader.project_state(("testapp", OLD)).apps
        device = old.get_model("testapp", "ThermometerDevice").objects.create(device_id="old")
        old_pks = []
        for moment in (
            datetime(2024, 6, 1, 10, 0, 0, 250000, tzinfo=UTC),
            datetime(2024, 6, 1, 9, 0, tzinfo=UTC),
            datetime(2025, 2, 2, 2, 2, 2, 2, tzinfo=UTC),
        ):
            reading = old.get_model("testapp", "ThermometerReading").objects.create(
                device_id=device.pk, timestamp=moment, received_at=moment
            )
            old_pks.append(reading.pk)
        old.get_model("testapp", "ThermometerMessage").objects.create(
            device_id=device.pk,
            topic="things/thermometer/old/cmd",
            direction="outbound",
            correlation_id="c-1",
            received_at=datetime(2024, 6, 1, 10, 0, 0, 500000, tzinfo=UTC),
            processed_at=datetime(2024, 6, 1, 10, 0, 1, tzinfo=UTC),
            expires_at=datetime(2024, 6, 1, 11, 0, tzinfo=UTC),
        )
        table = ThermometerReading._meta.db_table
        # Not converted while the column is still declared "datetime": an integer there would read as None.
        assert table not in convert_text_timestamps()
        assert {stored(table, "timestamp", pk)[0] for pk in old_pks} == {"text"}
    finally:
        call_command("migrate", "testapp", verbosity=0)  # forward again: schema, then the text converted
    device = ThermometerDevice.objects.get(device_id="old")
    new = ThermometerReading.objects.create(device=device, timestamp=datetime(2024, 6, 1, 9, 30, tzinfo=UTC))
    times = list(ThermometerReading.objects.filter(device=device).order_by("timestamp").values_list("pk", "timestamp"))
    assert [t for _, t in times] == [
        datetime(2024, 6, 1, 9, 0, tzinfo=UTC),
        datetime(2024, 6, 1, 9, 30, tzinfo=UTC),
        datetime(2024, 6, 1, 10, 0, 0, 250000, tzinfo=UTC),
        datetime(2025, 2, 2, 2, 2, 2, 2, tzinfo=UTC),
    ]
    assert times[1][0] == new.pk
    table = ThermometerReading._meta.db_table
    assert {stored(table, "timestamp", pk)[0] for pk, _ in times} == {"integer"}
    assert ThermometerReading.objects.filter(timestamp__lt=datetime(2024, 6, 1, 9, 30, tzinfo=UTC)).count() == 1
    assert ThermometerReading.objects.filter(timestamp__year=2025).count() == 1
    message = ThermometerMessage.objects.get(correlation_id="c-1")
    assert (message.received_at, message.processed_at, message.expires_at) == (
        datetime(2024, 6, 1, 10, 0, 0, 500000, tzinfo=UTC),
        datetime(2024, 6, 1, 10, 0, 1, tzinfo=UTC),
        datetime(2024, 6, 1, 11, 0, tzinfo=UTC),
    )
    assert ThermometerMessage.objects.filter(expires_at__lt=datetime(2024, 6, 1, 12, tzinfo=UTC)).count() == 1
