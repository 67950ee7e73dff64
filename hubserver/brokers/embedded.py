"""The embedded engine: amqtt (``HubBroker``) in the hub's event loop, fed into the MessageRouter.

This module and ``plugins/`` are the only places that know amqtt; an amqtt upgrade touches nothing else.
"""

import asyncio
import logging

from ..access.principals import DevicePrincipal
from ..access.revocation import credentials_revoked
from ..conf import hub_settings
from ..exceptions import HubserverError
from ..realtime.fanout import on_commit as realtime_on_commit

logger = logging.getLogger("hubserver.mqtt")


class PortInUse(HubserverError, OSError):
    """A listener's port is taken: start-up stops with this message."""


class EmbeddedBroker:
    """Starts and stops the broker, connects device sessions to the router's lifecycle, kicks revoked devices."""

    WEBSOCKET_LISTENER = "websocket"

    def __init__(
        self, router, *, host=None, port=None, tls_port=None, certfile=None, keyfile=None, max_connections=None
    ):
        self.router = router
        self.host = hub_settings.MQTT_HOST if host is None else host
        self.port = hub_settings.MQTT_PORT if port is None else port
        self.tls_port = hub_settings.MQTT_TLS_PORT if tls_port is None else tls_port
        self.certfile = certfile or hub_settings.MQTT_TLS_CERTFILE
        self.keyfile = keyfile or hub_settings.MQTT_TLS_KEYFILE
        self.max_connections = hub_settings.MAX_CONNECTIONS if max_connections is None else max_connections
        self.broker = None
        self.bridge = None
        self.commands = None
        self.loop = None

    def config(self):
        listeners = {
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

    async def start(self):
        """Start the router and the listeners; raises PortInUse when a port is taken (nothing keeps running)."""
        from hubserver.plugins.bridge import RouterBridge
        from hubserver.plugins.broker import HubBroker

        self.loop = asyncio.get_running_loop()
        if self.tls_port and not (self.certfile and self.keyfile):
            raise HubserverError("MQTT_TLS_PORT is set but MQTT_TLS_CERTFILE / MQTT_TLS_KEYFILE are not")
        self.router.add_commit_listener(realtime_on_commit)  # live views: one event per batch and group
        await self.router.start()
        self.bridge = RouterBridge(self.router)
        self.broker = HubBroker(self.config(), bridge=self.bridge, lifecycle=self, max_connections=self.max_connections)
        self.bridge.broker = self.broker
        try:
            await self.broker.start()
        except BaseException as exc:
            await self._abort_start()
            bind_error = _os_error(exc)  # amqtt wraps the OSError of a failed bind in a BrokerError
            if bind_error is None:
                raise
            port = self.tls_port if self.tls_port and str(self.tls_port) in str(bind_error) else self.port
            reason = "address already in use" if "in use" in str(bind_error) else (bind_error.strerror or bind_error)
            raise PortInUse(f"cannot listen for MQTT on {self.host}:{port}: {reason}") from exc
        credentials_revoked.connect(self._on_revoked, dispatch_uid=f"hubserver.embedded.{id(self)}")
        from ..commands.dispatcher import CommandDispatcher

        self.commands = CommandDispatcher(self, self.router)
        await self.commands.start()
        logger.info(
            "MQTT listening on %s:%s%s", self.host, self.port, f" and TLS on {self.tls_port}" if self.tls_port else ""
        )

    async def _abort_start(self):
        for server in getattr(self.broker, "_servers", {}).values():
            await server.close_instance()
        await self.router.stop()
        self.router.remove_commit_listener(realtime_on_commit)

    async def stop(self):
        """Stop accepting, commit everything queued (releasing its acknowledgements), then close the clients."""
        credentials_revoked.disconnect(dispatch_uid=f"hubserver.embedded.{id(self)}")
        if self.broker is None:
            return
        if self.commands is not None:
            await self.commands.stop()
        for server in self.broker._servers.values():
            await server.close_instance()
        self.bridge.closing = True  # from now on a PUBLISH is refused unacknowledged; the client resends it
        await self.router.flush()
        await asyncio.sleep(0)  # let the handlers send the acknowledgements the last commit released
        self.broker.lifecycle = None
        for principal in self.broker.connected_principals():
            if isinstance(principal, DevicePrincipal):
                await self.router.device_disconnected(principal.type_name, principal.device_id, "hub stopping")
        await self.router.stop()
        self.router.remove_commit_listener(realtime_on_commit)
        await self.broker.shutdown()
        logger.info("MQTT stopped")

    async def publish(self, topic, payload, qos=1, retain=False):
        await self.broker.publish(topic, payload, qos=qos, retain=retain)

    def is_connected(self, client_id, topic=None):
        """Connected, and (given a topic) subscribed to a filter that matches it."""
        session, handler = self.broker._sessions.get(client_id, (None, None))
        if handler is None or not session.transitions.is_connected():
            return False
        return topic is None or self.broker.subscribed(client_id, topic)

    async def publish_to(self, client_id, topic, data, qos):
        """Send to one client's live session (a device's command); returns once it acknowledged (QoS >= 1)."""
        session, handler = self.broker._sessions.get(client_id, (None, None))
        if handler is None or not session.transitions.is_connected():
            raise ConnectionError(f"{client_id} is not connected")
        await handler.mqtt_publish(topic, data, qos, retain=False)

    async def websocket_connected(self, reader, writer):
        await self.broker.external_connected(reader, writer, self.WEBSOCKET_LISTENER)

    # Lifecycle callbacks from HubBroker: one connected/disconnected per device, whatever its connections.
    async def connected(self, principal):
        if isinstance(principal, DevicePrincipal):
            await self.router.device_connected(principal.type_name, principal.device_id)
            if self.commands is not None:
                self.commands.device_connected(principal.type_name, principal.device_id)

    async def subscribed(self, principal):
        if isinstance(principal, DevicePrincipal) and self.commands is not None:
            self.commands.device_connected(principal.type_name, principal.device_id)

    async def disconnected(self, principal):
        if isinstance(principal, DevicePrincipal):
            await self.router.device_disconnected(principal.type_name, principal.device_id, "disconnected")

    async def kick_username(self, mqtt_username):
        """Close every live session of the client with this username (deactivated or rotated credentials)."""
        for client_id, (session, _) in list(self.broker._sessions.items()):
            if session.username == mqtt_username:
                logger.info("disconnecting %s: its access was revoked", client_id)
                await self.broker.kick(client_id, forget=True)

    def _on_revoked(self, sender, mqtt_username=None, **kwargs):
        # May be sent from any thread (an admin save, the router's writer thread).
        if mqtt_username and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.kick_username(mqtt_username)))

    def stats(self):
        broker = self.broker
        return {
            "connected": sum(broker._live.values()) if broker else 0,
            "devices": sum(isinstance(p, DevicePrincipal) for p in broker._live) if broker else 0,
            "refused": dict(broker.refused) if broker else {},
            "dropped": dict(self.bridge.refused) if self.bridge else {},
            "sockets": broker.open_sockets if broker else 0,
            "closed": dict(broker.limit_counters.closed) if broker else {},
            "throttled": dict(broker.limit_counters.throttled) if broker else {},
            "throttled_seconds": broker.limit_counters.throttled_seconds if broker else 0.0,
        }

    def client_limits(self, client_id):
        """How often a client was closed or slowed down for breaking a limit (for the admin)."""
        return self.broker.limit_counters.for_client(client_id) if self.broker else {}


def _os_error(exc):
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
