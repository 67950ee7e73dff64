"""History through the REST API: ``?since=&until=&bucket=1m|1h|1d|auto`` on a device's readings and on the
readings list (JSON and CSV), raw rows or per-bucket aggregates, and what the OpenAPI schema says of it."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from hubserver.lifecycle.backfill import backfill_rollups
from tests.testapp.models import HygrometerDevice, HygrometerReading, ThermometerDevice, ThermometerReading

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def device_readings(device_id="t-1", type_name="thermometer"):
    return f"/api/{type_name}/devices/{device_id}/readings/"


@pytest.fixture
def history():
    """Two hours of thermometer readings, one every 30 s (uptime 0..239, temperature 20.0..29.5 repeating),
    and another device's; rollups computed as the hub would."""
    device = ThermometerDevice.objects.create(device_id="t-1")
    other = ThermometerDevice.objects.create(device_id="t-2")
    rows = [
        ThermometerReading(
            device=device, timestamp=T0 + timedelta(seconds=30 * i), temperature=20 + (i % 20) / 2, uptime=i
        )
        for i in range(240)
    ]
    rows.append(ThermometerReading(device=other, timestamp=T0, temperature=-3.0, uptime=7))
    ThermometerReading.objects.bulk_create(rows)
    backfill_rollups()
    return device


def test_a_bucket_gives_aggregates_of_the_range_newest_first(admin_client, history):
    since, until = iso(T0 + timedelta(minutes=10)), iso(T0 + timedelta(minutes=13))
    rows = admin_client.get(device_readings(), {"bucket": "1m", "since": since, "until": until}).json()
    assert [row["start"] for row in rows] == [iso(T0 + timedelta(minutes=m)) for m in (12, 11, 10)]
    newest = rows[0]
    assert newest["device"] == "t-1" and newest["bucket"] == "1m"
    assert newest["end"] == iso(T0 + timedelta(minutes=13))
    # minute 12 holds readings 24 and 25: temperature 22.0 and 22.5, uptime 24 and 25
    assert newest["temperature"] == {
        "count": 2,
        "min": 22.0,
        "max": 22.5,
        "mean": 22.25,
        "last": 22.5,
        "last_at": iso(T0 + timedelta(minutes=12, seconds=30)),
    }
    assert newest["uptime"]["last"] == 25 and newest["uptime"]["mean"] == 24.5
    assert set(newest) == {"device", "bucket", "start", "end", "temperature", "uptime"}  # no bool, no str

    hours = admin_client.get(device_readings(), {"bucket": "1h"}).json()
    assert [(row["start"], row["uptime"]["count"], row["uptime"]["min"]) for row in hours] == [
        (iso(T0 + timedelta(hours=1)), 120, 120),
        (iso(T0), 120, 0),
    ]
    [day] = admin_client.get(device_readings(), {"bucket": "1d", "limit": "5"}).json()
    assert day["temperature"]["count"] == 240 and day["temperature"]["max"] == 29.5
    assert len(admin_client.get(device_readings(), {"bucket": "1m", "limit": "7"}).json()) == 7


def test_since_until_without_a_bucket_are_raw_readings(admin_client, history):
    since, until = iso(T0 + timedelta(minutes=1)), iso(T0 + timedelta(minutes=2, seconds=1))
    rows = admin_client.get(device_readings(), {"since": since, "until": until}).json()
    assert [row["uptime"] for row in rows] == [4, 3, 2]
    assert "bucket" not in rows[0]


def test_auto_gives_raw_rows_when_they_fit_and_the_finest_bucket_that_fits_when_not(admin_client, history, settings):
    settings.HUBSERVER = {"READING_RETENTION": None, "ROLLUP_RETENTION": None}
    url = device_readings()
    few = admin_client.get(url, {"bucket": "auto", "since": iso(T0), "until": iso(T0 + timedelta(minutes=5))})
    assert [row["uptime"] for row in few.json()] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # 10 raw readings
    two_hours = {"bucket": "auto", "since": iso(T0), "until": iso(T0 + timedelta(hours=2))}
    minutes = admin_client.get(url, {**two_hours, "limit": "200"}).json()
    assert {row["bucket"] for row in minutes} == {"1m"} and len(minutes) == 120  # 240 raw > 200, 120 minutes fit
    hours = admin_client.get(url, {**two_hours, "limit": "100"}).json()
    assert [row["bucket"] for row in hours] == ["1h", "1h"]


def test_auto_does_not_offer_raw_rows_that_retention_has_removed(admin_client, history, settings):
    settings.HUBSERVER = {"READING_RETENTION": "30d", "ROLLUP_RETENTION": None}  # T0 is long ago
    rows = admin_client.get(
        device_readings(), {"bucket": "auto", "since": iso(T0), "until": iso(T0 + timedelta(minutes=5))}
    ).json()
    assert [row["bucket"] for row in rows] == ["1m"] * 5


@pytest.mark.parametrize(
    ("query", "named", "says"),
    [
        ({"bucket": "5m"}, "bucket", "1m, 1h, 1d, auto"),
        ({"since": "yesterday"}, "since", "ISO 8601"),
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until", "later than since"),
        ({"bucket": "1h", "limit": "10001"}, "limit", "10000"),
        ({"limit": "1001"}, "limit", "1000"),
    ],
)
def test_bad_history_parameters_are_refused_saying_why(admin_client, history, query, named, says):
    response = admin_client.get(device_readings(), query)
    assert response.status_code == 400
    assert says in " ".join(response.json()[named])


def test_a_bucket_csv_has_a_column_per_reading_and_statistic(admin_client, history):
    response = admin_client.get(device_readings(), {"bucket": "1h", "format": "csv"})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:5] == ["device", "bucket", "start", "end", "temperature_count"]
    assert rows[0][-1] == "uptime_last_at"
    header = rows[0]
    first = dict(zip(header, rows[1], strict=True))
    assert (first["bucket"], first["start"], first["uptime_count"], first["uptime_min"]) == (
        "1h",
        iso(T0 + timedelta(hours=1)),
        "120",
        "120",
    )


def test_the_readings_list_gives_aggregates_of_every_device_or_one(admin_client, history):
    every = admin_client.get("/api/thermometer/readings/", {"bucket": "1d"}).json()
    assert every["count"] == 2
    assert {(row["device"], row["temperature"]["count"]) for row in every["results"]} == {("t-1", 240), ("t-2", 1)}
    one = admin_client.get(
        "/api/thermometer/readings/",
        {"bucket": "1m", "device": "t-1", "since": iso(T0), "ordering": "start", "limit": "3", "offset": "1"},
    ).json()
    assert one["count"] == 120
    assert [row["start"] for row in one["results"]] == [iso(T0 + timedelta(minutes=m)) for m in (1, 2, 3)]
    exported = admin_client.get("/api/thermometer/readings/", {"bucket": "1h", "format": "csv", "device": "t-1"})
    lines = b"".join(exported.streaming_content).decode().strip().splitlines()
    assert len(lines) == 3  # header and two hours, unpaginated
    refused = admin_client.get("/api/thermometer/readings/", {"bucket": "auto"})
    assert refused.status_code == 400 and "devices/<id>/readings/" in refused.json()["bucket"][0]
    assert admin_client.get("/api/thermometer/readings/", {"bucket": "1m", "ordering": "uptime"}).status_code == 400


def test_history_needs_the_same_permissions_as_readings(client, django_user_model, history):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="view_thermometerdevice"))
    client.force_login(user)
    assert client.get(device_readings(), {"bucket": "1h"}).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_thermometerreading"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    assert client.get(device_readings(), {"bucket": "1h"}).status_code == 200


def test_aggregates_follow_new_readings_from_the_writer_path(admin_client):
    """Readings stored after the backfill (the hub's rollups) show up in the buckets at once."""
    from hubserver.lifecycle.rollups import upsert_readings

    device = HygrometerDevice.objects.create(device_id="h-1")
    now = timezone.now()
    columns = ("device_id", "timestamp", "received_at", "humidity")
    upsert_readings(HygrometerReading, columns, [(device.pk, now, now, 41.0), (device.pk, now, now, 43.0)])
    [row] = admin_client.get(device_readings("h-1", "hygrometer"), {"bucket": "1d"}).json()
    assert row["humidity"]["mean"] == 42.0


def test_the_schema_documents_the_history_parameters_and_the_aggregate_rows(admin_client):
    schema = admin_client.get("/api/schema/?format=json").json()
    action = schema["paths"]["/api/thermometer/devices/{device_id}/readings/"]["get"]
    parameters = {parameter["name"]: parameter for parameter in action["parameters"]}
    assert {"since", "until", "bucket", "limit"} <= set(parameters)
    assert sorted(parameters["bucket"]["schema"]["enum"]) == ["1d", "1h", "1m", "auto"]
    listed = schema["paths"]["/api/thermometer/readings/"]["get"]
    assert "bucket" in {parameter["name"] for parameter in listed["parameters"]}
    aggregate = schema["components"]["schemas"]["ThermometerAggregate"]["properties"]
    assert set(aggregate) == {"device", "bucket", "start", "end", "temperature", "uptime"}
    stats = schema["components"]["schemas"]["ThermometerReadingStats"]["properties"]
    assert set(stats) == {"count", "min", "max", "mean", "last", "last_at"}
