"""Password guessing is throttled per username and per source address: after N failures within the window,
CONNECTs (and /iot/broker/auth/ checks) are refused without checking their secret, so guesses cost no
hashing; a device whose secret the hub already accepted still gets in; memory stays bounded."""

import json

import pytest
from django.test import Client as HttpClient
from django.test import override_settings

from hubserver import metrics
from hubserver.access import throttle
from hubserver.access.throttle import AuthThrottle, address_key
from hubserver.access.verifier import device_verifier, service_verifier
from tests.conftest import make_service_user, provision_device
from tests.mqtt import RawClient

pytestmark = pytest.mark.django_db(transaction=True)

NOT_AUTHORIZED = 5
LIMITS = {"AUTH_FAILURE_LIMIT": 3, "AUTH_ADDRESS_FAILURE_LIMIT": 1000, "AUTH_FAILURE_WINDOW": 600}


@pytest.fixture(autouse=True)
def _fresh():
    throttle.reset()
    device_verifier.clear()
    service_verifier.clear()
    yield
    throttle.reset()


@pytest.fixture
def hub_settings_override():
    return dict(LIMITS)


async def connack(hub, client_id, username, password):
    client = RawClient(hub.engine.port)
    try:
        code, _ = await client.connect(client_id, username, password)
    finally:
        if client.writer is not None:
            client.writer.close()
    return code


def series(name):
    """``{labels: value}`` of one metric family in the /metrics text."""
    found = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith(f"hubserver_{name}"):
            labels, _, value = line.partition(" ")
            found[labels[len(f"hubserver_{name}") :]] = float(value)
    return found


async def test_guessing_a_devices_password_is_refused_unchecked_after_the_limit(hub):
    _, creds = await provision_device("thermometer", "guessed")
    username = creds["mqtt_username"]
    checks = device_verifier.stats["checks"]
    for n in range(3):
        assert await connack(hub, username, username, f"guess-{n}") == NOT_AUTHORIZED
    assert device_verifier.stats["checks"] == checks + 3  # each guess was hashed
    for n in range(5):
        assert await connack(hub, username, username, f"more-{n}") == NOT_AUTHORIZED
    assert device_verifier.stats["checks"] == checks + 3  # ... and from now on none is
    # The right secret is refused too while the username is throttled: it was never accepted before.
    assert await connack(hub, username, username, creds["mqtt_password"]) == NOT_AUTHORIZED
    assert series("auth_throttled_total")['{reason="username",source="mqtt"}'] == 6
    assert series("auth_throttle_keys")['{table="username"}'] == 1


async def test_a_device_already_accepted_still_gets_in_while_its_username_is_throttled(hub):
    _, creds = await provision_device("thermometer", "known")
    username, password = creds["mqtt_username"], creds["mqtt_password"]
    assert await connack(hub, username, username, password) == 0
    for n in range(6):
        assert await connack(hub, username, username, f"guess-{n}") == NOT_AUTHORIZED
    checks = device_verifier.stats["checks"]
    assert await connack(hub, username, username, password) == 0  # from the cache: nothing hashed
    assert device_verifier.stats["checks"] == checks


async def test_a_source_address_spraying_usernames_is_throttled(hub):
    """Many usernames, one address: per address, the spray stops being checked; another device from the same
    address that never connected is refused until the window ends, one that did still gets in."""
    _, known = await provision_device("thermometer", "known")
    _, fresh = await provision_device("thermometer", "fresh")
    with override_settings(HUBSERVER={**LIMITS, "AUTH_ADDRESS_FAILURE_LIMIT": 5}):
        throttle.reset()
        assert await connack(hub, known["mqtt_username"], known["mqtt_username"], known["mqtt_password"]) == 0
        for n in range(5):
            assert await connack(hub, f"thermometer.nobody-{n}", f"thermometer.nobody-{n}", "x") == NOT_AUTHORIZED
        checks = service_verifier.stats["checks"]
        assert await connack(hub, "", "some-service-user", "guess") == NOT_AUTHORIZED
        assert service_verifier.stats["checks"] == checks  # no decoy hash either
        assert await connack(hub, fresh["mqtt_username"], fresh["mqtt_username"], fresh["mqtt_password"]) == 5
        assert await connack(hub, known["mqtt_username"], known["mqtt_username"], known["mqtt_password"]) == 0
        assert series("auth_throttled_total")['{reason="address",source="mqtt"}'] == 2


async def test_guessing_a_service_users_password_costs_no_hashing_after_the_limit(hub):
    await make_service_user("dashboard", "the-right-password")
    checks = service_verifier.stats["checks"]
    for n in range(3):
        assert await connack(hub, "", "dashboard", f"guess-{n}") == NOT_AUTHORIZED
    assert service_verifier.stats["checks"] == checks + 3
    assert await connack(hub, "", "dashboard", "the-right-password") == NOT_AUTHORIZED
    assert await connack(hub, "", "dashboard", "guess-again") == NOT_AUTHORIZED
    assert service_verifier.stats["checks"] == checks + 3


async def test_good_credentials_are_never_throttled(hub):
    devices = [await provision_device("thermometer", f"good-{n}") for n in range(5)]
    for _ in range(4):  # more successes than the limit: successes count for nothing
        for _, creds in devices:
            assert await connack(hub, creds["mqtt_username"], creds["mqtt_username"], creds["mqtt_password"]) == 0
    assert series("auth_throttle_keys") == {'{table="address"}': 0.0, '{table="username"}': 0.0}


async def test_a_zero_limit_turns_throttling_off(hub):
    _, creds = await provision_device("thermometer", "t-1")
    username = creds["mqtt_username"]
    with override_settings(HUBSERVER={**LIMITS, "AUTH_FAILURE_LIMIT": 0, "AUTH_ADDRESS_FAILURE_LIMIT": 0}):
        for n in range(6):
            assert await connack(hub, username, username, f"guess-{n}") == NOT_AUTHORIZED
        assert await connack(hub, username, username, creds["mqtt_password"]) == 0


def test_http_auth_checks_are_throttled_per_username_and_per_peerhost():
    from django.contrib.auth.models import Permission, User

    token = "t" * 32
    user = User.objects.create_user("dashboard", password="the-right-password")
    user.user_permissions.add(Permission.objects.get(codename="mqtt_service"))
    settings = {**LIMITS, "BROKERS": {"default": {"AUTH_BACKEND": True}}, "BROKER_AUTH_TOKEN": token}

    def auth(username, password, peerhost=None):
        body = {"username": username, "password": password}
        if peerhost:
            body["peerhost"] = peerhost
        response = HttpClient().post(
            "/iot/broker/auth/", json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
        return response.json()["result"]

    with override_settings(HUBSERVER=settings):
        for n in range(3):
            assert auth("dashboard", f"guess-{n}") == "deny"
        checks = service_verifier.stats["checks"]
        assert auth("dashboard", "the-right-password") == "deny"
        assert service_verifier.stats["checks"] == checks
        with override_settings(HUBSERVER={**settings, "AUTH_FAILURE_LIMIT": 100, "AUTH_ADDRESS_FAILURE_LIMIT": 2}):
            throttle.reset()
            assert auth("x1", "guess", "203.0.113.7") == "deny"
            assert auth("x2", "guess", "203.0.113.7") == "deny"
            assert auth("dashboard", "the-right-password", "203.0.113.7") == "deny"  # that address is throttled
            assert auth("dashboard", "the-right-password", "198.51.100.1") == "allow"  # another is not
            assert auth("dashboard", "the-right-password") == "allow"
    assert series("auth_throttled_total")['{reason="address",source="http"}'] == 1


# -- the throttle itself ------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_throttled_key_is_free_again_when_its_window_ends():
    clock = Clock()
    guard = AuthThrottle(limit=2, address_limit=0, window=60, clock=clock)
    guard.failed("dev", "10.0.0.1", "mqtt")
    clock.now += 59
    guard.failed("dev", "10.0.0.1", "mqtt")
    assert guard.throttled("dev", "10.0.0.1") == "username"
    assert guard.throttled("other", "10.0.0.1") is None  # address limit 0: off
    clock.now += 1.5  # 60 s after the first failure
    assert guard.throttled("dev", "10.0.0.1") is None


def test_memory_is_bounded_whatever_the_spray():
    guard = AuthThrottle(limit=3, address_limit=3, window=60, max_keys=100)
    for n in range(10_000):
        guard.failed(f"user-{n}", f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "mqtt")
    assert guard.snapshot()["keys"] == {"username": 100, "address": 100}
    assert guard.snapshot()["failures"] == {"mqtt": 10_000}


def test_the_shared_token_username_and_anonymous_count_per_address_only():
    guard = AuthThrottle(limit=1, address_limit=100, window=60)
    guard.failed("token", "10.0.0.1", "mqtt")
    guard.failed("", "10.0.0.1", "mqtt")
    assert guard.throttled("token", "10.0.0.2") is None
    assert guard.snapshot()["keys"] == {"username": 0, "address": 1}


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("fe80::1%eth0", "fe80::/64"),
        (None, None),
    ],
)
def test_ipv6_addresses_count_per_64(address, key):
    assert address_key(address) == key


async def test_wrong_api_keys_are_throttled_per_device_and_a_known_key_still_works(hub):
    from django.test import AsyncClient

    _, creds = await provision_device("thermometer", "ingested")
    path = "/iot/devices/thermometer/ingested/data/"
    http = AsyncClient()

    async def send(key):
        return await http.post(
            path, json.dumps({"temperature": 1.0}), content_type="application/json", headers={"X-Api-Key": key}
        )

    assert (await send(creds["api_key"])).status_code == 202  # accepted once: remembered
    for n in range(3):
        assert (await send(f"wrong-{n}")).status_code == 401
    checks = device_verifier.stats["checks"]
    response = await send("wrong-again")
    assert response.status_code == 429 and response["Retry-After"] == "600"
    assert device_verifier.stats["checks"] == checks
    assert (await send(creds["api_key"])).status_code == 202
    assert series("auth_throttled_total")['{reason="username",source="ingest"}'] == 1


async def test_refused_connects_are_logged_once_a_minute_per_address(hub, caplog, monkeypatch):
    import logging

    from hubserver.plugins import auth as auth_plugin

    from hubserver.routing.throttle import ThrottledLog

    monkeypatch.setattr(auth_plugin, "_refusals", ThrottledLog(auth_plugin.logger))
    caplog.set_level(logging.INFO, logger="hubserver.mqtt.auth")
    for n in range(8):
        assert await connack(hub, f"thermometer.nobody-{n}", f"thermometer.nobody-{n}", "x") == NOT_AUTHORIZED
    lines = [r.getMessage() for r in caplog.records if "bad credentials" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0]
    assert throttle.snapshot()["failures"] == {"mqtt": 8}  # every refusal counted, one logged
