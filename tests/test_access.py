"""The access layer: hashing, the verifier, authentication, the topic ACL, provisioning and revocation."""

import asyncio
import threading
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token

from hubserver.access import (
    ANONYMOUS,
    HUB,
    AnonymousPrincipal,
    DevicePrincipal,
    ServicePrincipal,
    authenticate_mqtt,
    authenticate_mqtt_sync,
    can_publish,
    can_receive,
    can_subscribe,
    connect_revocation_signals,
    connection_info,
    credentials_revoked,
    filter_within,
    hash_secret,
    hashing,
    provision,
    provision_many,
    topic_matches,
    verifier,
    verify_secret,
)
from hubserver.access import authenticate as authenticate_module
from hubserver.access.provisioning import aprovision
from hubserver.access.topics import is_valid_filter, is_valid_topic
from hubserver.exceptions import ValidationError
from hubserver.signals import device_provisioned
from tests.testapp.devices import Hygrometer, Thermometer
from tests.testapp.models import HygrometerDevice, ThermometerDevice

HUB_SETTINGS = {"TOPIC_PREFIX": "things", "ALLOW_ANONYMOUS": False, "ANONYMOUS_DENY": ["private/#", "+/secret"]}


@pytest.fixture(autouse=True)
def _access_setup(settings):
    connect_revocation_signals()
    settings.HUBSERVER = dict(HUB_SETTINGS)
    verifier.device_verifier.clear()
    verifier.service_verifier.clear()
    yield
    verifier.device_verifier.clear()
    verifier.service_verifier.clear()


@pytest.fixture(autouse=True)
def _same_connection(request, monkeypatch):
    """``database_sync_to_async`` closes stale connections around each call, which would close the
    connection holding a test's transaction; plain ``sync_to_async`` keeps it. Tests marked
    ``django_db(transaction=True)`` exercise the real wrapper."""
    marker = request.node.get_closest_marker("django_db")
    if not (marker and marker.kwargs.get("transaction")):
        monkeypatch.setattr(authenticate_module, "database_sync_to_async", sync_to_async)


@pytest.fixture
def allow_anonymous(settings):
    settings.HUBSERVER = {**HUB_SETTINGS, "ALLOW_ANONYMOUS": True}


@pytest.fixture
def revoked():
    calls = []

    def receiver(sender, **kwargs):
        calls.append({"sender": sender, **kwargs})

    credentials_revoked.connect(receiver)
    yield calls
    credentials_revoked.disconnect(receiver)


@pytest.fixture
def provisioned_device(db):
    device = ThermometerDevice(device_id="kitchen-1", name="Kitchen")
    credentials = provision(device)
    return device, credentials


def authenticate(username, password, client_id=None):
    """The async entry point, run from a sync test so it shares the test's database transaction."""
    return async_to_sync(authenticate_mqtt)(username, password, client_id)


def service_user(username="dashboard", password="s3cret-pw", *, permitted=True, **extra):
    user = User.objects.create_user(username=username, password=password, **extra)
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="mqtt_service", content_type__app_label="hubserver"))
    return user


# -- hashing ---------------------------------------------------------------------------------------------


def test_hash_is_argon2id_with_the_machine_secret_profile():
    secret = hashing.generate_secret()
    stored = hash_secret(secret)
    assert stored.startswith(f"$argon2id$v=19$m={hashing.MEMORY_COST_KIB},t={hashing.TIME_COST},p=1$")
    assert verify_secret(stored, secret)
    assert len(secret) >= 43  # 32 bytes, base64


@pytest.mark.parametrize("stored", ["", None, "plaintext", "$argon2id$garbage", "pbkdf2_sha256$1$x$y"])
def test_verify_secret_never_raises(stored):
    assert verify_secret(stored, "anything") is False


def test_verify_secret_mismatch_and_odd_input():
    stored = hash_secret("right")
    assert verify_secret(stored, "wrong") is False
    assert verify_secret(stored, None) is False
    assert verify_secret(stored, "nul\x00byte") is False


# -- verifier --------------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = verifier.CHECKS["argon2"]

    def check(stored, secret):
        calls.append(threading.get_ident())
        return real(stored, secret)

    monkeypatch.setitem(verifier.CHECKS, "argon2", check)
    return calls


async def test_verifier_cache_hit_skips_argon2_and_a_changed_hash_misses(counted):
    v = verifier.Verifier(concurrency=2)
    stored = hash_secret("pw")
    assert await v.verify(stored, "pw", username="t.1")
    assert await v.verify(stored, "pw", username="t.1")
    assert len(counted) == 1
    # Same secret, new hash (a rotation somewhere, maybe in another process): not a hit.
    assert await v.verify(hash_secret("pw"), "pw", username="t.1")
    assert len(counted) == 2
    # The loop thread never hashes.
    assert threading.get_ident() not in counted


async def test_verifier_does_not_cache_failures(counted):
    v = verifier.Verifier(concurrency=1)
    stored = hash_secret("pw")
    assert not await v.verify(stored, "guess")
    assert not await v.verify(stored, "guess")
    assert len(counted) == 2
    assert len(v) == 0


async def test_verifier_invalidate_by_username(counted):
    v = verifier.Verifier(concurrency=1)
    stored = hash_secret("pw")
    await v.verify(stored, "pw", username="t.1")
    assert v.invalidate("t.1") == 1
    await v.verify(stored, "pw", username="t.1")
    assert len(counted) == 2


def test_verifier_sync_path_shares_the_cache(counted):
    v = verifier.Verifier(concurrency=1)
    stored = hash_secret("pw")
    assert v.verify_sync(stored, "pw", username="t.1")
    assert async_to_sync(v.verify)(stored, "pw", "t.1")
    assert len(counted) == 1


def test_verifier_cache_is_bounded(counted):
    v = verifier.Verifier(concurrency=1, max_entries=2)
    for index in range(3):
        assert v.verify_sync(hash_secret(f"pw{index}"), f"pw{index}", username=f"t.{index}")
    assert len(v) == 2
    assert v.invalidate("t.0") == 0  # the oldest was evicted, index included
    assert v.invalidate("t.2") == 1


async def test_verifier_bounds_concurrent_checks(monkeypatch):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow_check(stored, secret):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return True

    monkeypatch.setitem(verifier.CHECKS, "argon2", slow_check)
    v = verifier.Verifier(concurrency=2)
    results = await asyncio.gather(*(v.verify("$argon2id$x", f"pw{i}", username=f"t.{i}") for i in range(12)))
    assert all(results)
    assert 1 <= state["max"] <= 2


def test_device_secrets_hash_on_one_thread_more_than_the_cores():
    assert verifier.device_verifier.concurrency == verifier.default_concurrency() + 1
    assert verifier.service_verifier.concurrency == 1


async def test_verifier_keeps_its_threads_fed_and_cancelled_clients_cost_no_hashing(monkeypatch):
    started = []
    release = threading.Event()

    def blocking_check(stored, secret):
        started.append(secret)
        release.wait(10)
        return True

    monkeypatch.setitem(verifier.CHECKS, "argon2", blocking_check)
    v = verifier.Verifier(concurrency=1)
    tasks = [asyncio.ensure_future(v.verify("$argon2id$x", f"pw{i}", username=f"t.{i}")) for i in range(40)]
    await asyncio.sleep(0.1)
    assert started == ["pw0"]  # one thread: one hash at a time
    # More than one job per thread is already handed to the pool (the thread never waits for the loop),
    # but not the whole storm: the rest waits on the loop.
    assert 1 < v._pool()._work_queue.qsize() < 39
    for task in tasks[1:20]:
        task.cancel()  # clients gone: queued in the pool (1-15) or on the loop (16-19)
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert results[0] is True and results[20:] == [True] * 20
    assert all(isinstance(r, asyncio.CancelledError) for r in results[1:20])
    assert started == ["pw0", *(f"pw{i}" for i in range(20, 40))]  # nobody hashed for a cancelled client
    v.shutdown()


# -- authentication --------------------------------------------------------------------------------------


# -- authentication --------------------------------------------------------------------------------------


def test_device_authenticates_with_its_password(provisioned_device):
    device, credentials = provisioned_device
    principal = authenticate(credentials["mqtt_username"], credentials["mqtt_password"])
    assert principal == DevicePrincipal(
        type_name="thermometer", device_id="kitchen-1", device_pk=device.pk, mqtt_username="thermometer.kitchen-1"
    )
    assert authenticate_mqtt_sync(credentials["mqtt_username"], credentials["mqtt_password"]) == principal


def test_wrong_password_unknown_user_and_inactive_device_are_refused(provisioned_device):
    device, credentials = provisioned_device
    assert authenticate(credentials["mqtt_username"], "wrong") is None
    assert authenticate(credentials["mqtt_username"], credentials["api_key"]) is None  # the API key is no password
    assert authenticate("thermometer.nobody", credentials["mqtt_password"]) is None
    assert authenticate("hygrometer.kitchen-1", credentials["mqtt_password"]) is None
    device.is_active = False
    device.save()
    assert authenticate(credentials["mqtt_username"], credentials["mqtt_password"]) is None
    assert authenticate_mqtt_sync(credentials["mqtt_username"], credentials["mqtt_password"]) is None


@pytest.mark.parametrize(
    "username", ["thermometer.", ".kitchen-1", "thermometer", "Thermometer.kitchen-1", "nosuchtype.kitchen-1"]
)
def test_malformed_usernames_are_refused(provisioned_device, username):
    _, credentials = provisioned_device
    assert authenticate(username, credentials["mqtt_password"]) is None
    assert authenticate_mqtt_sync(username, credentials["mqtt_password"]) is None


def test_missing_or_undecodable_password_is_refused(provisioned_device):
    _, credentials = provisioned_device
    assert authenticate(credentials["mqtt_username"], None) is None
    assert authenticate(credentials["mqtt_username"], "") is None
    assert authenticate(credentials["mqtt_username"], b"\xff\xfe") is None
    assert authenticate(credentials["mqtt_username"].encode(), credentials["mqtt_password"].encode()) is not None


def test_anonymous_is_refused_by_default(db):
    assert authenticate(None, None) is None
    assert authenticate("", "") is None
    assert authenticate_mqtt_sync(None, None) is None


def test_anonymous_is_admitted_when_allowed(db, allow_anonymous):
    assert authenticate(None, None) is ANONYMOUS
    assert authenticate_mqtt_sync("", None) is ANONYMOUS


def test_service_user_with_the_permission(db):
    user = service_user()
    assert authenticate("dashboard", "s3cret-pw") == ServicePrincipal(username="dashboard", user_id=user.pk)
    assert authenticate_mqtt_sync("dashboard", "s3cret-pw") == ServicePrincipal(username="dashboard", user_id=user.pk)
    assert authenticate("dashboard", "wrong") is None


def test_service_user_without_the_permission_or_inactive_is_refused(db):
    service_user("plain", "pw", permitted=False)
    service_user("gone", "pw", is_active=False)
    assert authenticate("plain", "pw") is None
    assert authenticate("gone", "pw") is None
    assert authenticate("nobody", "pw") is None
    assert authenticate_mqtt_sync("plain", "pw") is None


def test_superuser_is_a_service_client(db):
    User.objects.create_superuser("root", password="pw")
    assert isinstance(authenticate("root", "pw"), ServicePrincipal)


def test_token_auth(db):
    user = service_user("robot")
    token = Token.objects.create(user=user)
    expected = ServicePrincipal(username="robot", user_id=user.pk)
    assert authenticate("token", token.key) == expected
    assert authenticate_mqtt_sync("token", token.key) == expected
    assert authenticate("token", "not-a-key") is None
    assert authenticate("robot", token.key) is None  # the token goes with the username "token" only
    unpermitted = Token.objects.create(user=service_user("other", permitted=False))
    assert authenticate("token", unpermitted.key) is None


def test_client_id_rule(provisioned_device):
    _, credentials = provisioned_device
    username, password = credentials["mqtt_username"], credentials["mqtt_password"]
    assert authenticate(username, password, client_id=username) is not None
    assert authenticate(username, password, client_id="") is not None
    assert authenticate(username, password, client_id="thermometer.other") is None
    service_user()
    assert authenticate("dashboard", "s3cret-pw", client_id="dashboard-1") is not None
    assert authenticate("dashboard", "s3cret-pw", client_id=username) is None  # would evict the device
    assert authenticate_mqtt_sync("dashboard", "s3cret-pw", client_id=username) is None


def test_internal_errors_refuse_without_raising(provisioned_device, monkeypatch):
    _, credentials = provisioned_device

    def broken(*args):
        raise RuntimeError("database is on fire")

    monkeypatch.setattr(authenticate_module, "_find_devices", broken)  # both paths look rows up here
    assert authenticate(credentials["mqtt_username"], credentials["mqtt_password"]) is None
    assert authenticate_mqtt_sync(credentials["mqtt_username"], credentials["mqtt_password"]) is None


async def test_device_lookups_gather_and_never_answer_from_an_older_query(monkeypatch):
    """Lookups arriving while a query runs share the next one; none is answered by a query that started
    before it arrived (so it sees every rotation committed before its CONNECT)."""
    queries = []
    first_running = threading.Event()
    release = threading.Event()
    state = {"version": 1}

    def fake_find_devices(keys):
        queries.append(sorted(keys))
        version = state["version"]  # what the database holds when the query starts
        if len(queries) == 1:
            first_running.set()
            release.wait(10)
        return {key: (key[1], version) for key in keys if key[1] != "t.ghost"}

    monkeypatch.setattr(authenticate_module, "_find_devices", fake_find_devices)
    lookups = authenticate_module.DeviceLookups()
    first = [asyncio.ensure_future(lookups.find("t", name)) for name in ("t.a", "t.b", "t.a")]
    await sync_to_async(first_running.wait, thread_sensitive=False)(10)
    state["version"] = 2  # say, t.a rotated after the first query started
    later = [asyncio.ensure_future(lookups.find("t", name)) for name in ("t.a", "t.c", "t.ghost", "t.d")]
    await asyncio.sleep(0)
    later[3].cancel()  # its client went away while waiting
    release.set()
    assert await asyncio.gather(*first) == [("t.a", 1), ("t.b", 1), ("t.a", 1)]
    assert await asyncio.gather(*later[:3]) == [("t.a", 2), ("t.c", 2), None]
    assert later[3].cancelled()
    assert queries == [[("t", "t.a"), ("t", "t.b")], [("t", "t.a"), ("t", "t.c"), ("t", "t.d"), ("t", "t.ghost")]]
    assert lookups.batches == 2
    # Idle again: the next lookup runs its own query at once.
    assert await lookups.find("t", "t.b") == ("t.b", 2)
    assert lookups.batches == 3


def test_concurrent_connects_share_one_query_per_type(db, django_assert_num_queries):
    thermometers = [provision(ThermometerDevice(device_id=f"storm-{i}")) for i in range(6)]
    hygrometers = [provision(HygrometerDevice(device_id=f"storm-{i}")) for i in range(3)]
    inactive = ThermometerDevice(device_id="storm-off")
    inactive_credentials = provision(inactive)
    inactive.is_active = False
    inactive.save()
    attempts = [(c["mqtt_username"], c["mqtt_password"]) for c in thermometers + hygrometers]
    attempts += [
        (thermometers[0]["mqtt_username"], thermometers[1]["mqtt_password"]),  # another device's password
        ("thermometer.storm-nobody", thermometers[0]["mqtt_password"]),
        (inactive_credentials["mqtt_username"], inactive_credentials["mqtt_password"]),
    ]

    async def connect_all():
        return await asyncio.gather(*(authenticate_mqtt(u, p, client_id=u) for u, p in attempts))

    with django_assert_num_queries(2):  # one per device type, whatever the number of devices
        principals = async_to_sync(connect_all)()
    expected = [("thermometer", f"storm-{i}") for i in range(6)] + [("hygrometer", f"storm-{i}") for i in range(3)]
    assert [(p.type_name, p.device_id) for p in principals[:9]] == expected
    assert [p.mqtt_username for p in principals[:9]] == [u for u, _ in attempts[:9]]
    assert principals[9:] == [None, None, None]


def test_device_lookups_are_chunked(db, monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(authenticate_module, "LOOKUP_CHUNK", 2)
    for i in range(5):
        provision(ThermometerDevice(device_id=f"chunk-{i}"))
    keys = [("thermometer", f"thermometer.chunk-{i}") for i in range(5)] + [("thermometer", "thermometer.none")]
    with django_assert_num_queries(3):
        found = authenticate_module._find_devices(keys)
    assert sorted(row.device_id for row in found.values()) == [f"chunk-{i}" for i in range(5)]
    assert all(found[key].mqtt_username == key[1] for key in found)


@pytest.mark.django_db(transaction=True)
async def test_authenticate_on_a_running_loop():
    device = ThermometerDevice(device_id="loop-1")
    credentials = await aprovision(device)
    principal = await authenticate_mqtt(credentials["mqtt_username"], credentials["mqtt_password"])
    assert principal.device_id == "loop-1"
    assert await authenticate_mqtt(credentials["mqtt_username"], "wrong") is None


# -- topics ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("#", "a/b", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("+/+", "/a", True),
        ("/+", "/a", True),
        ("a/+", "a/", True),
        ("#", "$SYS/broker", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("$SYS/+", "$SYS/broker", True),
        ("things/+/+/cmd", "things/thermometer/1/cmd", True),
    ],
)
def test_topic_matches(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("pattern", "topic_filter", "expected"),
    [
        ("things/#", "things/#", True),
        ("things/#", "things", True),
        ("things/#", "things/+/1/cmd", True),
        ("things/#", "#", False),
        ("things/#", "+/a", False),
        ("+/secret", "a/secret", True),
        ("+/secret", "+/secret", True),
        ("+/secret", "#", False),
        ("#", "$SYS/#", False),
    ],
)
def test_filter_within(pattern, topic_filter, expected):
    assert filter_within(pattern, topic_filter) is expected


def test_topic_and_filter_validity():
    assert is_valid_topic("a/b")
    assert not is_valid_topic("a/+")
    assert not is_valid_topic("a/#")
    assert not is_valid_topic("")
    assert not is_valid_topic("a\x00b")
    assert is_valid_filter("a/+/#")
    assert not is_valid_filter("a/#/b")
    assert not is_valid_filter("a/b#")
    assert not is_valid_filter("a+/b")
    assert not is_valid_filter("")


# -- ACL -------------------------------------------------------------------------------------------------

ME = DevicePrincipal(type_name="thermometer", device_id="t1", device_pk=1, mqtt_username="thermometer.t1")
OWN = "things/thermometer/t1"
OTHER = "things/thermometer/t2"
SERVICE = ServicePrincipal(username="dashboard", user_id=1)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (f"{OWN}/data", True),
        (f"{OWN}/status", True),
        (f"{OWN}/reply", True),
        (f"{OWN}/cmd", False),
        (f"{OWN}/other", False),
        (f"{OWN}/data/x", False),
        (f"{OTHER}/data", False),
        (f"{OTHER}/status", False),
        (f"{OTHER}/reply", False),
        (f"{OTHER}/cmd", False),
        ("things/hygrometer/t1/data", False),
        ("elsewhere/x", False),
        (f"{OWN}/+", False),
        ("things/thermometer/+/data", False),
        ("$SYS/x", False),
    ],
)
def test_device_publish(topic, expected):
    assert can_publish(ME, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        (f"{OWN}/cmd", True),
        (f"{OTHER}/cmd", False),
        (f"{OWN}/data", False),
        (f"{OWN}/#", False),
        (f"{OWN}/+", False),
        ("things/thermometer/+/cmd", False),
        ("things/#", False),
        ("#", False),
    ],
)
def test_device_subscribe(topic_filter, expected):
    assert can_subscribe(ME, topic_filter) is expected


def test_device_receive_only_its_own_cmd():
    assert can_receive(ME, f"{OWN}/cmd")
    assert not can_receive(ME, f"{OTHER}/cmd")
    assert not can_receive(ME, f"{OTHER}/data")
    assert not can_receive(ME, "elsewhere/x")


def test_device_with_a_wildcard_id_gets_nothing():
    rogue = DevicePrincipal(type_name="thermometer", device_id="+", device_pk=2, mqtt_username="thermometer.+")
    assert not can_subscribe(rogue, "things/thermometer/+/cmd")
    assert not can_receive(rogue, f"{OTHER}/cmd")
    assert not can_publish(rogue, "things/thermometer/+/data")


def test_only_the_hub_publishes_commands():
    assert can_publish(HUB, f"{OWN}/cmd")
    assert can_publish(HUB, f"{OTHER}/cmd")
    assert not can_publish(HUB, "things/+/t1/cmd")
    for principal in (ME, SERVICE, ANONYMOUS):
        assert not can_publish(principal, f"{OWN}/cmd")
        assert not can_publish(principal, f"{OTHER}/cmd")
    assert can_subscribe(HUB, "things/#")
    assert can_receive(HUB, f"{OWN}/data")


def test_service_reads_the_namespace_but_never_publishes_into_it():
    assert can_subscribe(SERVICE, "things/#")
    assert can_subscribe(SERVICE, "things/+/+/data")
    assert can_subscribe(SERVICE, "#")
    assert can_receive(SERVICE, f"{OWN}/data")
    assert can_receive(SERVICE, f"{OWN}/cmd")
    assert not can_publish(SERVICE, f"{OWN}/data")
    assert not can_publish(SERVICE, "things")
    assert can_publish(SERVICE, "dashboards/alerts")
    assert can_publish(SERVICE, "thingsandmore/x")  # only the prefix as a whole level is the namespace
    assert not can_publish(SERVICE, "dashboards/+")
    assert not can_publish(SERVICE, "$SYS/fake")
    assert not can_subscribe(SERVICE, "a/#/b")


def test_anonymous_stays_outside_the_namespace_and_the_deny_patterns():
    anonymous = AnonymousPrincipal()
    assert can_publish(anonymous, "lobby/chat")
    assert not can_publish(anonymous, f"{OWN}/data")
    assert not can_publish(anonymous, "private/notes")
    assert not can_publish(anonymous, "lobby/secret")
    assert not can_publish(anonymous, "lobby/#")
    assert can_subscribe(anonymous, "lobby/#")
    assert not can_subscribe(anonymous, "things/#")
    assert not can_subscribe(anonymous, "things")
    assert not can_subscribe(anonymous, "things/thermometer/t1/data")
    assert not can_subscribe(anonymous, "private/#")
    assert not can_subscribe(anonymous, "lobby/secret")
    assert not can_subscribe(anonymous, "$SYS/#")
    # Broad filters are accepted, and delivery withholds what they must not see.
    assert can_subscribe(anonymous, "#")
    assert can_subscribe(anonymous, "+/+/+/data")
    assert can_receive(anonymous, "lobby/chat")
    assert not can_receive(anonymous, f"{OWN}/data")
    assert not can_receive(anonymous, "private/notes")
    assert not can_receive(anonymous, "lobby/secret")
    assert not can_receive(anonymous, "$SYS/broker/uptime")


def test_last_will_topics_use_can_publish():
    # The broker asks can_publish for a CONNECT's will topic: a device cannot leave a will on another's topic.
    assert can_publish(ME, f"{OWN}/status")
    assert not can_publish(ME, f"{OTHER}/status")


def test_acl_follows_the_topic_prefix(settings):
    settings.HUBSERVER = {**HUB_SETTINGS, "TOPIC_PREFIX": "acme/iot"}
    assert can_publish(ME, "acme/iot/thermometer/t1/data")
    assert not can_publish(ME, f"{OWN}/data")
    assert not can_publish(SERVICE, "acme/iot/x")
    assert can_publish(SERVICE, "acme/other")


def test_unknown_principal_gets_nothing():
    for check in (can_publish, can_subscribe, can_receive):
        assert check(None, "lobby/chat") is False
        assert check(object(), "lobby/chat") is False


# -- provisioning ----------------------------------------------------------------------------------------


def test_provision_stores_only_hashes(provisioned_device):
    device, credentials = provisioned_device
    assert set(credentials) == {"mqtt_username", "mqtt_password", "api_key"}
    assert credentials["mqtt_username"] == "thermometer.kitchen-1"
    row = ThermometerDevice.objects.filter(pk=device.pk).values().get()
    for value in row.values():
        for secret in (credentials["mqtt_password"], credentials["api_key"]):
            assert secret not in str(value)
    assert row["mqtt_password_hash"].startswith("$argon2id$")
    assert row["api_key"].startswith("$argon2id$")
    assert verify_secret(row["mqtt_password_hash"], credentials["mqtt_password"])
    assert verify_secret(row["api_key"], credentials["api_key"])
    assert len(credentials["mqtt_password"]) >= 43
    assert credentials["mqtt_password"] != credentials["api_key"]


def test_provisioning_again_rotates(provisioned_device, revoked, django_capture_on_commit_callbacks):
    device, old = provisioned_device
    with django_capture_on_commit_callbacks(execute=True):
        new = provision(device)
    row = ThermometerDevice.objects.get(pk=device.pk)
    assert new["mqtt_username"] == old["mqtt_username"]
    assert not verify_secret(row.mqtt_password_hash, old["mqtt_password"])
    assert not verify_secret(row.api_key, old["api_key"])
    assert verify_secret(row.mqtt_password_hash, new["mqtt_password"])
    assert authenticate(old["mqtt_username"], old["mqtt_password"]) is None
    assert authenticate(new["mqtt_username"], new["mqtt_password"]) is not None
    assert revoked == [
        {
            "sender": Thermometer,
            "signal": credentials_revoked,
            "device_id": "kitchen-1",
            "mqtt_username": "thermometer.kitchen-1",
            "reason": "rotated",
        }
    ]


def test_rotation_misses_a_warm_cache(provisioned_device):
    device, old = provisioned_device
    assert authenticate(old["mqtt_username"], old["mqtt_password"]) is not None  # now cached
    provision(device)
    assert authenticate(old["mqtt_username"], old["mqtt_password"]) is None


def test_device_provisioned_fires_once_with_the_documented_kwargs(db):
    calls = []

    def receiver(**kwargs):
        calls.append(kwargs)

    device_provisioned.connect(receiver)
    try:
        device = HygrometerDevice(device_id="h-1")
        credentials = provision(device)
    finally:
        device_provisioned.disconnect(receiver)
    assert len(calls) == 1
    assert set(calls[0]) == {"signal", "sender", "device", "credentials"}
    assert calls[0]["sender"] is Hygrometer
    assert calls[0]["device"] is device
    assert calls[0]["credentials"] == credentials
    assert set(calls[0]["credentials"]) == {"mqtt_username", "mqtt_password", "api_key"}


def test_a_failing_receiver_rolls_the_rotation_back(provisioned_device):
    device, old = provisioned_device

    def receiver(**kwargs):
        raise RuntimeError("vault unreachable")

    device_provisioned.connect(receiver)
    try:
        with pytest.raises(RuntimeError):
            provision(device)
    finally:
        device_provisioned.disconnect(receiver)
    row = ThermometerDevice.objects.get(pk=device.pk)
    assert verify_secret(row.mqtt_password_hash, old["mqtt_password"])


def test_deactivation_revokes(provisioned_device, revoked, django_capture_on_commit_callbacks):
    device, _ = provisioned_device
    with django_capture_on_commit_callbacks(execute=True):
        device.status = "online"
        device.save(update_fields=["status"])  # unrelated saves revoke nothing
        device.is_active = False
        device.save()
        device.save()  # already inactive: nothing new
    assert [(c["sender"], c["device_id"], c["mqtt_username"], c["reason"]) for c in revoked] == [
        (Thermometer, "kitchen-1", "thermometer.kitchen-1", "deactivated")
    ]


def test_revocation_waits_for_commit(provisioned_device, revoked, django_capture_on_commit_callbacks):
    device, _ = provisioned_device
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        device.is_active = False
        device.save()
    assert revoked == []
    for callback in callbacks:
        callback()
    assert [c["reason"] for c in revoked] == ["deactivated"]


def test_deletion_revokes(provisioned_device, revoked, django_capture_on_commit_callbacks):
    device, _ = provisioned_device
    with django_capture_on_commit_callbacks(execute=True):
        device.delete()
    assert [c["reason"] for c in revoked] == ["deleted"]


def test_revocation_forgets_the_cached_verification(provisioned_device, django_capture_on_commit_callbacks):
    device, credentials = provisioned_device
    assert authenticate(credentials["mqtt_username"], credentials["mqtt_password"]) is not None
    assert len(verifier.device_verifier) == 1
    with django_capture_on_commit_callbacks(execute=True):
        device.is_active = False
        device.save()
    assert len(verifier.device_verifier) == 0


def test_first_provisioning_revokes_nothing(db, revoked, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        device = ThermometerDevice.objects.create(device_id="fresh")
        provision(device)
    assert revoked == []


@pytest.mark.parametrize("device_id", ["a/b", "+", "#", "x+y", ""])
def test_ids_that_cannot_be_topic_levels_are_refused(db, device_id):
    with pytest.raises(ValidationError):
        provision(ThermometerDevice(device_id=device_id))
    assert not ThermometerDevice.objects.exists()


def test_provision_many_creates_and_rotates(db, revoked, django_capture_on_commit_callbacks):
    existing = ThermometerDevice(device_id="b-2")
    old = provision(existing)
    calls = []

    def receiver(**kwargs):
        calls.append(kwargs)

    device_provisioned.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            results = provision_many(Thermometer, ["b-1", "b-2", "b-3"], workers=2)
    finally:
        device_provisioned.disconnect(receiver)
    assert [r.device.device_id for r in results] == ["b-1", "b-2", "b-3"]
    assert [r.rotated for r in results] == [False, True, False]
    assert len(calls) == 3
    for result in results:
        row = ThermometerDevice.objects.get(device_id=result.device.device_id)
        assert row.mqtt_username == f"thermometer.{row.device_id}"
        assert verify_secret(row.mqtt_password_hash, result.credentials["mqtt_password"])
        assert verify_secret(row.api_key, result.credentials["api_key"])
    assert not verify_secret(ThermometerDevice.objects.get(device_id="b-2").mqtt_password_hash, old["mqtt_password"])
    assert [(c["device_id"], c["reason"]) for c in revoked] == [("b-2", "rotated")]


def test_connection_info(provisioned_device, settings):
    settings.HUBSERVER = {**HUB_SETTINGS, "PUBLIC_HOST": "hub.example.com", "MQTT_PORT": 1884}
    device, credentials = provisioned_device
    info = connection_info(device, credentials)
    assert info == {
        "device_id": "kitchen-1",
        "device_type": "thermometer",
        "client_id": "thermometer.kitchen-1",
        "mqtt_username": "thermometer.kitchen-1",
        "mqtt_password": credentials["mqtt_password"],
        "api_key": credentials["api_key"],
        "host": "hub.example.com",
        "mqtt_port": 1884,
        "mqtt_tls_port": None,
        "websocket_url": "ws://hub.example.com:8000/mqtt",
        "topics": {
            "data": "things/thermometer/kitchen-1/data",
            "status": "things/thermometer/kitchen-1/status",
            "cmd": "things/thermometer/kitchen-1/cmd",
            "reply": "things/thermometer/kitchen-1/reply",
        },
    }


def test_connection_info_defaults_to_the_host_name(provisioned_device):
    import socket

    device, credentials = provisioned_device
    assert connection_info(device, credentials)["host"] == socket.gethostname()


def test_device_lookup_is_one_query(provisioned_device, django_assert_num_queries):
    _, credentials = provisioned_device
    with django_assert_num_queries(1):
        assert authenticate_mqtt_sync(credentials["mqtt_username"], credentials["mqtt_password"]) is not None


def test_acl_decisions_touch_no_database():
    # No django_db mark: pytest-django makes any query here an error, so these checks prove the ACL is in memory.
    assert can_publish(ME, f"{OWN}/data")
    assert can_subscribe(ME, f"{OWN}/cmd")
    assert can_receive(ME, f"{OWN}/cmd")
