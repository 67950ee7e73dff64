"""The audit trail stores the usual direction, processing status and content type as '' (no bytes), and
nothing else sees it: models, ``values()``, filters, the admin's list filters and pages show and find the
words; rows an older hub stored in full are rewritten after ``migrate`` and found by the same filters."""

from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.urls import reverse

from hubserver.lifecycle.usual import convert_usual_values
from hubserver.routing import MessageRouter
from tests.testapp.models import ThermometerDevice, ThermometerMessage

COLUMNS = ("direction", "processing_status", "content_type")


def stored(pk):
    with connection.cursor() as cursor:
        table = ThermometerMessage._meta.db_table
        cursor.execute(f'SELECT direction, processing_status, content_type FROM "{table}" WHERE id = %s', [pk])
        return cursor.fetchone()


@pytest.mark.django_db(transaction=True)
async def test_the_writer_stores_usual_values_empty_and_they_read_back_as_words():
    from asgiref.sync import sync_to_async

    await ThermometerDevice.objects.acreate(device_id="t1")
    router = MessageRouter()
    await router.start()
    try:
        good = await router.route("data", "thermometer", "t1", b'{"temperature": 20.5}', qos=1, client_id="t1")
        bad = await router.route("data", "thermometer", "t1", b"not json", qos=1, client_id="t1")
    finally:
        await router.stop()
    assert good.processing_status == "completed" and bad.processing_status == "failed"
    message = await ThermometerMessage.objects.aget(pk=good.message_id)
    assert (message.direction, message.processing_status, message.content_type) == (
        "inbound",
        "completed",
        "application/json",
    )
    assert message.get_direction_display() == "Inbound"
    assert await sync_to_async(stored)(good.message_id) == ("", "", "")
    assert await sync_to_async(stored)(bad.message_id) == ("", "failed", "")
    values = [row async for row in ThermometerMessage.objects.order_by("pk").values_list(*COLUMNS)]
    assert values == [("inbound", "completed", "application/json"), ("inbound", "failed", "application/json")]


def _messages():
    device = ThermometerDevice.objects.create(device_id="t-1")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    make = ThermometerMessage.objects.create
    return [
        make(device=device, topic="things/thermometer/t-1/data", processing_status="completed", received_at=now),
        make(device=device, topic="things/thermometer/t-1/data", processing_status="failed", received_at=now),
        make(device=device, topic="things/thermometer/t-1/cmd", direction="outbound", command="set", received_at=now),
        make(device=device, topic="things/thermometer/t-1/data", content_type="text/plain", received_at=now),
    ]


@pytest.mark.django_db
def test_filters_find_the_words():
    done, failed, command, text = _messages()
    assert stored(done.pk) == ("", "", "") and stored(command.pk) == ("outbound", "pending", "")
    assert stored(text.pk) == ("", "pending", "text/plain")
    found = lambda **lookup: sorted(m.pk for m in ThermometerMessage.objects.filter(**lookup))  # noqa: E731
    assert found(processing_status="completed") == [done.pk]
    assert found(processing_status__in=["completed", "failed"]) == [done.pk, failed.pk]
    assert found(direction="inbound") == [done.pk, failed.pk, text.pk]
    assert found(direction="outbound") == [command.pk]
    assert found(content_type="application/json") == [done.pk, failed.pk, command.pk]
    assert found(content_type="text/plain") == [text.pk]
    assert sorted(ThermometerMessage.objects.exclude(processing_status="completed").values_list("pk", flat=True)) == [
        failed.pk,
        command.pk,
        text.pk,
    ]
    ThermometerMessage.objects.filter(pk=failed.pk).update(processing_status="completed")
    assert stored(failed.pk)[1] == "" and found(processing_status="completed") == [done.pk, failed.pk]
    failed.refresh_from_db()
    failed.mark_failed("again")
    assert stored(failed.pk)[1] == "failed"


@pytest.mark.django_db
def test_admin_list_filters_and_page_show_the_words(admin_client):
    done, failed, command, _ = _messages()
    url = reverse("admin:testapp_thermometermessage_changelist")
    page = admin_client.get(url, {"processing_status__exact": "completed"})
    assert page.status_code == 200 and list(page.context["cl"].result_list) == [done]
    page = admin_client.get(url, {"direction__exact": "inbound", "processing_status__exact": "failed"})
    assert list(page.context["cl"].result_list) == [failed]
    page = admin_client.get(url, {"direction__exact": "outbound"})
    assert list(page.context["cl"].result_list) == [command]
    detail = admin_client.get(reverse("admin:testapp_thermometermessage_change", args=[done.pk])).content.decode()
    assert "Inbound" in detail and "Completed" in detail and "application/json" in detail


OLD = "0005_compact_timestamps"  # the last migration of the test app whose usual values are stored in full


@pytest.mark.django_db(transaction=True)
def test_rows_an_older_hub_stored_in_full_are_found_after_migrate():
    executor = MigrationExecutor(connection)
    executor.migrate([("testapp", OLD)])
    try:
        old = executor.loader.project_state(("testapp", OLD)).apps
        device = old.get_model("testapp", "ThermometerDevice").objects.create(device_id="old")
        make = old.get_model("testapp", "ThermometerMessage").objects.create
        now = datetime(2025, 6, 1, tzinfo=UTC)
        pks = [
            make(device_id=device.pk, topic="t/d", processing_status="completed", received_at=now).pk,
            make(device_id=device.pk, topic="t/d", processing_status="failed", received_at=now).pk,
            make(device_id=device.pk, topic="t/c", direction="outbound", content_type="text/plain", received_at=now).pk,
        ]
        assert stored(pks[0]) == ("inbound", "completed", "application/json")
    finally:
        call_command("migrate", "testapp", verbosity=0)  # forward again: the usual values rewritten
    assert [stored(pk) for pk in pks] == [("", "", ""), ("", "failed", ""), ("outbound", "pending", "text/plain")]
    rows = ThermometerMessage.objects.filter(pk__in=pks).order_by("pk").values_list(*COLUMNS)
    assert list(rows) == [
        ("inbound", "completed", "application/json"),
        ("inbound", "failed", "application/json"),
        ("outbound", "pending", "text/plain"),
    ]
    assert list(ThermometerMessage.objects.filter(processing_status="completed").values_list("pk", flat=True)) == [
        pks[0]
    ]
    assert ThermometerMessage.objects.filter(direction="inbound").count() == 2
    assert convert_usual_values() == {}  # nothing left: a second look converts nothing
