"""``POST /iot/broker/auth/`` and ``/iot/broker/acl/`` (EMQX's HTTP authenticator and
authorizer): the HTTP adapter an external broker (EMQX) calls. Every decision is compared with the access
layer's own functions: one implementation."""

import json

import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client, override_settings

from hubserver import signals
from hubserver.access import (
    ANONYMOUS,
    authenticate_mqtt_sync,
    can_publish,
    can_subscribe,
    provision,
    throttle,
)
from hubserver.routing.throttle import ThrottledLog
from hubserver.views import broker_auth
from tests.testapp.models import HygrometerDevice, ThermometerDevice

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = "/iot/broker/auth/"
ACL = "/iot/broker/acl/"
TOKEN = "a-broker-token-of-32-characters!"
ON = {"BROKERS": {"default": {"AUTH_BACKEND": True}}, "BROKER_AUTH_TOKEN": TOKEN}
HUB = {"TOPIC_PREFIX": "things", "ALLOW_ANONYMOUS": False, "ANONYMOUS_DENY": ["private/#", "+/secret"], **ON}


@pytest.fixture(autouse=True)
def _clean():
    broker_auth.clear_service_cache()
    broker_auth.stats.clear()
    throttle.reset()
    with override_settings(HUBSERVER=dict(HUB)):
        yield
    broker_auth.clear_service_cache()


def device(model=ThermometerDevice, device_id="t-1", **fields):
    row, _ = model.objects.get_or_create(device_id=device_id, defaults=fields)
    return row, provision(row)


def service_user(username="dashboard", password="s3cret-pass", permitted=True, **fields):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password=password, **fields)
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="mqtt_service"))
    return user


def post(path, body, client=None, **extra):
    client = client or Client(enforce_csrf_checks=True)  # the views are CSRF-exempt: the broker has no token
    data = json.dumps(body) if not isinstance(body, (bytes, str)) else body
    extra.setdefault("HTTP_AUTHORIZATION", f"Bearer {TOKEN}")
    return client.post(path, data, content_type="application/json", **extra)


def result(response):
    assert response.status_code == 200, response.content
    return response.json()["result"]


def auth(username, password, **extra):
    body = {"username": username, "password": password}
    body.update(extra)
    return result(post(AUTH, body))


def acl(username, topic, action):
    return result(post(ACL, {"username": username, "topic": topic, "action": action}))


# -- auth -------------------------------------------------------------------------------------------------


def test_auth_matrix_matches_authenticate_mqtt_sync():
    _, creds = device()
    inactive, inactive_creds = device(device_id="t-off")
    ThermometerDevice.objects.filter(pk=inactive.pk).update(is_active=False)
    _, other = device(HygrometerDevice, "h-1")
    service_user("dashboard", "s3cret-pass")
    service_user("nobody", "s3cret-pass", permitted=False)
    service_user("gone", "s3cret-pass", is_active=False)
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=service_user("bot", "x-pass")).key
    username, password = creds["mqtt_username"], creds["mqtt_password"]

    cases = [
        ({"username": username, "password": password}, "allow"),
        ({"username": username, "password": password, "clientid": username}, "allow"),
        ({"username": username, "password": password, "client_id": username}, "allow"),
        ({"username": username, "password": password, "clientid": ""}, "allow"),
        ({"username": username, "password": password, "clientid": "someone-else"}, "deny"),
        ({"username": username, "password": "wrong"}, "deny"),
        ({"username": username, "password": other["mqtt_password"]}, "deny"),
        ({"username": username, "password": ""}, "deny"),
        ({"username": "thermometer.ghost", "password": password}, "deny"),
        ({"username": inactive_creds["mqtt_username"], "password": inactive_creds["mqtt_password"]}, "deny"),
        ({"username": "dashboard", "password": "s3cret-pass"}, "allow"),
        ({"username": "dashboard", "password": "s3cret-pass", "clientid": username}, "deny"),
        ({"username": "dashboard", "password": "wrong"}, "deny"),
        ({"username": "nobody", "password": "s3cret-pass"}, "deny"),
        ({"username": "gone", "password": "s3cret-pass"}, "deny"),
        ({"username": "unknown-user", "password": "s3cret-pass"}, "deny"),
        ({"username": "token", "password": token}, "allow"),
        ({"username": "token", "password": "not-a-token"}, "deny"),
        ({"username": "", "password": ""}, "deny"),  # anonymous, ALLOW_ANONYMOUS is off
    ]
    for body, expected in cases:
        client_id = body.get("clientid", body.get("client_id"))
        direct = authenticate_mqtt_sync(body["username"], body["password"], client_id=client_id)
        assert (direct is not None) == (expected == "allow"), body
        assert result(post(AUTH, body)) == expected, body


def test_allowed_answer_is_not_superuser_and_denied_answer_is_plain_deny():
    _, creds = device()
    allowed = post(AUTH, {"username": creds["mqtt_username"], "password": creds["mqtt_password"]}).json()
    assert allowed == {"result": "allow", "is_superuser": False}
    assert post(AUTH, {"username": creds["mqtt_username"], "password": "x"}).json() == {"result": "deny"}


def test_anonymous_follows_allow_anonymous():
    assert auth("", "") == "deny"
    assert post(AUTH, {}).json() == {"result": "deny"}
    with override_settings(HUBSERVER={**HUB, "ALLOW_ANONYMOUS": True}):
        assert auth("", "") == "allow"
        assert result(post(AUTH, {})) == "allow"
        assert result(post(AUTH, {"username": None, "password": None})) == "allow"


def test_form_encoded_bodies_are_accepted():
    _, creds = device()
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    response = Client().post(AUTH, {"username": creds["mqtt_username"], "password": creds["mqtt_password"]}, **bearer)
    assert result(response) == "allow"
    response = Client().post(AUTH, {"username": creds["mqtt_username"], "password": "nope"}, **bearer)
    assert result(response) == "deny"
    response = Client().post(
        ACL, {"username": creds["mqtt_username"], "topic": "things/thermometer/t-1/data", "action": "pub"}, **bearer
    )
    assert result(response) == "allow"


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", json.dumps({"username": 5, "password": "x"})],
)
def test_malformed_bodies_are_denied_with_200(body):
    assert post(AUTH, body).json() == {"result": "deny"}
    assert post(ACL, body).json() == {"result": "deny"}
    stats = broker_auth.stats.snapshot()
    assert stats["auth_malformed"] == 1 and stats["acl_malformed"] == 1


def test_only_post_is_allowed():
    assert Client().get(AUTH).status_code == 405
    assert Client().get(ACL).status_code == 405


def test_the_endpoints_are_off_unless_a_broker_entry_enables_auth_backend():
    _, creds = device()
    body = {"username": creds["mqtt_username"], "password": creds["mqtt_password"]}
    for settings in ({}, {"BROKER_AUTH_TOKEN": TOKEN}, {"BROKERS": {"default": {"AUTH_BACKEND": False}}}):
        with override_settings(HUBSERVER=settings):
            assert post(AUTH, body).status_code == 404
            assert post(ACL, {"username": "x", "topic": "t", "action": "pub"}).status_code == 404
            assert Client().get(AUTH).status_code == 404
    with override_settings(HUBSERVER={"BROKERS": {"emqx": {"HOST": "emqx", "AUTH_BACKEND": True}}, **ON}):
        assert result(post(AUTH, body)) == "allow"
    assert broker_auth.stats.snapshot() == {"auth_allow": 1}


@pytest.mark.parametrize("token", ["", "   ", "short-token"])
def test_auth_backend_without_a_strong_enough_token_is_refused_at_start(token):
    from django.core.exceptions import ImproperlyConfigured

    from hubserver.conf import validate

    with pytest.raises(ImproperlyConfigured, match="BROKER_AUTH_TOKEN"):
        validate({"BROKERS": {"default": {"AUTH_BACKEND": True}}, "BROKER_AUTH_TOKEN": token})


@pytest.mark.slow  # runs the hubserver binary
def test_the_binary_refuses_to_start_with_the_endpoints_on_and_no_token(tmp_path):
    import subprocess

    from tests.test_run import BINARY, environment

    env = environment(tmp_path, HUBSERVER_BROKER_AUTH_BACKEND="1")
    out = subprocess.run([BINARY, "check"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "BROKER_AUTH_TOKEN" in out.stderr
    env["HUBSERVER_BROKER_AUTH_TOKEN"] = TOKEN
    assert subprocess.run([BINARY, "check"], env=env, capture_output=True, text=True, timeout=120).returncode == 0


def test_the_broker_token_is_always_required():
    _, creds = device()
    body = {"username": creds["mqtt_username"], "password": creds["mqtt_password"]}
    acl_body = {"username": creds["mqtt_username"], "topic": "things/thermometer/t-1/data", "action": "pub"}
    assert result(post(AUTH, body, HTTP_AUTHORIZATION="")) == "deny"
    assert result(post(AUTH, body, HTTP_AUTHORIZATION="Bearer wrong")) == "deny"
    assert result(post(AUTH, body, HTTP_AUTHORIZATION=f"Basic {TOKEN}")) == "deny"
    assert result(post(AUTH, body)) == "allow"
    assert result(post(ACL, acl_body, HTTP_AUTHORIZATION="")) == "deny"
    assert result(post(ACL, acl_body)) == "allow"
    stats = broker_auth.stats.snapshot()
    assert stats["auth_bad_token"] == 3 and stats["acl_bad_token"] == 1


def test_a_successful_check_never_changes_the_devices_status():
    """A check is not a connection: the broker may still refuse the client (its ACL, a limit), and an
    attacker with a device's secret could otherwise mark it online at will."""
    row, creds = device()
    assert auth(creds["mqtt_username"], creds["mqtt_password"]) == "allow"
    row.refresh_from_db()
    assert row.status == "offline" and row.last_seen is None


async def test_a_successful_check_never_reaches_the_router_when_an_engine_runs(hub):
    connected = []

    def on_connected(sender, device, **kwargs):
        connected.append(device.device_id)

    signals.device_connected.connect(on_connected)
    try:
        _, creds = await _make_device("t-live")
        client = AsyncClient()
        with override_settings(HUBSERVER=HUB):  # the hub fixture set its own
            response = await client.post(
                AUTH,
                {"username": creds["mqtt_username"], "password": creds["mqtt_password"]},
                content_type="application/json",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        assert response.json()["result"] == "allow"
        await hub.router.flush()
        assert connected == []
        assert await _status("t-live") == "offline"
        assert hub.router.stats()["tracked_devices"] == 0
    finally:
        signals.device_connected.disconnect(on_connected)


@database_sync_to_async
def _make_device(device_id):
    return device(device_id=device_id)


@database_sync_to_async
def _status(device_id):
    return ThermometerDevice.objects.get(device_id=device_id).status


# -- acl --------------------------------------------------------------------------------------------------

TOPICS = [
    "things/thermometer/t-1/data",
    "things/thermometer/t-1/status",
    "things/thermometer/t-1/reply",
    "things/thermometer/t-1/cmd",
    "things/thermometer/t-2/data",
    "things/thermometer/t-2/cmd",
    "things/thermometer/+/data",
    "things/thermometer/t-1/+",
    "things/#",
    "things",
    "#",
    "+/x",
    "public/news",
    "public/#",
    "private/x",
    "a/secret",
    "$SYS/broker/uptime",
    "bad/#/filter",
]
ACTIONS = [("pub", can_publish), ("publish", can_publish), ("sub", can_subscribe), ("subscribe", can_subscribe)]


@pytest.mark.slow  # every device and service user against every topic
def test_acl_matrix_for_devices_and_service_users_matches_the_acl_functions():
    _, creds = device()
    _, other = device(HygrometerDevice, "h-1")
    service_user("dashboard", "s3cret-pass")
    principals = {
        creds["mqtt_username"]: authenticate_mqtt_sync(creds["mqtt_username"], creds["mqtt_password"]),
        other["mqtt_username"]: authenticate_mqtt_sync(other["mqtt_username"], other["mqtt_password"]),
        "dashboard": authenticate_mqtt_sync("dashboard", "s3cret-pass"),
    }
    assert all(principals.values())
    for username, principal in principals.items():
        for topic in [*TOPICS, "things/hygrometer/h-1/data", "things/hygrometer/h-1/cmd"]:
            for action, rule in ACTIONS:
                expected = "allow" if rule(principal, topic) else "deny"
                assert acl(username, topic, action) == expected, (username, topic, action)
    # spot checks of the rules themselves: own data/status publish, own cmd subscribe, nothing else
    device_username = creds["mqtt_username"]
    assert acl(device_username, "things/thermometer/t-1/data", "pub") == "allow"
    assert acl(device_username, "things/thermometer/t-1/status", "pub") == "allow"
    assert acl(device_username, "things/thermometer/t-1/cmd", "sub") == "allow"
    assert acl(device_username, "things/thermometer/t-1/cmd", "pub") == "deny"
    assert acl(device_username, "things/thermometer/t-2/data", "pub") == "deny"
    assert acl(device_username, "things/thermometer/t-2/cmd", "sub") == "deny"
    assert acl(device_username, "things/#", "sub") == "deny"
    assert acl("dashboard", "things/#", "sub") == "allow"
    assert acl("dashboard", "things/thermometer/t-1/cmd", "pub") == "deny"


def test_acl_for_devices_costs_no_query(django_assert_num_queries):
    _, creds = device()
    with django_assert_num_queries(0):
        assert acl(creds["mqtt_username"], "things/thermometer/t-1/data", "pub") == "allow"
        assert acl(creds["mqtt_username"], "things/thermometer/t-1/cmd", "subscribe") == "allow"
        assert acl("thermometer.never-provisioned", "things/thermometer/t-1/data", "pub") == "deny"


def test_acl_service_lookups_are_cached_briefly(django_assert_max_num_queries):
    user = service_user("dashboard", "s3cret-pass")
    assert acl("dashboard", "public/x", "pub") == "allow"
    with django_assert_max_num_queries(0):
        for _ in range(5):
            assert acl("dashboard", "public/x", "pub") == "allow"
    user.user_permissions.clear()
    broker_auth.clear_service_cache()  # what SERVICE_CACHE_SECONDS does on its own
    assert acl("dashboard", "public/x", "pub") == "deny"


@pytest.mark.slow  # hashes every user's password
def test_acl_denies_users_without_the_permission_unknown_users_and_inactive_users():
    service_user("nobody", "s3cret-pass", permitted=False)
    service_user("gone", "s3cret-pass", is_active=False)
    for username in ("nobody", "gone", "unknown-user", "thermometerx.t-1"):
        for topic in ("public/x", "things/thermometer/t-1/data", "#"):
            for action, _ in ACTIONS:
                assert acl(username, topic, action) == "deny", (username, topic, action)


def test_acl_token_username_is_a_service_client():
    assert acl("token", "public/x", "pub") == "allow"
    assert acl("token", "things/#", "sub") == "allow"
    assert acl("token", "things/thermometer/t-1/cmd", "pub") == "deny"


def test_acl_unknown_actions_and_missing_topics_are_denied():
    service_user("dashboard", "s3cret-pass")
    for body in (
        {"username": "dashboard", "topic": "public/x", "action": "all"},
        {"username": "dashboard", "topic": "public/x"},
        {"username": "dashboard", "topic": "", "action": "pub"},
        {"username": "dashboard", "action": "pub"},
    ):
        assert result(post(ACL, body)) == "deny", body


def test_acl_anonymous_refused_when_anonymous_is_off():
    for topic in ("public/news", "#"):
        for action, _ in ACTIONS:
            assert acl("", topic, action) == "deny"


@pytest.mark.slow  # a matrix of anonymous filters and topics
def test_acl_anonymous_matrix_matches_the_acl_functions_except_broad_filters():
    """An external broker has no delivery check (``can_receive``), so anonymous subscriptions that could
    match namespace or denied topics are refused over HTTP; everything else equals the ACL functions."""
    with override_settings(HUBSERVER={**HUB, "ALLOW_ANONYMOUS": True}):
        # can_subscribe accepts these, relying on can_receive at delivery: things/x, things/..., public/secret
        broad = {"#", "+/x", "public/#"}
        for topic in TOPICS:
            for action, rule in ACTIONS:
                answer = acl("", topic, action)
                if rule is can_subscribe and topic in broad:
                    assert can_subscribe(ANONYMOUS, topic) is True
                    assert answer == "deny", topic
                else:
                    assert answer == ("allow" if rule(ANONYMOUS, topic) else "deny"), (topic, action)
        assert acl("", "news/today", "sub") == "allow"
        assert acl("", "news/today/+", "sub") == "allow"  # 3 levels: cannot match things/... nor +/secret
        assert acl("", "news/#", "sub") == "deny"  # would receive news/secret
        assert acl("", "+/news", "sub") == "deny"  # would receive things/news
        assert acl("", "public/news", "pub") == "allow"
        assert acl("", "public/secret", "pub") == "deny"
        assert acl("", "things/thermometer/t-1/data", "pub") == "deny"


async def test_a_reconnect_storm_is_verified_in_parallel_not_one_after_another(monkeypatch):
    """Several CONNECTs asked at once through the ASGI application: their secrets are checked on the hashing
    threads side by side, not one after another."""
    import asyncio
    import threading
    import time

    from hubserver.access import verifier

    made = [await database_sync_to_async(device)(device_id=f"storm-{n}") for n in range(4)]
    real = verifier.CHECKS["argon2"]
    running, peak, lock = [0], [0], threading.Lock()

    def slow_check(stored_hash, secret):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.3)
            return real(stored_hash, secret)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setitem(verifier.CHECKS, "argon2", slow_check)
    verifier.device_verifier.clear()
    from channels.testing import HttpCommunicator
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()

    async def connect(credentials):
        body = json.dumps({"username": credentials["mqtt_username"], "password": credentials["mqtt_password"]})
        headers = [(b"host", b"localhost"), (b"content-type", b"application/json")]
        headers.append((b"authorization", f"Bearer {TOKEN}".encode()))
        communicator = HttpCommunicator(application, "POST", AUTH, body=body.encode(), headers=headers)
        response = await communicator.get_response(timeout=10)
        assert response["status"] == 200, response
        return json.loads(response["body"])["result"]

    answers = await asyncio.gather(*(connect(credentials) for _, credentials in made))
    assert answers == ["allow"] * 4
    assert peak[0] >= 2, "the checks ran one after another"


def test_requests_without_the_token_are_logged_once_a_minute_with_a_count(caplog, monkeypatch):
    monkeypatch.setattr(broker_auth, "_bad_token_log", ThrottledLog(broker_auth.logger))
    body = {"username": "x", "password": "y"}
    for _ in range(5):
        assert result(post(AUTH, body, HTTP_AUTHORIZATION="Bearer wrong")) == "deny"
    lines = [r.getMessage() for r in caplog.records if "without the broker token" in r.getMessage()]
    assert len(lines) == 1
    assert broker_auth.stats.snapshot()["auth_bad_token"] == 5
    broker_auth._bad_token_log.interval = 0  # a minute later: the next line says how many it kept quiet about
    assert result(post(AUTH, body, HTTP_AUTHORIZATION="Bearer wrong")) == "deny"
    lines = [r.getMessage() for r in caplog.records if "without the broker token" in r.getMessage()]
    assert len(lines) == 2 and "and 4 more like it" in lines[1]
