"""The generated REST API: URLs, permissions, device CRUD, the readings,
provision and commands actions, the readings endpoint's filters, ordering, pagination and CSV export."""

import base64
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import NoReverseMatch, reverse
from rest_framework.authtoken.models import Token

from hubserver.access.hashing import verify_secret
from hubserver.generators.serializers import create_serializers
from hubserver.generators.urls import get_iot_urlpatterns
from hubserver.generators.viewsets import create_viewsets
from tests.testapp.devices import Hygrometer, Thermometer
from tests.testapp.models import ThermometerDevice, ThermometerMessage, ThermometerReading

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def devices_url(device_id=None, action=None, type_name="thermometer"):
    if device_id is None:
        return reverse(f"{type_name}-device-list")
    name = f"{type_name}-device-{action}" if action else f"{type_name}-device-detail"
    return reverse(name, args=[device_id])


def readings_url(type_name="thermometer"):
    return reverse(f"{type_name}-reading-list")


@pytest.fixture
def device():
    return ThermometerDevice.objects.create(device_id="t-1", name="Kitchen")


@pytest.fixture
def make_user(django_user_model):
    """A user holding exactly the permissions named as ``"kind_model"`` codenames (e.g. ``view_thermometerdevice``)."""

    def make(*codenames, username="alice"):
        user = django_user_model.objects.create_user(username, password="pw")
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        return user

    return make


@pytest.fixture
def as_user(client, make_user):
    """Log the test client in as a user with the given permissions."""

    def login(*codenames):
        client.force_login(make_user(*codenames))
        return client

    return login


def add_readings(device, count, start=T0, step=timedelta(minutes=1), **values):
    ThermometerReading.objects.bulk_create(
        ThermometerReading(device=device, timestamp=start + i * step, temperature=20 + i % 10, uptime=i, **values)
        for i in range(count)
    )


# --- URLs and generators -------------------------------------------------------------------------------------


def test_urls_per_seed(device):
    assert devices_url() == "/api/thermometer/devices/"
    assert devices_url("t-1") == "/api/thermometer/devices/t-1/"
    assert devices_url("t-1", "readings") == "/api/thermometer/devices/t-1/readings/"
    assert devices_url("t-1", "provision") == "/api/thermometer/devices/t-1/provision/"
    assert devices_url("t-1", "commands") == "/api/thermometer/devices/t-1/commands/"
    assert readings_url() == "/api/thermometer/readings/"
    assert readings_url("hygrometer") == "/api/hygrometer/readings/"


def test_prefix_argument():
    from django.urls import URLResolver

    patterns = get_iot_urlpatterns("api/things")
    assert [str(p.pattern) for p in patterns] == ["api/things/", "api/things/"]  # the root, then the types
    assert patterns[0].name == "hub-api-root" and isinstance(patterns[1], URLResolver)
    routes = {str(p.pattern) for p in patterns[1].url_patterns}
    assert "^thermometer/devices/$" in routes
    assert "^weatherstation/readings/$" in routes
    unprefixed = {str(p.pattern) for p in get_iot_urlpatterns("")}
    assert "^thermometer/devices/(?P<device_id>[^/]+)/commands/$" in unprefixed


def test_generated_classes_are_per_type_and_made_once():
    device_s, reading_s = create_serializers(Thermometer)
    assert (device_s.__name__, reading_s.__name__) == ("ThermometerDeviceSerializer", "ThermometerReadingSerializer")
    assert create_serializers(Thermometer) == (device_s, reading_s)
    device_v, reading_v = create_viewsets(Thermometer)
    assert (device_v.__name__, reading_v.__name__) == ("ThermometerDeviceViewSet", "ThermometerReadingViewSet")
    assert create_viewsets(Thermometer) == (device_v, reading_v)
    assert create_viewsets(Hygrometer)[0] is not device_v
    assert set(reading_s.Meta.fields) == {"id", "device", "timestamp", "received_at", *Thermometer._readings}


# --- Permissions -----------------------------------------------------------------------------------------------


def test_anonymous_is_asked_for_credentials(client, device):
    for url in (devices_url(), devices_url("t-1"), devices_url("t-1", "readings"), readings_url(), "/api/"):
        response = client.get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"] == "Token", url
    assert client.post(devices_url("t-1", "provision")).status_code == 401
    assert client.get(devices_url(), HTTP_AUTHORIZATION="Token not-a-key").status_code == 401


def test_basic_credentials_are_told_which_schemes_the_api_takes(client, device, django_user_model):
    """``curl -u admin:<password>``: Basic is not taken, and the answer says so (not "credentials were not
    provided"), naming the token and the command that makes one; sessions and tokens still work."""
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "s3cret-pass")
    basic = "Basic " + base64.b64encode(b"boss:s3cret-pass").decode()
    for url in (devices_url(), "/api/"):
        response = client.get(url, HTTP_AUTHORIZATION=basic)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"] == "Token", url
        detail = response.json()["detail"]
        assert detail.startswith("Basic authentication is not accepted: send 'Authorization: Token <key>'"), detail
        assert "hubserver drf_create_token <username>" in detail
    token = Token.objects.create(user=user)
    assert client.get(devices_url(), HTTP_AUTHORIZATION=f"Token {token.key}").status_code == 200
    client.force_login(user)
    assert client.get(devices_url()).status_code == 200, "a session is not disturbed by the header check"


def test_authenticated_without_permissions_is_refused(as_user, device):
    client = as_user()
    assert client.get(devices_url()).status_code == 403
    assert client.get(devices_url("t-1")).status_code == 403
    assert client.get(readings_url()).status_code == 403
    assert client.options(devices_url()).status_code == 403
    assert client.post(devices_url(), {"device_id": "x"}, content_type="application/json").status_code == 403


def test_view_permission_allows_reading_only(as_user, device):
    client = as_user("view_thermometerdevice")
    assert client.get(devices_url()).status_code == 200
    assert client.get(devices_url("t-1")).status_code == 200
    assert client.post(devices_url(), {"device_id": "x"}, content_type="application/json").status_code == 403
    assert client.patch(devices_url("t-1"), {"name": "y"}, content_type="application/json").status_code == 403
    assert client.delete(devices_url("t-1")).status_code == 403
    # Another model's view permission is not this one's.
    assert client.get(devices_url(type_name="hygrometer")).status_code == 403


def test_add_change_delete_permissions(as_user, device):
    client = as_user(
        "view_thermometerdevice", "add_thermometerdevice", "change_thermometerdevice", "delete_thermometerdevice"
    )
    assert client.post(devices_url(), {"device_id": "t-2"}, content_type="application/json").status_code == 201
    assert client.patch(devices_url("t-2"), {"name": "B"}, content_type="application/json").status_code == 200
    assert client.delete(devices_url("t-2")).status_code == 204
    assert not ThermometerDevice.objects.filter(device_id="t-2").exists()


def test_token_authentication(client, make_user, device):
    user = make_user("view_thermometerdevice")
    token = Token.objects.create(user=user)
    response = client.get(devices_url(), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200
    assert [d["device_id"] for d in response.json()["results"]] == ["t-1"]
    assert client.get(devices_url(), HTTP_AUTHORIZATION="Token not-a-key").status_code in (401, 403)


# --- Devices ---------------------------------------------------------------------------------------------------


def test_device_crud(admin_client):
    created = admin_client.post(
        devices_url(),
        {"device_id": "t-9", "name": "Hall", "mode": "manual", "setpoint": 19.5, "metadata": {"room": "hall"}},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["device_id"] == "t-9" and body["mode"] == "manual" and body["setpoint"] == 19.5
    assert body["status"] == "offline" and body["metadata"] == {"room": "hall"}

    listed = admin_client.get(devices_url()).json()
    assert listed["count"] == 1 and listed["results"][0]["device_id"] == "t-9"

    patched = admin_client.patch(devices_url("t-9"), {"mode": "auto"}, content_type="application/json")
    assert patched.status_code == 200 and patched.json()["mode"] == "auto"
    assert ThermometerDevice.objects.get(device_id="t-9").mode == "auto"

    assert admin_client.delete(devices_url("t-9")).status_code == 204
    assert admin_client.get(devices_url("t-9")).status_code == 404


def test_device_filters_search_and_ordering(admin_client):
    ThermometerDevice.objects.create(device_id="b", name="Garage", status="online")
    ThermometerDevice.objects.create(device_id="a", name="Attic", is_active=False)
    ids = lambda query: [d["device_id"] for d in admin_client.get(devices_url() + query).json()["results"]]  # noqa: E731
    assert ids("") == ["a", "b"]
    assert ids("?status=online") == ["b"]
    assert ids("?is_active=false") == ["a"]
    assert ids("?search=gara") == ["b"]
    assert ids("?ordering=-device_id") == ["b", "a"]


def test_secrets_are_never_returned(admin_client, device):
    admin_client.post(devices_url("t-1", "provision"))
    device.refresh_from_db()
    assert device.mqtt_password_hash and device.api_key
    for body in (admin_client.get(devices_url("t-1")).json(), admin_client.get(devices_url()).json()["results"][0]):
        assert "mqtt_password_hash" not in body and "api_key" not in body
        assert body["mqtt_username"] == "thermometer.t-1"
    assert device.api_key not in admin_client.get(devices_url("t-1")).content.decode()


def test_sensitive_fields_are_read_only(admin_client, device):
    response = admin_client.patch(
        devices_url("t-1"),
        {
            "status": "online",
            "battery_level": 5,
            "last_seen": "2025-01-01T00:00:00Z",
            "firmware_version": "9.9",
            "mqtt_username": "evil",
            "mqtt_password_hash": "x",
            "api_key": "y",
            "created_at": "2000-01-01T00:00:00Z",
            "name": "Renamed",
        },
        content_type="application/json",
    )
    assert response.status_code == 200
    device.refresh_from_db()
    assert device.name == "Renamed"
    assert (device.status, device.battery_level, device.last_seen, device.firmware_version) == (
        "offline",
        None,
        None,
        "",
    )
    assert (device.mqtt_username, device.mqtt_password_hash, device.api_key) == (None, "", "")
    assert device.created_at.year != 2000


def test_state_fields_are_validated(admin_client, device):
    bad_choice = admin_client.patch(devices_url("t-1"), {"mode": "turbo"}, content_type="application/json")
    assert bad_choice.status_code == 400 and "mode" in bad_choice.json()
    blank = admin_client.patch(devices_url("t-1"), {"mode": ""}, content_type="application/json")
    assert blank.status_code == 400
    bad_type = admin_client.patch(devices_url("t-1"), {"setpoint": "warm"}, content_type="application/json")
    assert bad_type.status_code == 400 and "setpoint" in bad_type.json()
    device.refresh_from_db()
    assert (device.mode, device.setpoint) == ("auto", 21.0)


def test_device_id_is_validated_and_immutable(admin_client, device):
    bad = admin_client.post(devices_url(), {"device_id": "a/b"}, content_type="application/json")
    assert bad.status_code == 400 and "device_id" in bad.json()
    duplicate = admin_client.post(devices_url(), {"device_id": "t-1"}, content_type="application/json")
    assert duplicate.status_code == 400
    renamed = admin_client.patch(devices_url("t-1"), {"device_id": "t-2"}, content_type="application/json")
    assert renamed.status_code == 400 and "device_id" in renamed.json()
    same = admin_client.put(devices_url("t-1"), {"device_id": "t-1", "name": "x"}, content_type="application/json")
    assert same.status_code == 200


def test_device_ids_with_dots_are_addressable(admin_client):
    ThermometerDevice.objects.create(device_id="node.7")
    assert admin_client.get(devices_url("node.7")).json()["device_id"] == "node.7"


# --- The readings action ----------------------------------------------------------------------------------------


def test_readings_action_default_and_limit(admin_client, device):
    add_readings(device, 120)
    default = admin_client.get(devices_url("t-1", "readings"))
    assert default.status_code == 200
    rows = default.json()
    assert len(rows) == 100
    assert rows[0]["uptime"] == 119 and rows[-1]["uptime"] == 20  # newest first
    assert rows[0]["device"] == "t-1" and set(rows[0]) == {
        "id",
        "device",
        "timestamp",
        "received_at",
        "temperature",
        "uptime",
        "door_open",
        "label",
    }
    five = admin_client.get(devices_url("t-1", "readings") + "?limit=5").json()
    assert [r["uptime"] for r in five] == [119, 118, 117, 116, 115]
    assert len(admin_client.get(devices_url("t-1", "readings") + "?limit=1000").json()) == 120


def test_readings_action_max_1000(admin_client, device):
    add_readings(device, 1001, step=timedelta(seconds=1))
    assert len(admin_client.get(devices_url("t-1", "readings") + "?limit=1000").json()) == 1000


@pytest.mark.parametrize("value", ["0", "-1", "1001", "abc", "1.5"])
def test_readings_action_rejects_bad_limits(admin_client, device, value):
    response = admin_client.get(devices_url("t-1", "readings") + f"?limit={value}")
    assert response.status_code == 400
    assert "limit" in response.json()


def test_readings_action_only_this_device(admin_client, device):
    other = ThermometerDevice.objects.create(device_id="t-2")
    add_readings(device, 2)
    add_readings(other, 3)
    assert {r["device"] for r in admin_client.get(devices_url("t-2", "readings")).json()} == {"t-2"}
    assert admin_client.get(devices_url("nope", "readings")).status_code == 404


def test_readings_action_needs_view_on_readings(make_user, client, device):
    add_readings(device, 1)
    client.force_login(make_user("view_thermometerdevice"))
    assert client.get(devices_url("t-1", "readings")).status_code == 403
    client.force_login(make_user("view_thermometerdevice", "view_thermometerreading", username="bob"))
    assert client.get(devices_url("t-1", "readings")).status_code == 200


def test_readings_action_csv(admin_client, device):
    add_readings(device, 2)
    response = admin_client.get(devices_url("t-1", "readings") + "?format=csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["id", "device", "timestamp", "received_at", "temperature", "uptime", "door_open", "label"]
    assert len(rows) == 3 and rows[1][1] == "t-1"


# --- The provision action --------------------------------------------------------------------------------------


def test_provision_returns_credentials_once(admin_client, device, settings):
    settings.HUBSERVER = {"PUBLIC_HOST": "hub.example.test", "TOPIC_PREFIX": "things"}
    response = admin_client.post(devices_url("t-1", "provision"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    info = response.json()
    assert set(info) == {
        "device_id", "device_type", "client_id", "mqtt_username", "mqtt_password", "api_key", "host", "mqtt_port",
        "mqtt_tls_port", "websocket_url", "topics",
    }  # fmt: skip
    assert info["device_id"] == "t-1" and info["device_type"] == "thermometer"
    assert info["mqtt_username"] == info["client_id"] == "thermometer.t-1"
    assert info["host"] == "hub.example.test" and info["mqtt_port"] == 1883 and info["mqtt_tls_port"] is None
    assert info["websocket_url"] == "ws://hub.example.test:8000/mqtt"
    assert info["topics"] == {
        "data": "things/thermometer/t-1/data",
        "status": "things/thermometer/t-1/status",
        "cmd": "things/thermometer/t-1/cmd",
        "reply": "things/thermometer/t-1/reply",
    }
    device.refresh_from_db()
    assert verify_secret(device.mqtt_password_hash, info["mqtt_password"])
    assert verify_secret(device.api_key, info["api_key"])
    # No way to see them again: no GET, and provisioning again rotates.
    assert admin_client.get(devices_url("t-1", "provision")).status_code == 405
    again = admin_client.post(devices_url("t-1", "provision")).json()
    assert again["mqtt_password"] != info["mqtt_password"]
    device.refresh_from_db()
    assert not verify_secret(device.mqtt_password_hash, info["mqtt_password"])


def test_provision_needs_change_permission(make_user, client, device):
    client.force_login(make_user("view_thermometerdevice", "add_thermometerdevice"))
    assert client.post(devices_url("t-1", "provision")).status_code == 403
    device.refresh_from_db()
    assert device.mqtt_username is None
    client.force_login(make_user("change_thermometerdevice", username="bob"))
    assert client.post(devices_url("t-1", "provision")).status_code == 200


def test_provision_unknown_device(admin_client):
    assert admin_client.post(devices_url("ghost", "provision")).status_code == 404


# --- The commands action ---------------------------------------------------------------------------------------


def test_send_command(admin_client, device):
    response = admin_client.post(
        devices_url("t-1", "commands"),
        {"command": "set_mode", "payload": {"mode": "manual"}},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["command"] == "set_mode" and body["payload"] == {"mode": "manual"}
    assert body["command_status"] in ("pending", "sent")
    assert body["correlation_id"] and body["expires_at"] and body["command_result"] is None
    message = ThermometerMessage.objects.get(pk=body["id"])
    assert message.direction == "outbound" and message.device == device and message.command == "set_mode"
    assert message.correlation_id == body["correlation_id"]


def test_send_command_without_payload(admin_client, device):
    response = admin_client.post(devices_url("t-1", "commands"), {"command": "reboot"}, content_type="application/json")
    assert response.status_code == 202
    assert response.json()["payload"] == {}


@pytest.mark.parametrize(
    "body",
    [
        {"command": "self_destruct"},
        {"command": "set_mode", "payload": {"mode": "turbo"}},
        {"command": "set_mode"},
    ],
)
def test_send_command_rejects_invalid(admin_client, device, body):
    response = admin_client.post(devices_url("t-1", "commands"), body, content_type="application/json")
    assert response.status_code == 400
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert not ThermometerMessage.objects.exists()


def test_send_command_body_is_checked(admin_client, device):
    assert admin_client.post(devices_url("t-1", "commands"), {}, content_type="application/json").status_code == 400
    not_json = admin_client.post(devices_url("t-1", "commands"), {"command": "reboot"})  # multipart
    assert not_json.status_code == 415


def test_command_history(admin_client, device):
    other = ThermometerDevice.objects.create(device_id="t-2")
    for i, name in enumerate(["reboot", "set_mode", "reboot"]):
        ThermometerMessage.objects.create(
            device=device,
            direction="outbound",
            topic="things/thermometer/t-1/cmd",
            command=name,
            command_status="replied" if i == 0 else "pending",
            payload_json={"command": name, "payload": {"n": i}, "correlation_id": f"c{i}"},
            correlation_id=f"c{i}",
            received_at=T0 + timedelta(minutes=i),
            command_result={"ok": True} if i == 0 else None,
        )
    # Not commands: an inbound message, an outbound one without a command, another device's command.
    ThermometerMessage.objects.create(device=device, topic="things/thermometer/t-1/data", received_at=T0)
    ThermometerMessage.objects.create(device=device, direction="outbound", topic="x", received_at=T0)
    ThermometerMessage.objects.create(device=other, direction="outbound", topic="y", command="reboot", received_at=T0)

    response = admin_client.get(devices_url("t-1", "commands"))
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 3
    assert [c["correlation_id"] for c in page["results"]] == ["c2", "c1", "c0"]
    oldest = page["results"][-1]
    assert oldest["payload"] == {"n": 0} and oldest["command_status"] == "replied"
    assert oldest["command_result"] == {"ok": True}
    assert set(oldest) == {
        "id", "command", "payload", "correlation_id", "command_status", "received_at", "processed_at", "expires_at",
        "command_result",
    }  # fmt: skip
    second = admin_client.get(devices_url("t-1", "commands") + "?limit=1&offset=1").json()
    assert [c["correlation_id"] for c in second["results"]] == ["c1"] and second["next"]


def test_sent_command_appears_in_history(admin_client, device):
    admin_client.post(devices_url("t-1", "commands"), {"command": "reboot"}, content_type="application/json")
    history = admin_client.get(devices_url("t-1", "commands")).json()
    assert history["count"] == 1 and history["results"][0]["command"] == "reboot"


def test_commands_permissions(make_user, client, device):
    client.force_login(make_user("view_thermometerdevice", "add_thermometerdevice"))
    send = lambda: client.post(  # noqa: E731
        devices_url("t-1", "commands"), {"command": "reboot"}, content_type="application/json"
    )
    assert send().status_code == 403
    assert client.get(devices_url("t-1", "commands")).status_code == 403  # needs view on messages too
    assert not ThermometerMessage.objects.exists()

    client.force_login(make_user("view_thermometerdevice", "view_thermometermessage", username="bob"))
    assert client.get(devices_url("t-1", "commands")).status_code == 200
    assert send().status_code == 403

    client.force_login(make_user("change_thermometerdevice", username="carol"))
    assert send().status_code == 202


# --- The readings endpoint -------------------------------------------------------------------------------------


def test_readings_list_paginated_newest_first(admin_client, device):
    add_readings(device, 150)
    page = admin_client.get(readings_url()).json()
    assert page["count"] == 150 and len(page["results"]) == 100 and page["next"]
    assert page["results"][0]["uptime"] == 149
    small = admin_client.get(readings_url() + "?limit=10&offset=10").json()
    assert [r["uptime"] for r in small["results"]] == list(range(139, 129, -1))
    capped = admin_client.get(readings_url() + "?limit=5000").json()
    assert len(capped["results"]) == 150  # at most 1000 per page


def test_readings_list_is_read_only(admin_client, device):
    response = admin_client.post(
        readings_url(), {"device": "t-1", "timestamp": "2025-01-01T00:00:00Z"}, content_type="application/json"
    )
    assert response.status_code == 405
    reading = ThermometerReading.objects.create(device=device, temperature=1.0)
    assert admin_client.get(reverse("thermometer-reading-detail", args=[reading.pk])).json()["temperature"] == 1.0
    assert admin_client.delete(reverse("thermometer-reading-detail", args=[reading.pk])).status_code == 405


def test_readings_filters(admin_client, device):
    other = ThermometerDevice.objects.create(device_id="t-2")
    add_readings(device, 10, step=timedelta(hours=1))
    add_readings(other, 3, step=timedelta(hours=1))
    uptimes = lambda query: [r["uptime"] for r in admin_client.get(readings_url() + query).json()["results"]]  # noqa: E731
    assert len(uptimes("")) == 13
    assert uptimes("?device=t-2") == [2, 1, 0]
    assert uptimes("?device=t-1&since=2025-01-01T15:00:00Z") == [9, 8, 7, 6, 5, 4, 3]
    assert uptimes("?device=t-1&until=2025-01-01T14:00:00Z") == [1, 0]
    assert uptimes("?device=t-1&since=2025-01-01T13:00:00Z&until=2025-01-01T15:00:00Z") == [2, 1]
    # An offset other than UTC: 14:00+01:00 is 13:00Z. ("+" must be percent-encoded in a query string.)
    assert uptimes("?device=t-1&until=2025-01-01T14:00:00%2B01:00") == [0]
    assert uptimes("?device=nobody") == []


@pytest.mark.parametrize("query", ["since=yesterday", "until=2025-13-40T00:00:00Z", "since=2025-01-01T14:00:00 1"])
def test_readings_bad_dates_are_400_naming_the_format(admin_client, device, query):
    response = admin_client.get(readings_url() + "?" + query)
    assert response.status_code == 400
    assert response.json() == {
        query.split("=")[0]: [
            "Enter an ISO 8601 time, e.g. 2026-11-29T10:30:00Z or 2026-11-29T10:30:00+01:00 (in a URL, write + "
            "as %2B); a time without an offset is UTC."
        ]
    }


def test_an_unencoded_plus_in_an_offset_is_understood(admin_client, device):
    add_readings(device, 10, step=timedelta(hours=1))
    uptimes = lambda query: [r["uptime"] for r in admin_client.get(readings_url() + query).json()["results"]]  # noqa: E731
    # curl "...?until=2025-01-01T14:00:00+01:00" sends the "+" raw, which a query string decodes to a space.
    assert uptimes("?device=t-1&until=2025-01-01T14:00:00+01:00") == [0]
    assert uptimes("?device=t-1&since=2025-01-01T20:00:00+00:00") == [9, 8]
    assert uptimes("?device=t-1&since=2025-01-01T20:00:00.000+0000") == [9, 8]


def test_readings_ordering(admin_client, device):
    add_readings(device, 3)
    ascending = admin_client.get(readings_url() + "?ordering=timestamp").json()["results"]
    assert [r["uptime"] for r in ascending] == [0, 1, 2]


@pytest.mark.parametrize(
    ("url", "query", "accepted"),
    [
        (readings_url, "?ordering=temperature", "timestamp, received_at"),
        (readings_url, "?ordering=-timestamp,nope", "timestamp, received_at"),
        (devices_url, "?ordering=secret", "device_id, name, status, battery_level, last_seen, created_at"),
    ],
)
def test_an_unknown_ordering_is_refused_naming_the_accepted_fields(admin_client, device, url, query, accepted):
    response = admin_client.get(url() + query)
    assert response.status_code == 400
    [message] = response.json()["ordering"]
    assert message.startswith("Cannot order by ") and f"order by one of {accepted} " in message


def test_timestamps_read_the_same_in_json_and_csv(admin_client, device):
    add_readings(device, 1, start=datetime(2025, 1, 1, 12, 0, 0, 250000, tzinfo=UTC))
    from_json = admin_client.get(readings_url()).json()["results"][0]
    response = admin_client.get(readings_url() + "?format=csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert from_json["timestamp"] == rows[0]["timestamp"] == "2025-01-01T12:00:00.250000Z"
    assert from_json["received_at"] == rows[0]["received_at"] and rows[0]["received_at"].endswith("Z")


def test_a_format_an_endpoint_does_not_render_is_named_with_those_it_does(admin_client, device):
    response = admin_client.get(devices_url() + "?format=csv")
    assert response.status_code == 404
    assert response.json()["detail"] == "No format 'csv' here: this endpoint renders json, api (?format=...)."
    assert admin_client.get(devices_url() + "?format=json").status_code == 200
    assert admin_client.get(readings_url() + "?format=csv").status_code == 200


# --- The API root and what is not there ----------------------------------------------------------------------


def test_the_api_root_lists_the_types_the_user_may_view(as_user, admin_client):
    body = admin_client.get("/api/").json()
    names = [entry["name"] for entry in body["types"]]
    assert names == sorted(names) and {"thermometer", "hygrometer", "weatherstation"} <= set(names)
    thermometer = next(entry for entry in body["types"] if entry["name"] == "thermometer")
    assert thermometer == {
        "name": "thermometer",
        "verbose_name": "Test thermometer",
        "readings": {"temperature": "°C", "uptime": "s", "door_open": "", "label": ""},
        "state_fields": ["mode", "setpoint"],
        "commands": ["reboot", "set_mode"],
        "devices_url": "http://testserver/api/thermometer/devices/",
        "readings_url": "http://testserver/api/thermometer/readings/",
    }
    assert body["schema"] == "http://testserver/api/schema/" and body["docs"] == "http://testserver/api/docs/"
    limited = as_user("view_hygrometerdevice").get("/api/").json()
    assert [entry["name"] for entry in limited["types"]] == ["hygrometer"]


def test_unknown_paths_under_the_api_are_json_404s(admin_client):
    response = admin_client.get("/api/ghost/devices/")
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    detail = response.json()["detail"]
    assert detail.startswith("Unknown device type 'ghost'. Known types: ") and "thermometer" in detail
    assert response.json()["api_root"] == "http://testserver/api/"
    known_type = admin_client.get("/api/thermometer/")
    assert known_type.status_code == 404 and "<type>/devices/" in known_type.json()["detail"]
    assert admin_client.get("/api/thermometer/devices/nobody/").json() == {
        "detail": "No ThermometerDevice matches the given query."
    }
    anonymous = Client().get("/api/ghost/devices/")
    assert anonymous.status_code == 404 and anonymous.json()["detail"] == "Unknown device type 'ghost'."
    assert admin_client.get("/api/schema/").status_code == 200  # still served


def test_a_type_without_commands_has_no_commands_endpoint(admin_client):
    from hubserver.devicetypes.models import EnergyMeterDevice

    EnergyMeterDevice.objects.create(device_id="m-1")
    with pytest.raises(NoReverseMatch):
        reverse("energymeter-device-commands", args=["m-1"])
    assert admin_client.get("/api/energymeter/devices/m-1/commands/").status_code == 404
    assert admin_client.get("/api/energymeter/devices/m-1/readings/").status_code == 200
    paths = admin_client.get("/api/schema/?format=json").json()["paths"]
    assert not any(path.startswith("/api/energymeter/") and "commands" in path for path in paths)
    assert "/api/smartplug/devices/{device_id}/commands/" in paths


def test_readings_csv_export(admin_client, device):
    add_readings(device, 150, label="a,b")  # more than one page: the export is not paginated
    for response in (
        admin_client.get(readings_url() + "?format=csv&device=t-1"),
        admin_client.get(readings_url() + "?device=t-1", HTTP_ACCEPT="text/csv"),
    ):
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/csv")
        assert 'filename="thermometer-readings.csv"' in response["Content-Disposition"]
        rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert rows[0] == ["id", "device", "timestamp", "received_at", "temperature", "uptime", "door_open", "label"]
        assert len(rows) == 151
        newest = dict(zip(rows[0], rows[1], strict=True))
        assert newest["device"] == "t-1" and newest["uptime"] == "149" and newest["label"] == "a,b"
        assert datetime.fromisoformat(newest["timestamp"]) == T0 + timedelta(minutes=149)
        assert newest["door_open"] == ""


def test_readings_csv_empty_has_header(admin_client):
    response = admin_client.get(readings_url() + "?format=csv")
    assert (
        b"".join(response.streaming_content).decode().strip() == "id,device,timestamp,received_at,temperature,"
        "uptime,door_open,label"
    )


def test_readings_csv_errors_stay_json(admin_client):
    response = admin_client.get(readings_url() + "?format=csv&since=nonsense")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert "since" in response.json()


def test_readings_permissions(make_user, client, device):
    client.force_login(make_user("view_thermometerdevice"))
    assert client.get(readings_url()).status_code == 403
    client.force_login(make_user("view_thermometerreading", username="bob"))
    assert client.get(readings_url()).status_code == 200
    assert client.get(readings_url() + "?format=csv").status_code == 200


# --- Browsable API ---------------------------------------------------------------------------------------------


def test_browsable_api_pages(admin_client, device):
    add_readings(device, 1)
    for url in (
        devices_url(),
        devices_url("t-1"),
        devices_url("t-1", "readings"),
        devices_url("t-1", "commands"),
        readings_url(),
    ):
        response = admin_client.get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith("text/html")


def test_options_describe_each_actions_body(admin_client, device):
    commands = admin_client.options(devices_url("t-1", "commands")).json()
    assert set(commands["actions"]["POST"]) == {"command", "payload"}
    devices = admin_client.options(devices_url()).json()
    assert "device_id" in devices["actions"]["POST"] and "api_key" not in devices["actions"]["POST"]
