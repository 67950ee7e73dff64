"""Fixtures: an in-process hub (``hubserver.hub.Hub``, built as ``hubserver run`` builds it, in the test's
event loop, its embedded broker on a free port), provisioned devices and service users. Subprocess tests
of ``hubserver run`` live in tests/test_run.py."""

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings

from tests.mqtt import Client, Client5, RawClient5, free_port

pytest_plugins = ["tests.service_fixtures", "tests.brokers"]


@pytest.fixture(scope="session", autouse=True)
def _quick_flush():
    """Transactional tests end by emptying the database but keep its content types and permissions
    (``tests/db_flush.py``): the same database for the next test, without rebuilding them each time."""
    from tests import db_flush

    db_flush.install()
    yield
    db_flush.uninstall()


@pytest.fixture(autouse=True)
def _fresh_auth_throttle():
    """Each test starts with no remembered authentication failures (tests reuse usernames: one test's wrong
    passwords must not throttle the next one's right ones) and with its refusals not yet logged (they are
    logged once a minute per address)."""
    from hubserver.plugins import auth as auth_plugin

    from hubserver.access import throttle
    from hubserver.views import broker_auth

    throttle.reset()
    auth_plugin._refusals.clear()
    broker_auth._bad_token_log.clear()
    yield
    throttle.reset()


@pytest.fixture
def hub_settings_override(request):
    """Extra HUBSERVER settings for the next ``hub`` (or ``broker``) start: ``hub_settings_override.update(
    KEY=value)``, or ``@pytest.mark.parametrize("hub_settings_override", [{...}], indirect=True)``."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
async def hub(transactional_db, hub_settings_override):
    """The running Hub (``running_hub()`` returns it): ``hub.router``, ``hub.commands``, ``hub.engine`` (the
    embedded broker engine: ``hub.engine.port`` is its MQTT port)."""
    from hubserver.hub import Hub

    with override_settings(HUBSERVER=dict(hub_settings_override)):
        hub = Hub(embedded={"host": "127.0.0.1", "port": free_port()})
        await hub.start()
        try:
            yield hub
        finally:
            await hub.stop()


def _factory(cls, finish):
    """A fixture's body: yields ``make(*args)`` for ``cls`` clients, then ends each one with ``finish``."""
    made = []

    def make(*args, **kwargs):
        client = cls(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        getattr(client, finish)()


@pytest.fixture
def clients():
    """Make paho clients that are stopped at the end of the test, whatever happens."""
    yield from _factory(Client, "stop")


@pytest.fixture
def v5():
    """Make paho MQTT 5 clients (``tests.mqtt.Client5``) that are stopped at the end of the test."""
    yield from _factory(Client5, "stop")


@pytest.fixture
def raw():
    """Make raw MQTT 5 clients (``tests.mqtt.RawClient5``) that are closed at the end of the test."""
    yield from _factory(RawClient5, "close")


@database_sync_to_async
def provision_device(type_name="thermometer", device_id="t-1", **fields):
    """Create (or reuse) a device and provision it; returns (device, credentials)."""
    from hubserver import registry
    from hubserver.access.provisioning import provision

    model = registry.get_models(type_name)[0]
    device, _ = model.objects.get_or_create(device_id=device_id, defaults=fields)
    return device, provision(device)


@database_sync_to_async
def make_service_user(username="dashboard", password="s3cret-pass", permitted=True):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user(username, password=password)
    if permitted:
        user.user_permissions.add(Permission.objects.get(codename="mqtt_service"))
    return user


async def device_client(hub, clients, type_name="thermometer", device_id="t-1", **kwargs):
    """A connected paho client for a freshly provisioned device."""
    _, credentials = await provision_device(type_name, device_id)
    client = clients(
        hub.engine.port,
        credentials["mqtt_username"],
        credentials["mqtt_username"],
        credentials["mqtt_password"],
        **kwargs,
    )
    await client.connect()
    return client, credentials
