"""Retention: declared on the DeviceType and in the settings, removed by ``hubserver prune`` and by the hub
on its own, and every row of a deleted device gone with it."""

import io
import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from hubserver import DeviceType, Reading, registry
from hubserver.conf import validate
from hubserver.exceptions import ConfigurationError
from hubserver.lifecycle.retention import retention_for
from tests.conftest import device_client
from tests.mqtt import until
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

DAY = timedelta(days=1)


# -- declaring it --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"MESSAGE_RETENTION": "90"}, "MESSAGE_RETENTION"),
        ({"READING_RETENTION": 30}, "READING_RETENTION"),
        ({"COMMAND_RETENTION": "0d"}, "COMMAND_RETENTION"),
        ({"ROLLUP_RETENTION": {"1w": "3d"}}, "'1w'"),
        ({"ROLLUP_RETENTION": {"1m": "soon"}}, "ROLLUP_RETENTION']['1m']"),
        ({"PRUNE_INTERVAL": -1}, "PRUNE_INTERVAL"),
        ({"PRUNE_BATCH_SIZE": 0}, "PRUNE_BATCH_SIZE"),
    ],
)
def test_a_bad_retention_setting_is_refused_naming_it(user, named):
    with pytest.raises(ImproperlyConfigured) as caught:
        validate(user)
    assert named in str(caught.value)
    if "RETENTION" in named or "1m" in named:
        assert '"90d", "12h"' in str(caught.value) or "buckets are" in str(caught.value) or "zero" in str(caught.value)


def test_settings_take_durations_and_none():
    values = validate({"MESSAGE_RETENTION": "12h", "READING_RETENTION": None, "ROLLUP_RETENTION": "2w"})
    assert values["MESSAGE_RETENTION"] == timedelta(hours=12)
    assert values["READING_RETENTION"] is None
    assert values["ROLLUP_RETENTION"] == {"1m": timedelta(weeks=2), "1h": timedelta(weeks=2), "1d": timedelta(weeks=2)}
    assert validate({})["COMMAND_RETENTION"] == timedelta(days=90)


def test_the_binary_reads_retention_from_the_environment(monkeypatch):
    from settings.environment import lifecycle_settings

    assert lifecycle_settings() == {}
    monkeypatch.setenv("HUBSERVER_MESSAGE_RETENTION", "7d")
    monkeypatch.setenv("HUBSERVER_READING_RETENTION", "forever")
    monkeypatch.setenv("HUBSERVER_ROLLUP_RETENTION", "1m=2d, 1d=never")
    monkeypatch.setenv("HUBSERVER_PRUNE_INTERVAL", "2.5")
    assert lifecycle_settings() == {
        "MESSAGE_RETENTION": "7d",
        "READING_RETENTION": None,
        "ROLLUP_RETENTION": {"1m": "2d", "1d": None},
        "PRUNE_INTERVAL": 2.5,
    }
    monkeypatch.setenv("HUBSERVER_COMMAND_RETENTION", "a week")
    with pytest.raises(ImproperlyConfigured, match="HUBSERVER_COMMAND_RETENTION"):
        lifecycle_settings()


def test_meta_retention_is_validated_where_it_is_declared():
    with pytest.raises(ConfigurationError, match=r"Boiler.Meta.retention\['messages'\] must be a duration"):

        class Boiler(DeviceType):
            pressure = Reading(float)

            class Meta:
                retention = {"messages": "a month"}

    with pytest.raises(ConfigurationError, match=r"unknown kind.*'logs'.*kinds are messages, commands"):

        class Kettle(DeviceType):
            class Meta:
                retention = {"logs": "7d"}

    for name in ("Boiler", "Kettle"):
        registry.unregister(name)


def test_meta_retention_is_inherited_kind_by_kind_over_the_settings():
    class Meter(DeviceType):
        _abstract = True
        power = Reading(float)

        class Meta:
            retention = {"messages": "7d", "rollups": {"1m": "2d"}}

    class FastMeter(Meter):
        class Meta:
            retention = {"readings": "30d", "rollups": {"1h": None}}

    try:
        with override_settings(HUBSERVER={"COMMAND_RETENTION": "1d", "ROLLUP_RETENTION": "1y"}):
            keep = retention_for(FastMeter)
        assert keep.messages == timedelta(days=7)  # from Meter
        assert keep.readings == timedelta(days=30)  # its own
        assert keep.commands == timedelta(days=1)  # the settings
        assert keep.rollups == {"1m": timedelta(days=2), "1h": None, "1d": timedelta(days=365)}
        assert "messages 7d" in keep.describe() and "1h forever" in keep.describe()
    finally:
        registry.unregister("FastMeter")


# -- removing it ---------------------------------------------------------------------------------------------


def old_and_new_rows(now):
    """Rows of one thermometer a year old and an hour old, of every kind; returns the device."""
    device = ThermometerDevice.objects.create(device_id="t-ret")
    rollup_model = Thermometer.get_rollup_model()
    for age in (timedelta(days=365), timedelta(hours=1)):
        when = now - age
        for status in ("completed", "failed"):
            ThermometerMessage.objects.create(
                device=device, topic="things/thermometer/t-ret/data", processing_status=status, received_at=when
            )
        for status in ("replied", "pending"):
            ThermometerMessage.objects.create(
                device=device,
                topic="things/thermometer/t-ret/cmd",
                direction="outbound",
                command="reboot",
                command_status=status,
                received_at=when,
            )
        ThermometerReading.objects.create(device=device, timestamp=when, received_at=when, temperature=20.0)
        for bucket in (60, 3600, 86400):
            rollup_model.objects.create(device=device, bucket=bucket, start=when, temperature_count=1)
    return device


RETENTION = {
    "MESSAGE_RETENTION": "30d",
    "COMMAND_RETENTION": "90d",
    "READING_RETENTION": "200d",
    "ROLLUP_RETENTION": {"1m": "30d", "1h": "1y", "1d": None},
}


def remaining(device):
    rollup_model = Thermometer.get_rollup_model()
    messages = ThermometerMessage.objects.filter(device=device, direction="inbound")
    commands = ThermometerMessage.objects.filter(device=device, direction="outbound")
    return {
        "messages": sorted(messages.values_list("processing_status", flat=True)),
        "commands": sorted(commands.values_list("command_status", flat=True)),
        "readings": ThermometerReading.objects.filter(device=device).count(),
        "rollups": sorted(rollup_model.objects.filter(device=device).values_list("bucket", flat=True)),
    }


@pytest.mark.django_db
def test_prune_dry_run_says_what_would_go_and_prune_removes_exactly_that():
    now = timezone.now()
    device = old_and_new_rows(now)
    before = remaining(device)
    with override_settings(HUBSERVER=RETENTION):
        out = io.StringIO()
        call_command("prune", "thermometer", "--dry-run", stdout=out)
        report = out.getvalue()
        assert remaining(device) == before  # a dry run removes nothing
        assert "thermometer: keeps messages 30d, commands 90d, readings 200d" in report
        expected = {
            "thermometer messages": 2,  # a year old: the completed and the failed one
            "thermometer commands": 1,  # the replied one; the pending one is open
            "thermometer readings": 1,
            "thermometer rollups 1m": 1,
            "thermometer rollups 1h": 1,
        }
        lines = {line.strip().split("  ")[0]: line for line in report.splitlines() if line.startswith("  ")}
        assert set(lines) == set(expected), report
        for what, count in expected.items():
            assert lines[what].endswith(f": would remove {count}"), lines[what]
        assert "rollups 1d" not in report  # kept forever: nothing to plan
        assert "Would remove 6 rows in all." in report

        out = io.StringIO()
        call_command("prune", "thermometer", "--batch-size", "1", stdout=out)
        assert "Removed 6 rows in all." in out.getvalue()
    assert remaining(device) == {
        # the year-old messages went, failed or not; the hour-old ones, failed or not, stay
        "messages": ["completed", "failed"],
        # the year-old replied command went; the pending one is still open, and stays
        "commands": ["pending", "pending", "replied"],
        "readings": 1,
        # a year old: the minute and hour rollups went (30 days, 1 year), the day rollup is kept forever
        "rollups": [60, 3600, 86400, 86400],
    }


@pytest.mark.django_db
def test_prune_refuses_an_unknown_type():
    with pytest.raises(Exception, match=r"unknown device type 'boiler'.*thermometer"):
        call_command("prune", "boiler", stdout=io.StringIO())


@pytest.mark.slow  # waits out a 1 s retention
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("hub_settings_override", [{"MESSAGE_RETENTION": "1s", "PRUNE_INTERVAL": 0.2}])
async def test_the_hub_removes_messages_past_their_retention_on_its_own(hub, clients, hub_settings_override):
    client, _ = await device_client(hub, clients, "thermometer", "t-live")
    await client.publish("things/thermometer/t-live/data", json.dumps({"temperature": 20.0}))
    await client.publish("things/thermometer/t-live/data", b"not json")  # failed: kept no longer, no shorter

    @database_sync_to_async
    def messages():
        return ThermometerMessage.objects.filter(device__device_id="t-live", direction="inbound").count()

    @database_sync_to_async
    def readings():
        return ThermometerReading.objects.filter(device__device_id="t-live").count()

    assert await messages() == 2
    await until(lambda: hub.router.pruner.passes >= 1, message="a pruning pass")
    for _ in range(100):
        if not await messages():
            break
        await until(lambda n=hub.router.pruner.passes: hub.router.pruner.passes > n, message="another pass")
    assert await messages() == 0
    assert await readings() == 1  # READING_RETENTION is 400 days
    assert hub.router.pruner.removed[("thermometer", "messages")] == 2
    await client.publish("things/thermometer/t-live/data", json.dumps({"temperature": 21.0}))
    assert await messages() == 1  # a new one is stored as ever


@pytest.mark.django_db
def test_deleting_a_device_through_the_api_removes_all_its_data(admin_client):
    device = old_and_new_rows(timezone.now())
    other = ThermometerDevice.objects.create(device_id="t-other")
    ThermometerReading.objects.create(device=other, temperature=1.0)
    response = admin_client.delete("/api/thermometer/devices/t-ret/")
    assert response.status_code == 204
    assert ThermometerMessage.objects.filter(device_id=device.pk).count() == 0
    assert ThermometerReading.objects.filter(device_id=device.pk).count() == 0
    assert Thermometer.get_rollup_model().objects.filter(device_id=device.pk).count() == 0
    assert ThermometerReading.objects.filter(device=other).count() == 1
