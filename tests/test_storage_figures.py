"""Growth you can see: rows, bytes and the oldest row of every type's tables in /metrics and on the admin's
Storage page, and what the hub's pruning removed."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.test import AsyncClient, Client
from django.urls import include, path
from prometheus_client.parser import text_string_to_metric_families

from hubserver.lifecycle.storage import StorageFigures, collect, storage_figures
from hubserver.views.metrics import metrics_view
from tests.conftest import device_client
from tests.mqtt import until
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

# /metrics belongs to hubserver/site_urls.py; this module is the URLconf of its tests here.
urlpatterns = [path("iot/", include("hubserver.urls")), path("metrics", metrics_view)]
OLD = datetime(2025, 6, 1, 8, 30, tzinfo=UTC)


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def thermometer_rows():
    device = ThermometerDevice.objects.create(device_id="t-fig")
    for n in range(3):
        when = OLD + timedelta(days=n)
        ThermometerReading.objects.create(device=device, timestamp=when, temperature=20.0 + n)
        ThermometerMessage.objects.create(device=device, topic="things/thermometer/t-fig/data", received_at=when)
    Thermometer.get_rollup_model().objects.create(device=device, bucket=60, start=OLD, temperature_count=1)
    return device


def by_table(snapshot, type_name):
    return {figures.table: figures for figures in snapshot.tables if figures.type_name == type_name}


@pytest.mark.django_db
def test_the_figures_count_rows_size_tables_and_find_the_oldest_row():
    thermometer_rows()
    snapshot = collect()
    tables = by_table(snapshot, "thermometer")
    assert set(tables) == {"messages", "readings", "rollups"}
    assert (tables["messages"].rows, tables["readings"].rows, tables["rollups"].rows) == (3, 3, 1)
    assert tables["messages"].oldest == OLD and tables["readings"].oldest == OLD and tables["rollups"].oldest == OLD
    for figures in tables.values():
        assert figures.bytes >= 4096  # at least a page for the table (SQLite's dbstat)
    assert by_table(snapshot, "hygrometer")["readings"].rows == 0
    assert by_table(snapshot, "hygrometer")["readings"].oldest is None
    assert snapshot.database_bytes >= sum(f.bytes for f in snapshot.tables)


@pytest.mark.django_db(transaction=True)
def test_figures_are_taken_in_the_background_and_kept_until_they_are_old():
    thermometer_rows()
    figures = StorageFigures(max_age=60)
    assert figures.latest() is None  # nothing yet: taking them started
    deadline = time.monotonic() + 20
    while figures.snapshot is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first = figures.latest()
    assert by_table(first, "thermometer")["readings"].rows == 3
    ThermometerReading.objects.create(device=ThermometerDevice.objects.get(), temperature=1.0)
    assert figures.latest() is first  # not old yet: the same figures, no new counting
    figures.max_age = 0
    figures.latest()
    while figures.snapshot is first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert by_table(figures.snapshot, "thermometer")["readings"].rows == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.urls(__name__)
def test_metrics_show_rows_bytes_and_the_oldest_row_per_type():
    thermometer_rows()
    storage_figures.refresh()
    found = samples(Client().get("/metrics").content.decode())
    labels = frozenset({("device_type", "thermometer"), ("table", "readings")})
    assert found[("hubserver_storage_rows", labels)] == 3
    assert found[("hubserver_storage_bytes", labels)] >= 4096
    assert found[("hubserver_storage_oldest_timestamp_seconds", labels)] == OLD.timestamp()
    assert found[("hubserver_database_bytes", frozenset())] > 0
    assert 0 <= found[("hubserver_storage_figures_age_seconds", frozenset())] < 60


@pytest.mark.slow  # waits out a 1 s retention
@pytest.mark.django_db(transaction=True)
@pytest.mark.urls(__name__)
@pytest.mark.parametrize("hub_settings_override", [{"MESSAGE_RETENTION": "1s", "PRUNE_INTERVAL": 0.2}])
async def test_metrics_count_what_the_hubs_pruning_removed(hub, clients, hub_settings_override):
    client, _ = await device_client(hub, clients, "thermometer", "t-pruned")
    for n in range(3):
        await client.publish("things/thermometer/t-pruned/data", json.dumps({"temperature": 20.0 + n}))
    await until(lambda: hub.router.pruner.removed.get(("thermometer", "messages"), 0) == 3, message="3 removed")
    found = samples((await AsyncClient().get("/metrics")).content.decode())
    removed = frozenset({("device_type", "thermometer"), ("kind", "messages")})
    assert found[("hubserver_pruned_rows_total", removed)] == 3
    assert found[("hubserver_prune_passes_total", frozenset())] >= 1


@pytest.mark.django_db
def test_the_admin_storage_page_shows_each_table_and_its_retention(admin_client):
    thermometer_rows()
    storage_figures.refresh()
    page = admin_client.get("/admin/hubserver/storagereport/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-type="thermometer" data-table="readings"' in html
    assert 'data-rows="3"' in html
    assert "2025-06-01 08:30:00 UTC" in html
    assert "messages 30d, commands 90d" in html and "1m 30d, 1h 5y, 1d forever" in html
    assert "hubserver prune --dry-run" in html  # no hub runs in this process
    thermometer = ThermometerDevice.objects.get()
    ThermometerReading.objects.create(device=thermometer, temperature=1.0)
    again = admin_client.post("/admin/hubserver/storagereport/", follow=True).content.decode()
    assert "taken again" in again and 'data-type="thermometer" data-table="readings"><td>thermometer</td>' in again
    assert 'data-rows="4"' in again
    assert admin_client.get("/admin/hubserver/storagereport/add/").status_code == 403


@pytest.mark.django_db
def test_the_storage_page_needs_its_view_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/hubserver/storagereport/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_storagereport"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    storage_figures.refresh()
    assert client.get("/admin/hubserver/storagereport/").status_code == 200
