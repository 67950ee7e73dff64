"""The broker under test, hub or stock amqtt 0.12.1 (``broker`` fixture, parametrized), and a service user.

Tests that use ``broker`` run twice: the stock runs are expected to fail (strict xfail); if one passes,
amqtt fixed the behaviour upstream and the hub's override can go.
"""

import pytest
from amqtt.broker import Broker
from django.test import override_settings

from tests.conftest import make_service_user
from tests.mqtt import free_port

# Stock amqtt runs wait for timeouts the hub's broker does not need: the whole suite runs them, not the fast lane.
STOCK = pytest.param(
    "stock", marks=[pytest.mark.xfail(strict=True, reason="stock amqtt 0.12.1 behaviour"), pytest.mark.slow]
)


class StockBroker:
    """Stock amqtt with the hub's plugins, shaped like the engine for these tests."""

    def __init__(self, port, max_connections=0):
        self.port = port
        listener = {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": max_connections}
        self.config = {
            "listeners": {"default": listener},
            "plugins": {"hubserver.plugins.auth.HubAuthPlugin": {}, "hubserver.plugins.acl.HubTopicPlugin": {}},
        }

    async def start(self):
        self.broker = Broker(self.config)
        await self.broker.start()

    async def stop(self):
        await self.broker.shutdown()

    async def publish(self, topic, data, qos=1, retain=False):
        await self.broker.internal_message_broadcast(topic, data, qos)
        if retain:
            await self.broker.retain_message(None, topic, data, qos)


@pytest.fixture(params=["hub", STOCK])
async def broker(request, transactional_db, hub_settings_override):
    """The hub's embedded engine (started by a Hub, as ``hubserver run`` does), then stock amqtt."""
    from hubserver.hub import Hub

    limit = getattr(request, "param_max_connections", 0)
    marker = request.node.get_closest_marker("max_connections")
    limit = marker.args[0] if marker else limit
    port = free_port()
    with override_settings(HUBSERVER={"MAX_CONNECTIONS": limit, **hub_settings_override}):
        if request.param == "hub":
            hub = Hub(embedded={"host": "127.0.0.1", "port": port})
            await hub.start()
            try:
                yield hub.engine
            finally:
                await hub.stop()
        else:
            engine = StockBroker(port, max_connections=limit)
            await engine.start()
            try:
                yield engine
            finally:
                await engine.stop()


@pytest.fixture
async def service(transactional_db):
    await make_service_user("svc", "svc-pass")
    return ("svc", "svc-pass")
