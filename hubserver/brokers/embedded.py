"""The embedded engine: amqtt (``HubBroker``) in the hub's event loop, fed into the MessageRouter.

This module and ``plugins/`` are the only places that know amqtt; an amqtt upgrade touches nothing else.
It uses the broker only through the methods ``plugins/broker.py`` defines for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..access.principals import DevicePrincipal
from ..conf import hub_settings
from ..exceptions import HubserverError
from .base import BaseBroker

if TYPE_CHECKING:
    from ..hub import Hub

logger = logging.getLogger("hubserver.mqtt")


class PortInUse(HubserverError, OSError):
    """A listener's port is taken: start-up stops with this message."""


class EmbeddedBroker(BaseBroker):
    """MQTT 3.1.1 and 5 over TCP (``MQTT_HOST``/``MQTT_PORT``), TLS (``MQTT_TLS_*``) and WebSocket (the HTTP
    port's ``MQTT_WEBSOCKET_PATH``), in this process. The listener keyword arguments override the settings
    (``hubserver run --host/--mqtt-port``; tests use free ports)."""

    WEBSOCKET_LISTENER = "websocket"
    settings_keys: ClassVar[frozenset[str]] = frozenset()  # it listens where MQTT_HOST/MQTT_PORT/... say
    one_per_process: ClassVar[bool] = True

    def __init__(
        self,
        hub: Hub,
        name: str = "default",
        settings: Mapping[str, Any] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        max_connections: int | None = None,
    ) -> None:
        super().__init__(hub, name, settings or {})
        self.host = hub_settings.MQTT_HOST if host is None else host
        self.port = hub_settings.MQTT_PORT if port is None else port
        self.tls_port = hub_settings.MQTT_TLS_PORT if tls_port is None else tls_port
        self.certfile = certfile or hub_settings.MQTT_TLS_CERTFILE
        self.keyfile = keyfile or hub_settings.MQTT_TLS_KEYFILE
        self.max_connections = hub_settings.MAX_CONNECTIONS if max_connections is None else max_connections
        self.broker: Any = None  # the HubBroker, once started
        self.bridge: Any = None  # the RouterBridge

    def config(self) -> dict[str, Any]:
        listeners: dict[str, Any] = {
            "default": {"type": "tcp", "bind": f"{self.host}:{self.port}"},
            self.WEBSOCKET_LISTENER: {"type": "external"},
        }
        if self.tls_port:
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"{self.host}:{self.tls_port}",
                "ssl": True,
                "certfile": self.certfile,
                "keyfile": self.keyfile,
            }
        return {
            "listeners": listeners,
            "plugins": {"hubserver.plugins.auth.HubAuthPlugin": {}, "hubserver.plugins.acl.HubTopicPlugin": {}},
        }

    async def start(self) -> None:
        """Start the listeners; raises PortInUse when a port is taken (nothing keeps running)."""
        from hubserver.plugins.bridge import RouterBridge
        from hubserver.plugins.broker import HubBroker

        if self.tls_port and not (self.certfile and self.keyfile):
            raise HubserverError("MQTT_TLS_PORT is set but MQTT_TLS_CERTFILE / MQTT_TLS_KEYFILE are not")
        self.bridge = RouterBridge(self.hub.router)
        self.broker = HubBroker(self.config(), bridge=self.bridge, lifecycle=self, max_connections=self.max_connections)
        self.bridge.broker = self.broker
        try:
            await self.broker.start()
        except BaseException as exc:
            await self.broker.close_listeners()
            bind_error = _os_error(exc)  # amqtt wraps the OSError of a failed bind in a BrokerError
            if bind_error is None:
                raise
            port = self.tls_port if self.tls_port and str(self.tls_port) in str(bind_error) else self.port
            reason = "address already in use" if "in use" in str(bind_error) else (bind_error.strerror or bind_error)
            raise PortInUse(f"cannot listen for MQTT on {self.host}:{port}: {reason}") from exc
        logger.info(
            "MQTT listening on %s:%s%s", self.host, self.port, f" and TLS on {self.tls_port}" if self.tls_port else ""
        )

    async def stop(self) -> None:
        """Stop accepting, commit everything queued (releasing its acknowledgements), then close the clients."""
        if self.broker is None:
            return
        await self.broker.close_listeners()
        self.bridge.closing = True  # from now on a PUBLISH is refused unacknowledged; the client resends it
        await self.hub.router.flush()
        await asyncio.sleep(0)  # let the handlers send the acknowledgements the last commit released
        self.broker.lifecycle = None
        for type_name, device_id in self.connected_devices():
            await self.hub.device_disconnected(type_name, device_id, "hub stopping")
        await self.broker.shutdown()
        logger.info("MQTT stopped")

    # BaseBroker ------------------------------------------------------------------------------------------

    async def publish_to_device(
        self,
        client_id: str,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        correlation_id: str = "",
        response_topic: str = "",
        user_properties: Mapping[str, str] | None = None,
    ) -> None:
        # Decided per connection at publish time: an MQTT 5 device gets them as properties; over MQTT 3.1.1
        # the correlation id travels in the command envelope only.
        await self.broker.publish_to(
            client_id,
            topic,
            payload,
            qos,
            correlation_id=correlation_id,
            response_topic=response_topic,
            user_properties=user_properties,
        )

    def is_connected(self, client_id: str, topic: str | None = None) -> bool:
        return self.broker is not None and self.broker.is_connected(client_id, topic)

    def connected_devices(self) -> list[tuple[str, str]]:
        if self.broker is None:
            return []
        return [
            (principal.type_name, principal.device_id)
            for principal in self.broker.connected_principals()
            if isinstance(principal, DevicePrincipal)
        ]

    async def end_session(self, mqtt_username: str) -> None:
        if self.broker is None:
            return
        for client_id in await self.broker.kick_username(mqtt_username):
            logger.info("disconnected %s: its access was revoked", client_id)

    def stats(self) -> dict[str, Any]:
        broker = self.broker
        if broker is None:
            return {"connected": 0, "devices": 0, "refused": {}, "dropped": {}}
        return {
            "connected": broker.connection_count(),
            "devices": len(self.connected_devices()),
            "refused": dict(broker.refused),
            "dropped": dict(self.bridge.refused),
            "sockets": broker.open_sockets,
            "closed": dict(broker.limit_counters.closed),
            "throttled": dict(broker.limit_counters.throttled),
            "throttled_seconds": broker.limit_counters.throttled_seconds,
            "dropped_deliveries": dict(broker.limit_counters.dropped),
            "mqtt5_disconnects": dict(broker.disconnects),
        }

    def client_limits(self, client_id: str) -> dict[str, int]:
        return self.broker.limit_counters.for_client(client_id) if self.broker is not None else {}

    # The embedded engine's own -------------------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        broker = self.broker
        if broker is None or not broker.has_subscribers(topic):
            return False
        broker.deliver_nowait(None, topic, payload, qos)
        return True

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish as the hub itself to whoever subscribed (each recipient's ACL applies)."""
        await self.broker.publish(topic, payload, qos=qos, retain=retain)

    async def websocket_connected(self, reader: Any, writer: Any) -> None:
        """A connection of MQTT over WebSocket, from the HTTP port (``plugins/websocket.py``)."""
        await self.broker.external_connected(reader, writer, self.WEBSOCKET_LISTENER)

    # Lifecycle callbacks from HubBroker: one connected/disconnected per device, whatever its connections.
    async def connected(self, principal: Any) -> None:
        if isinstance(principal, DevicePrincipal):
            await self.hub.device_connected(principal.type_name, principal.device_id)

    async def subscribed(self, principal: Any) -> None:
        if isinstance(principal, DevicePrincipal):
            self.hub.device_subscribed(principal.type_name, principal.device_id)

    async def disconnected(self, principal: Any) -> None:
        if isinstance(principal, DevicePrincipal):
            await self.hub.device_disconnected(principal.type_name, principal.device_id, "disconnected")


def _os_error(exc: BaseException | None) -> OSError | None:
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
