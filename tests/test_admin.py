"""The generated admin: registration, the list columns, the Device actions
(provision with credentials shown once, send a command, deactivate and disconnect) and the read-only
Message audit trail."""

import json
import re

import pytest
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.contrib.admin.models import LogEntry
from django.test import override_settings
from django.urls import reverse

from hubserver import registry
from hubserver.access import provision, verify_secret
from hubserver.generators.admin import HubDeviceAdmin, auto_register_admin, create_admin
from tests.conftest import device_client

SECRET = re.compile(r'<code class="hub-secret">([^<]+)</code>')


def url(model, view="changelist", *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def models_of(type_name):
    return registry.get_models(type_name)


def make_device(type_name="thermometer", device_id="d-1", credentials=False, **fields):
    device = models_of(type_name)[0].objects.create(device_id=device_id, **fields)
    return device, (provision(device) if credentials else None)


def action(client, model, name, devices, **extra):
    data = {"action": name, "_selected_action": [d.pk for d in devices], **extra}
    return client.post(url(model), data)


# -- registration and the list columns, filters and searches -----------------------------------------------


def test_every_generated_model_is_registered_and_its_changelist_renders(admin_client):
    checked = 0
    for device_type, device_model, reading_model, message_model in registry.all_with_models():
        device = device_model.objects.create(device_id=f"{device_type.type_name()}-1")
        reading_model.objects.create(device=device)
        message_model.objects.create(device=device, topic="things/x/y/data", payload_raw=b"\xff{}")
        for model in (device_model, reading_model, message_model):
            assert admin.site.is_registered(model)
            response = admin_client.get(url(model))
            assert response.status_code == 200, (model, response.status_code)
            checked += 1
        assert admin_client.get(url(device_model, "change", device.pk)).status_code == 200
        assert admin_client.get(url(device_model, "add")).status_code == 200
    assert checked >= 3 * 6  # the test app's two types and the catalogue's four


def test_create_admin_has_the_seeds_lists():
    station = registry.get("weatherstation")
    device_admin, reading_admin, message_admin = create_admin(station)
    assert issubclass(device_admin, HubDeviceAdmin)
    assert device_admin.list_display == [
        "name",
        "device_id",
        "status",
        "battery_level",
        "last_seen",
        "is_active",
        "created_at",
        "report_interval",
    ]
    assert device_admin.list_filter == ["status", "is_active"]
    assert device_admin.search_fields == ["name", "device_id"]
    assert device_admin.readonly_fields == [
        "mqtt_username",
        "mqtt_password_hash",
        "api_key",
        "last_seen",
        "created_at",
        "updated_at",
        "mqtt_limits",  # the hub's own: how often the device's MQTT connection hit a limit
    ]
    assert reading_admin.list_display == [
        "device",
        "timestamp",
        "temperature",
        "humidity",
        "pressure",
        "wind_speed",
        "rain",
    ]
    assert reading_admin.list_filter == ["device"]
    assert reading_admin.date_hierarchy == "timestamp"
    assert message_admin.list_display == ["device", "topic", "direction", "processing_status", "received_at"]
    assert message_admin.list_filter[:2] == ["processing_status", "direction"]
    assert "command_status" in message_admin.list_filter
    message_fields = {f.name for f in station.get_models()[2]._meta.fields} - {"id", "payload_raw"}
    assert message_fields <= set(message_admin.readonly_fields)
    assert set(device_admin.actions) == {"provision_credentials", "send_command", "deactivate"}


def test_auto_admin_registers_every_type_and_can_be_turned_off():
    from hubserver.apps import discover

    site = AdminSite(name="fresh")
    auto_register_admin(site)
    for _, *models in registry.all_with_models():
        assert all(site.is_registered(model) for model in models)
    off = AdminSite(name="off")
    with override_settings(HUBSERVER={"AUTO_ADMIN": False}):
        discover(off)
    assert not off._registry
    # A model the project registered itself is left alone.
    mine = AdminSite(name="mine")
    device_model = models_of("thermometer")[0]
    mine.register(device_model)
    auto_register_admin(mine)
    assert type(mine._registry[device_model]) is admin.ModelAdmin


# -- provision ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_provision_action_confirms_then_shows_the_credentials_once(admin_client):
    device_model = models_of("thermometer")[0]
    fresh, _ = make_device(device_id="fresh")
    known, old = make_device(device_id="known", credentials=True)

    confirm = action(admin_client, device_model, "provision_credentials", [fresh, known])
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Provision and show the credentials" in page and "1 of them already have credentials" in page
    fresh.refresh_from_db()
    assert not fresh.mqtt_password_hash  # nothing happened yet

    response = action(admin_client, device_model, "provision_credentials", [fresh, known], confirm="yes")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    secrets = SECRET.findall(page)
    assert len(secrets) == 4  # a password and an API key per device
    by_device = dict(zip(["fresh", "known"], zip(secrets[::2], secrets[1::2], strict=True), strict=True))
    for device_id, (password, api_key) in by_device.items():
        device = device_model.objects.get(device_id=device_id)
        assert device.mqtt_username == f"thermometer.{device_id}"
        assert verify_secret(device.mqtt_password_hash, password)
        assert verify_secret(device.api_key, api_key)
        assert password not in device.mqtt_password_hash
    known.refresh_from_db()
    assert not verify_secret(known.mqtt_password_hash, old["mqtt_password"])  # rotated
    assert "things/thermometer/fresh/cmd" in page
    assert LogEntry.objects.filter(change_message="Rotated MQTT credentials").count() == 1

    # No second view: neither the list, the change page nor the history shows them again.
    for again in (url(device_model), url(device_model, "change", known.pk), url(device_model, "history", known.pk)):
        text = admin_client.get(again).content.decode()
        assert not any(secret in text for secret in secrets)


@pytest.mark.django_db
def test_provision_action_needs_change_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    device_model = models_of("thermometer")[0]
    device, _ = make_device()
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_thermometerdevice"))
    client.force_login(viewer)
    response = action(client, device_model, "provision_credentials", [device], confirm="yes")
    assert "hub-secret" not in response.content.decode()
    device.refresh_from_db()
    assert not device.mqtt_password_hash


# -- deactivate -----------------------------------------------------------------------------------------


async def test_deactivate_action_saves_each_device_and_disconnects_its_session(hub, clients, admin_client):
    device_model = models_of("thermometer")[0]
    connected, _ = await device_client(hub, clients, "thermometer", "live-1")
    device = await device_model.objects.aget(device_id="live-1")
    other = await sync_to_async(make_device)(device_id="idle-1")
    response = await sync_to_async(action)(admin_client, device_model, "deactivate", [device, other[0]])
    assert response.status_code == 302
    await connected.wait_disconnected()
    assert not (await device_model.objects.aget(device_id="live-1")).is_active
    assert not (await device_model.objects.aget(device_id="idle-1")).is_active
    # It cannot come back.
    again = clients(hub.engine.port, "thermometer.live-1", "thermometer.live-1", "whatever")
    assert await again.connect(expect_success=False) != 0


# -- send a command -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_send_command_action_validates_the_payload_on_the_form(admin_client):
    device_model, _, message_model = models_of("thermometer")
    device, _ = make_device()
    form = action(admin_client, device_model, "send_command", [device])
    assert form.status_code == 200
    page = form.content.decode()
    assert 'name="command"' in page and "set_mode" in page and "reboot" in page

    invalid = action(
        admin_client, device_model, "send_command", [device], apply="yes", command="set_mode", payload='{"mode": "x"}'
    )
    assert invalid.status_code == 200
    assert "is not one of" in invalid.content.decode()
    broken = action(admin_client, device_model, "send_command", [device], apply="yes", command="set_mode", payload="{")
    assert "Not valid JSON" in broken.content.decode()
    unknown = action(admin_client, device_model, "send_command", [device], apply="yes", command="explode", payload="{}")
    assert "Select a valid choice" in unknown.content.decode()
    assert not message_model.objects.exists()


@pytest.mark.django_db
def test_send_command_action_queues_an_outbound_message_per_device(admin_client):
    pytest.importorskip("hubserver.commands")
    device_model, _, message_model = models_of("thermometer")
    devices = [make_device(device_id=f"c-{n}")[0] for n in range(2)]
    response = action(
        admin_client,
        device_model,
        "send_command",
        devices,
        apply="yes",
        command="set_mode",
        payload='{"mode": "manual"}',
    )
    assert response.status_code == 302
    sent = list(message_model.objects.filter(direction="outbound").order_by("device__device_id"))
    assert [m.device.device_id for m in sent] == ["c-0", "c-1"]
    for message in sent:
        assert message.command == "set_mode"
        assert message.command_status in ("pending", "sent")
        assert message.topic == f"things/thermometer/{message.device.device_id}/cmd"
        assert message.payload_json["payload"] == {"mode": "manual"}
    followed = admin_client.get(response["Location"]).content.decode()
    assert "Queued command set_mode for 2 devices" in followed


@pytest.mark.django_db
def test_send_command_on_a_type_without_commands(admin_client):
    device_model = models_of("energymeter")[0]
    device = device_model.objects.create(device_id="m-1")
    response = action(admin_client, device_model, "send_command", [device])
    assert response.status_code == 302
    assert "declares no commands" in admin_client.get(response["Location"]).content.decode()


# -- messages are read-only -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_message_admin_is_read_only_and_filterable(admin_client):
    _, _, message_model = models_of("thermometer")
    device, _ = make_device()
    failed = message_model.objects.create(
        device=device, topic="things/thermometer/d-1/data", processing_status="failed", payload_raw=b"nope"
    )
    message_model.objects.create(device=device, topic="things/thermometer/d-1/cmd", direction="outbound")
    assert admin_client.get(url(message_model, "add")).status_code == 403
    view = admin_client.get(url(message_model, "change", failed.pk))
    assert view.status_code == 200
    assert 'name="topic"' not in view.content.decode() and "nope" in view.content.decode()
    changed = admin_client.post(url(message_model, "change", failed.pk), {"topic": "x"})
    assert changed.status_code == 403
    failed.refresh_from_db()
    assert failed.topic == "things/thermometer/d-1/data"
    listed = admin_client.get(url(message_model), {"processing_status__exact": "failed"}).content.decode()
    assert "/d-1/data" in listed and "/d-1/cmd" not in listed
    listed = admin_client.get(url(message_model), {"direction__exact": "outbound"}).content.decode()
    assert "/d-1/cmd" in listed and "/d-1/data" not in listed


@pytest.mark.django_db
def test_reading_admin_date_hierarchy(admin_client):
    _, reading_model, _ = models_of("thermometer")
    device, _ = make_device()
    reading_model.objects.create(device=device, temperature=21.5)
    page = admin_client.get(url(reading_model)).content.decode()
    assert "21.5" in page and 'class="toplinks"' in page


def test_json_payload_default_is_an_empty_object():
    from hubserver.generators.admin import SendCommandForm

    form = SendCommandForm(registry.get("thermometer"), {"command": "reboot", "payload": ""})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["payload_object"] == {}
    assert json.loads(form.fields["payload"].initial) == {}


@pytest.mark.django_db
def test_rollups_are_listed_read_only(admin_client):
    from datetime import UTC, datetime

    device, _ = make_device()
    rollup_model = registry.get("thermometer").get_rollup_model()
    rollup_model.objects.create(
        device=device, bucket=3600, start=datetime(2025, 1, 1, tzinfo=UTC), temperature_count=3, temperature_min=18.25
    )
    page = admin_client.get(url(rollup_model), {"bucket": 3600}).content.decode()
    assert "18.25" in page and "d-1" in page
    assert admin_client.get(url(rollup_model, "add")).status_code == 403
