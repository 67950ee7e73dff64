"""``/metrics``: Prometheus text read at scrape time from the engine, the router, the verifiers and the
HTTP views; access limited to localhost, staff, or everyone when ``METRICS_PUBLIC`` is set."""

import json
import os

import prometheus_client
import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient, Client, override_settings
from django.urls import include, path
from prometheus_client.parser import text_string_to_metric_families

from hubserver.views import broker_auth, ingest
from hubserver.views.metrics import metrics_view
from tests.conftest import device_client, provision_device
from tests.mqtt import until

# The /metrics root line belongs to hubserver/site_urls.py; this module is the URLconf of its tests.
urlpatterns = [path("iot/", include("hubserver.urls")), path("metrics", metrics_view)]
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls(__name__)]

REMOTE = ["10.1.2.3", 40000]


class RemoteAsyncClient(AsyncClient):
    """An AsyncClient whose requests come from another host (the scope's ``client``)."""

    def _base_scope(self, **request):
        return {**super()._base_scope(**request), "client": REMOTE}


def parse(text):
    """``{(sample name, frozenset(labels)): value}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


async def scrape(client=None):
    response = await (client or AsyncClient()).get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
    return parse(response.content.decode())


def test_without_an_engine_the_metrics_still_render():
    response = Client().get("/metrics")
    assert response.status_code == 200
    samples = parse(response.content.decode())
    assert value(samples, "hubserver_engine_running") == 0
    assert value(samples, "hubserver_messages_received_total") == 0
    assert value(samples, "hubserver_messages_refused_total", reason="unknown_device") == 0
    assert value(samples, "hubserver_connections_refused_total", reason="not_authorized") == 0
    if os.path.exists("/proc/self/stat"):  # the process collector reads /proc
        assert value(samples, "process_resident_memory_bytes") > 0


def test_custom_registry_not_the_global_one():
    from hubserver import metrics

    assert metrics.REGISTRY is not prometheus_client.REGISTRY
    global_names = {family.name for family in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("hubserver_") for name in global_names)


def test_access_rules():
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    assert Client().get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403  # a local proxy
    assert Client().post("/metrics").status_code == 405
    with override_settings(HUBSERVER={"METRICS_PUBLIC": True}):
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    # A container's published port: requests arrive from the bridge's gateway.
    with override_settings(HUBSERVER={"METRICS_ALLOWED_NETWORKS": ["172.16.0.0/12", "fd00::/8"]}):
        assert Client(REMOTE_ADDR="172.17.0.1").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="fd00::5").get("/metrics").status_code == 200
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 403
        proxied = Client(REMOTE_ADDR="172.17.0.1").get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9")
        assert proxied.status_code == 403
    from django.contrib.auth.models import User

    staff = Client(REMOTE_ADDR="10.1.2.3")
    staff.force_login(User.objects.create_user("ops", password="x", is_staff=True))
    assert staff.get("/metrics").status_code == 200
    user = Client(REMOTE_ADDR="10.1.2.3")
    user.force_login(User.objects.create_user("someone", password="x"))
    assert user.get("/metrics").status_code == 403


async def test_counters_move_with_mqtt_and_http_traffic(hub, clients):
    before = await scrape()
    assert value(before, "hubserver_engine_running") == 1

    client, _ = await device_client(hub, clients, "thermometer", "t-1")
    for temperature in (20.0, 21.0, 22.0):
        await client.publish("things/thermometer/t-1/data", json.dumps({"temperature": temperature}))
    await client.publish("things/thermometer/t-1/data", b"not json")
    await client.publish("things/thermometer/t-9/data", json.dumps({"temperature": 1.0}))  # not its own: ACL
    await until(lambda: hub.stats()["dropped"].get("acl", 0) >= 1, message="the ACL drop")
    assert (await hub.router.route("data", "thermometer", "ghost", b"{}")).reason == "unknown_device"

    _, hygro = await provision_device("hygrometer", "h-1")
    http = AsyncClient()
    response = await http.post(
        "/iot/devices/hygrometer/h-1/data/",
        json.dumps({"humidity": 50.0}),
        content_type="application/json",
        headers={"X-Api-Key": hygro["api_key"]},
    )
    assert response.status_code == 202
    response = await http.post("/iot/devices/hygrometer/h-1/data/", "{}", content_type="application/json")
    assert response.status_code == 401

    bad = clients(hub.engine.port, "thermometer.t-1", "thermometer.t-1", "wrong-password")
    assert await bad.connect(expect_success=False) != 0  # not authorized
    token = "a-broker-token-for-the-metrics"
    with override_settings(HUBSERVER={"BROKERS": {"default": {"AUTH_BACKEND": True}}, "BROKER_AUTH_TOKEN": token}):
        response = await http.post(
            "/iot/broker/auth/",
            {"username": "thermometer.t-1", "password": "wrong"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.json() == {"result": "deny"}
    await hub.router.flush()

    after = await scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hubserver_messages_received_total") == 6  # 4 own MQTT + 1 refused + 1 HTTP
    assert delta("hubserver_messages_stored_total") == 5
    assert delta("hubserver_messages_failed_total") == 1
    assert delta("hubserver_messages_refused_total", reason="unknown_device") == 1
    assert delta("hubserver_messages_refused_total", reason="acl") == 1
    assert delta("hubserver_batches_total") >= 1
    assert value(after, "hubserver_batch_size", stat="max") >= 1
    assert value(after, "hubserver_batch_size", stat="last") >= 1
    assert value(after, "hubserver_commit_errors_total") == 0
    assert value(after, "hubserver_writer_queue_depth") == 0
    assert value(after, "hubserver_connected_devices") == 1
    assert value(after, "hubserver_connected_clients") == 1
    assert delta("hubserver_auth_failures_total", source="mqtt") == 1
    assert delta("hubserver_auth_failures_total", source="http") == 1
    assert delta("hubserver_connections_refused_total", reason="not_authorized") == 1
    assert value(after, "hubserver_http_ingest_requests_total", kind="data", outcome="completed") >= 1
    assert value(after, "hubserver_http_ingest_requests_total", kind="data", outcome="unauthorized") >= 1
    assert value(after, "hubserver_http_broker_requests_total", endpoint="auth", outcome="deny") >= 1
    assert value(after, "hubserver_verifier_checks_total", verifier="device") >= 2
    assert value(after, "hubserver_verifier_cache_entries", verifier="device") >= 1

    await client.disconnect()
    await until(lambda: hub.stats()["connected"] == 0, message="the disconnect")
    assert value(await scrape(), "hubserver_connected_devices") == 0


@database_sync_to_async
def _staff_user():
    from django.contrib.auth.models import User

    return User.objects.create_user("ops", password="x", is_staff=True)


async def test_async_scrape_from_a_remote_staff_user(hub):
    remote = RemoteAsyncClient()
    assert (await remote.get("/metrics")).status_code == 403
    await remote.aforce_login(await _staff_user())
    assert value(await scrape(remote), "hubserver_engine_running") == 1


def test_view_counters_are_plain_counters():
    # the views count in memory; the collector reads them only when scraped
    broker_auth.stats.clear()
    ingest.stats.clear()
    token = "a-broker-token-for-the-metrics"
    with override_settings(HUBSERVER={"BROKERS": {"default": {"AUTH_BACKEND": True}}, "BROKER_AUTH_TOKEN": token}):
        Client().post("/iot/broker/acl/", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    samples = parse(Client().get("/metrics").content.decode())
    assert value(samples, "hubserver_http_broker_requests_total", endpoint="acl", outcome="malformed") == 1


async def test_commit_latency_batch_sizes_and_per_type_counts_are_exported(hub, clients):
    from hubserver import metrics as hub_metrics

    client, _ = await device_client(hub, clients, "hygrometer", "m-type-1")
    await client.publish("things/hygrometer/m-type-1/data", b'{"humidity": 50}')
    await client.publish("things/hygrometer/m-type-1/data", b"not json")
    await hub.router.flush()
    text = hub_metrics.render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    commit = families["hubserver_commit_seconds"]
    assert any(s.name.endswith("_count") and s.value >= 1 for s in commit.samples)
    stored = {s.labels["device_type"]: s.value for s in families["hubserver_type_messages_stored"].samples}
    failed = {s.labels["device_type"]: s.value for s in families["hubserver_type_messages_failed"].samples}
    assert stored["hygrometer"] == 2 and failed["hygrometer"] == 1
