"""``POST /iot/devices/<type>/<id>/data/`` and ``status/``: devices without MQTT, authenticated by their API
key, through the same MessageRouter as MQTT, against an in-process hub and real rows."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from hubserver.views import ingest
from tests.conftest import provision_device
from tests.testapp.models import (
    HygrometerMessage,
    HygrometerReading,
    ThermometerDevice,
    ThermometerMessage,
    ThermometerReading,
)

pytestmark = pytest.mark.django_db(transaction=True)

MAX_PAYLOAD = 1024


@pytest.fixture
def hub_settings_override():
    return {"MAX_PAYLOAD_SIZE": MAX_PAYLOAD}


@pytest.fixture
async def engine(hub):
    """The in-process hub (``running_hub()`` returns it, as under ``hubserver run``)."""
    ingest.stats.clear()
    return hub


def url(type_name, device_id, kind="data"):
    return f"/iot/devices/{type_name}/{device_id}/{kind}/"


async def send(path, payload, key=None, header="authorization", client=None, **extra):
    client = client or AsyncClient(enforce_csrf_checks=True)
    headers = {}
    if key is not None:
        headers = {"Authorization": f"ApiKey {key}"} if header == "authorization" else {"X-Api-Key": key}
    body = json.dumps(payload) if isinstance(payload, dict) else payload
    return await client.post(path, body, content_type="application/json", headers=headers, **extra)


@database_sync_to_async
def rows(model, **filters):
    return list(model.objects.filter(**filters).order_by("pk").values())


@database_sync_to_async
def update(model, device_id, **fields):
    model.objects.filter(device_id=device_id).update(**fields)


async def test_data_is_stored_as_reading_and_message(engine):
    _, creds = await provision_device("thermometer", "t-1")
    response = await send(url("thermometer", "t-1"), {"temperature": 21.5, "uptime": 10}, creds["api_key"])
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["stored"] is True and body["status"] == "completed" and body["error"] == ""
    assert body["readings"] == {"temperature": 21.5, "uptime": 10}
    readings = await rows(ThermometerReading)
    assert [(r["temperature"], r["uptime"], r["id"]) for r in readings] == [(21.5, 10, body["reading_id"])]
    messages = await rows(ThermometerMessage)
    assert [(m["topic"], m["processing_status"], m["id"]) for m in messages] == [
        ("things/thermometer/t-1/data", "completed", body["message_id"])
    ]
    device = (await rows(ThermometerDevice, device_id="t-1"))[0]
    assert device["status"] == "online" and device["last_seen"] is not None  # any message is a heartbeat


async def test_x_api_key_header_and_type_name_spellings(engine):
    _, creds = await provision_device("hygrometer", "h-1")
    response = await send(url("Hygrometer", "h-1"), {"humidity": 40.0}, creds["api_key"], header="x-api-key")
    assert response.status_code == 202, response.content
    assert [m["topic"] for m in await rows(HygrometerMessage)] == ["things/hygrometer/h-1/data"]
    assert [r["humidity"] for r in await rows(HygrometerReading)] == [40.0]


async def test_an_unusable_payload_is_answered_400_and_kept_as_failed(engine):
    _, creds = await provision_device("thermometer", "t-1")
    response = await send(url("thermometer", "t-1"), b"{not json", creds["api_key"])
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["stored"] is True and body["status"] == "failed" and "invalid JSON" in body["error"]
    messages = await rows(ThermometerMessage)
    assert len(messages) == 1, "the audit trail keeps it"
    assert messages[0]["processing_status"] == "failed" and bytes(messages[0]["payload_raw"]) == b"{not json"
    assert await rows(ThermometerReading) == []
    response = await send(url("thermometer", "t-1"), {"temperature": "hot"}, creds["api_key"])
    assert response.status_code == 400 and response.json()["status"] == "failed"
    assert "temperature" in response.json()["error"]
    assert ingest.stats.snapshot() == {"data:failed": 2}


async def test_status_endpoint_updates_the_device(engine):
    _, creds = await provision_device("thermometer", "t-1")
    payload = {"status": "error", "battery_level": 55.0, "firmware_version": "1.2.3"}
    response = await send(url("thermometer", "t-1", "status"), payload, creds["api_key"])
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "completed" and body["device_status"] == "error"
    device = (await rows(ThermometerDevice, device_id="t-1"))[0]
    assert (device["status"], device["battery_level"], device["firmware_version"]) == ("error", 55.0, "1.2.3")
    assert [m["topic"] for m in await rows(ThermometerMessage)] == ["things/thermometer/t-1/status"]


async def test_missing_wrong_and_other_devices_keys_are_401(engine):
    _, creds = await provision_device("thermometer", "t-1")
    _, other = await provision_device("thermometer", "t-2")
    _, hygro = await provision_device("hygrometer", "h-1")
    path = url("thermometer", "t-1")
    for key, header in (
        (None, "authorization"),
        ("", "x-api-key"),
        ("wrong", "authorization"),
        (other["api_key"], "authorization"),
        (hygro["api_key"], "x-api-key"),
        (creds["mqtt_password"], "authorization"),  # the MQTT password is not the API key
    ):
        response = await send(path, {"temperature": 1.0}, key, header=header)
        assert response.status_code == 401, (key, response.content)
        assert response.json()["stored"] is False
        assert response["WWW-Authenticate"].startswith("ApiKey")
    response = await AsyncClient().post(
        path, "{}", content_type="application/json", headers={"Authorization": f"Bearer {creds['api_key']}"}
    )
    assert response.status_code == 401
    assert await rows(ThermometerMessage) == []


async def test_rotated_key_stops_working(engine):
    _, old = await provision_device("thermometer", "t-1")
    assert (await send(url("thermometer", "t-1"), {"temperature": 1.0}, old["api_key"])).status_code == 202
    _, new = await provision_device("thermometer", "t-1")  # provisioning again rotates the secrets
    assert (await send(url("thermometer", "t-1"), {"temperature": 1.0}, old["api_key"])).status_code == 401
    assert (await send(url("thermometer", "t-1"), {"temperature": 1.0}, new["api_key"])).status_code == 202


async def test_unknown_type_or_device_is_404(engine):
    _, creds = await provision_device("thermometer", "t-1")
    response = await send(url("nosuchtype", "t-1"), {"temperature": 1.0}, creds["api_key"])
    assert response.status_code == 404 and "unknown device type" in response.json()["error"]
    response = await send(url("thermometer", "ghost"), {"temperature": 1.0}, creds["api_key"])
    assert response.status_code == 404 and "unknown device" in response.json()["error"]
    response = await send(url("hygrometer", "t-1"), {"temperature": 1.0}, creds["api_key"])
    assert response.status_code == 404  # t-1 is a thermometer
    assert await rows(ThermometerMessage) == []


async def test_inactive_device_is_403_with_its_key_and_401_without(engine):
    _, creds = await provision_device("thermometer", "t-1")
    await update(ThermometerDevice, "t-1", is_active=False)
    response = await send(url("thermometer", "t-1"), {"temperature": 1.0}, creds["api_key"])
    assert response.status_code == 403, response.content
    response = await send(url("thermometer", "t-1"), {"temperature": 1.0}, "wrong")
    assert response.status_code == 401  # an unauthenticated caller does not learn the device's state
    assert await rows(ThermometerMessage) == []


async def test_oversize_payload_is_413_and_not_stored(engine):
    _, creds = await provision_device("thermometer", "t-1")
    big = json.dumps({"temperature": 1.0, "label": "x" * MAX_PAYLOAD})
    response = await send(url("thermometer", "t-1"), big, creds["api_key"])
    assert response.status_code == 413, response.content
    # checked before the key: an unauthenticated sender cannot make the hub verify a hash for a huge body
    response = await send(url("thermometer", "t-1"), big, "wrong")
    assert response.status_code == 413
    exact = json.dumps({"label": "x" * (MAX_PAYLOAD - len('{"label":""}'))}).replace(" ", "")
    assert len(exact) == MAX_PAYLOAD
    response = await send(url("thermometer", "t-1"), exact, creds["api_key"])
    assert response.status_code == 202, response.content
    assert len(await rows(ThermometerMessage)) == 1


async def test_without_an_engine_the_answer_is_503(transactional_db):
    _, creds = await provision_device("thermometer", "t-1")
    response = await send(url("thermometer", "t-1"), {"temperature": 1.0}, creds["api_key"])
    assert response.status_code == 503
    assert "hubserver run" in response.json()["error"]
    assert await rows(ThermometerMessage) == []


async def test_with_a_stopped_router_the_answer_is_503(engine):
    _, creds = await provision_device("thermometer", "t-1")
    await engine.router.stop()
    try:
        response = await send(url("thermometer", "t-1"), {"temperature": 1.0}, creds["api_key"])
        assert response.status_code == 503
    finally:
        await engine.router.start()


async def test_only_post_and_the_http_path_feeds_router_stats(engine):
    _, creds = await provision_device("thermometer", "t-1")
    assert (await AsyncClient().get(url("thermometer", "t-1"))).status_code == 405
    before = engine.router.stats()
    await send(url("thermometer", "t-1"), {"temperature": 1.0}, creds["api_key"])
    await send(url("thermometer", "t-1"), b"[]", creds["api_key"])
    after = engine.router.stats()
    assert after["received"] - before["received"] == 2
    assert after["stored"] - before["stored"] == 2
    assert after["failed"] - before["failed"] == 1


async def test_device_created_by_another_process_after_a_refusal_is_accepted(engine):
    # The router caches "unknown device" for a while; a row created behind its back (no signal in this
    # process) must still be accepted once the view has found it and verified its key.
    result = await engine.router.route("data", "thermometer", "late", b"{}")
    assert result.stored is False and result.reason == "unknown_device"
    _, creds = await provision_device("thermometer", "late")
    engine.router.devices._negative[("thermometer", "late")] = ("unknown_device", float("inf"))  # stale entry
    response = await send(url("thermometer", "late"), {"temperature": 2.0}, creds["api_key"])
    assert response.status_code == 202, response.content
