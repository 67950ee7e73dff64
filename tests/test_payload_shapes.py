"""A data message holding exactly its type's Readings, in their declared order, is stored with its keys once
(a PayloadShape row) and its values as a list; everything that reads it sees the object the device sent:
models, ``values()``, JSON lookups, the admin. Other payloads are stored as they are; rows keep reading the
same after the type's Readings change."""

import orjson
import pytest
from django.db import connection
from django.urls import reverse

from hubserver.models import PayloadShape
from hubserver.routing import MessageRouter
from tests.testapp.models import ThermometerDevice, ThermometerMessage

USUAL = {"temperature": 20.5, "uptime": 7, "door_open": False, "label": "café ☕"}  # Thermometer's Readings
REORDERED = {"uptime": 8, "temperature": 21.5, "door_open": True, "label": "b"}
EXTRA = {"temperature": 22.5, "uptime": 9, "door_open": None, "label": "c", "battery": 80}


def stored(pk):
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT payload_json FROM "{ThermometerMessage._meta.db_table}" WHERE id = %s', [pk])
        return orjson.loads(cursor.fetchone()[0])


async def route(*payloads):
    router = MessageRouter()
    await router.start()
    try:
        return [
            await router.route("data", "thermometer", "t1", orjson.dumps(p), qos=1, client_id="t1") for p in payloads
        ]
    finally:
        await router.stop()


@pytest.fixture
def payload_field():
    field = ThermometerMessage._meta.get_field("payload_json")
    keys = field.shape_keys
    yield field
    field.shape_keys = keys


@pytest.mark.django_db(transaction=True)
async def test_the_usual_payload_is_stored_compact_and_reads_back_as_sent(payload_field):
    from asgiref.sync import sync_to_async

    await ThermometerDevice.objects.acreate(device_id="t1")
    usual, reordered, extra = await route(USUAL, REORDERED, EXTRA)
    shape = await PayloadShape.objects.aget()
    assert orjson.loads(shape.keys) == ["temperature", "uptime", "door_open", "label"]
    assert await sync_to_async(stored)(usual.message_id) == [shape.pk, 20.5, 7, False, "café ☕"]
    assert await sync_to_async(stored)(reordered.message_id) == REORDERED  # another order: stored as it is
    assert await sync_to_async(stored)(extra.message_id) == EXTRA

    messages = [m async for m in ThermometerMessage.objects.order_by("pk")]
    assert [m.payload_json for m in messages] == [USUAL, REORDERED, EXTRA]
    assert list(messages[0].payload_json) == list(USUAL)  # the keys in the order they came
    values = [v async for v in ThermometerMessage.objects.order_by("pk").values_list("payload_json", flat=True)]
    assert values == [USUAL, REORDERED, EXTRA]

    # The Readings change (one added, the order changed): new rows get a shape of their own, old ones read as
    # they were stored.
    payload_field.shape_keys = ("label", "temperature", "uptime", "door_open", "humidity")
    later = {"label": "d", "temperature": 1.0, "uptime": 2, "door_open": True, "humidity": 3.0}
    (changed,) = await route(later)
    assert await PayloadShape.objects.acount() == 2
    assert (await ThermometerMessage.objects.aget(pk=changed.message_id)).payload_json == later
    assert (await ThermometerMessage.objects.aget(pk=usual.message_id)).payload_json == USUAL


@pytest.mark.django_db(transaction=True)
async def test_json_lookups_see_the_object(payload_field):
    from asgiref.sync import sync_to_async

    await ThermometerDevice.objects.acreate(device_id="t1")
    usual, reordered, extra = await route(USUAL, REORDERED, EXTRA)

    def found(**lookup):
        return sorted(ThermometerMessage.objects.filter(**lookup).values_list("pk", flat=True))

    def check():
        everyone = sorted([usual.message_id, reordered.message_id, extra.message_id])
        assert found(payload_json__temperature=20.5) == [usual.message_id]
        assert found(payload_json__temperature__gt=21) == [reordered.message_id, extra.message_id]
        assert found(payload_json__label="café ☕") == [usual.message_id]
        assert found(payload_json__label__startswith="caf") == [usual.message_id]
        assert found(payload_json__door_open=False) == [usual.message_id]
        assert found(payload_json__has_key="uptime") == everyone
        assert found(payload_json__has_key="battery") == [extra.message_id]
        assert found(payload_json__door_open__isnull=True) == []
        assert found(payload_json__isnull=False) == everyone
        rows = ThermometerMessage.objects.order_by("pk").values_list("payload_json__temperature", "payload_json__label")
        assert list(rows) == [(20.5, "café ☕"), (21.5, "b"), (22.5, "c")]

    await sync_to_async(check)()


@pytest.mark.django_db
def test_lists_and_look_alikes_stored_through_the_orm_read_back_as_they_were():
    device = ThermometerDevice.objects.create(device_id="t1")
    payloads = [[1, 2, 3], {"[]": [1]}, {"[]": 5, "x": 1}, [], "text", 5, None, {"command": "x"}]
    pks = [ThermometerMessage.objects.create(device=device, topic="t", payload_json=p).pk for p in payloads]
    assert [ThermometerMessage.objects.get(pk=pk).payload_json for pk in pks] == payloads
    assert stored(pks[0]) == {"[]": [1, 2, 3]}


@pytest.mark.django_db
def test_admin_shows_the_object(admin_client):
    device = ThermometerDevice.objects.create(device_id="t1")
    with connection.cursor() as cursor:  # a compact row, as the writer stores it
        cursor.execute("INSERT INTO hubserver_payloadshape (keys) VALUES (%s)", ['["temperature","label"]'])
        shape = cursor.lastrowid
    message = ThermometerMessage.objects.create(device=device, topic="t")
    with connection.cursor() as cursor:
        table = ThermometerMessage._meta.db_table
        compact = f'[{shape},19.5,"kitchen"]'
        cursor.execute(f'UPDATE "{table}" SET payload_json = %s WHERE id = %s', [compact, message.pk])
    page = admin_client.get(reverse("admin:testapp_thermometermessage_change", args=[message.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "temperature" in text and "kitchen" in text and "19.5" in text


@pytest.mark.django_db(transaction=True)
def test_rows_stored_before_read_the_same_after_migrate():
    from django.core.management import call_command
    from django.db.migrations.executor import MigrationExecutor

    old_state = "0006_usual_values_stored_empty"  # the last migration of the test app before compact payloads
    executor = MigrationExecutor(connection)
    executor.migrate([("testapp", old_state), ("hubserver", "0002_storagereport")])
    try:
        old = executor.loader.project_state(("testapp", old_state)).apps
        device = old.get_model("testapp", "ThermometerDevice").objects.create(device_id="old")
        make = old.get_model("testapp", "ThermometerMessage").objects.create
        pks = [make(device_id=device.pk, topic="t", payload_json=p).pk for p in (USUAL, [1, 2], {"a": 1})]
        assert "hubserver_payloadshape" not in connection.introspection.table_names()
    finally:
        call_command("migrate", verbosity=0)
    assert [ThermometerMessage.objects.get(pk=pk).payload_json for pk in pks] == [USUAL, [1, 2], {"a": 1}]
    assert list(ThermometerMessage.objects.filter(payload_json__uptime=7).values_list("pk", flat=True)) == [pks[0]]
    PayloadShape.objects.create(keys='["temperature","uptime","door_open","label"]')  # as the writer would
    assert ThermometerMessage.objects.get(pk=pks[0]).payload_json == USUAL
    assert list(ThermometerMessage.objects.filter(payload_json__uptime=7).values_list("pk", flat=True)) == [pks[0]]
