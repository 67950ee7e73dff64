"""The composition root: ``Hub`` builds and owns the running parts of the hub, and wires them together.

    hub = Hub()            # reads BROKERS; ConfigurationError names a bad entry
    await hub.start()      # on the serving event loop
    ...
    await hub.stop()

A ``Hub`` owns the MessageRouter, one broker engine per ``BROKERS`` entry (each a ``BaseBroker``), the
command dispatcher, the realtime fan-out's subscriptions (to the router's commits and to the dispatcher's
command state changes) and the revocation wiring (revoked credentials end the device's sessions).
``hubserver run`` builds one; so does the tests' ``hub`` fixture.

Code that needs the running hub (the HTTP ingest view, the admin's limit counts, ``/metrics``, the MQTT
WebSocket endpoint) asks ``running_hub()``, the one accessor: it returns the Hub started in this process, or None
(e.g. the admin served without ``hubserver run``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .access.revocation import credentials_revoked
from .brokers.base import BaseBroker
from .brokers.embedded import EmbeddedBroker
from .brokers.loading import load_engines
from .commands.dispatcher import CommandDispatcher
from .realtime import fanout
from .routing import MessageRouter

logger = logging.getLogger("hubserver")

_running: list[Hub] = []  # the started hub (at most one): what running_hub() returns


def running_hub() -> Hub | None:
    """The Hub started in this process (``hubserver run``, a test's ``hub`` fixture), or None."""
    return _running[0] if _running else None


class Hub:
    """``embedded`` are keyword arguments for the embedded engine (``host``, ``port``, ``tls_port``,
    ``max_connections``...), overriding its settings: ``hubserver run --host/--mqtt-port``, tests' free
    ports. ``brokers`` limits the engines to these ``BROKERS`` entries (a worker's ``--broker``);
    ``engine_options`` are keyword arguments per entry (a worker's ``--client-id``). ``router`` replaces the
    MessageRouter (tests)."""

    def __init__(
        self,
        *,
        router: MessageRouter | None = None,
        embedded: Mapping[str, Any] | None = None,
        brokers: Iterable[str] | None = None,
        engine_options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.router = router or MessageRouter()
        self.brokers: dict[str, BaseBroker] = {}
        only = None if brokers is None else set(brokers)
        for entry in load_engines():
            if only is not None and entry.name not in only:
                continue  # a worker serves the entries it was given (``hubserver listen --broker``)
            options = dict(embedded or {}) if issubclass(entry.engine, EmbeddedBroker) else {}
            options.update((engine_options or {}).get(entry.name, {}))
            self.brokers[entry.name] = entry.engine(self, entry.name, entry.settings, **options)
        self.commands = CommandDispatcher(self.broker_for, self.router)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started: list[BaseBroker] = []
        self._wired = False
        self.dasf: Any = None  # the DASF topic broker's service, while the hub runs

    # What the parts ask of each other ----------------------------------------------------------------------

    @property
    def engine(self) -> BaseBroker:
        """The ``default`` broker engine (or the only one)."""
        return self.brokers.get("default") or next(iter(self.brokers.values()))

    def broker_for(self, device_type: Any) -> BaseBroker | None:
        """The engine that carries ``device_type``'s commands: the BROKERS entry its ``Meta.broker`` names."""
        return self.brokers.get(device_type._meta.broker)

    def websocket_engine(self) -> Any:
        """The engine that takes MQTT over WebSocket on the HTTP port (the embedded one), or None."""
        return next((engine for engine in self.brokers.values() if isinstance(engine, EmbeddedBroker)), None)

    async def device_connected(self, type_name: str, device_id: str) -> None:
        """An engine reports a device's session started: status online (router), its commands go out."""
        await self.router.device_connected(type_name, device_id)
        self.commands.device_connected(type_name, device_id)

    def device_subscribed(self, type_name: str, device_id: str) -> None:
        """An engine reports a device subscribed: commands waiting for it can go out now."""
        self.commands.device_connected(type_name, device_id)

    async def device_disconnected(self, type_name: str, device_id: str, reason: str = "") -> None:
        """An engine reports a device's last session ended: status offline (router)."""
        await self.router.device_disconnected(type_name, device_id, reason)

    def stats(self) -> dict[str, Any]:
        """The engines' counters (``BaseBroker.stats``), summed (``/metrics``)."""
        return _summed(
            [{"connected": 0, "devices": 0, "refused": {}, "dropped": {}}]
            + [engine.stats() for engine in self.brokers.values()]
        )

    def client_limits(self, client_id: str) -> dict[str, int]:
        """How often a client was closed or slowed down for breaking a limit, over every engine (the admin)."""
        return _summed([engine.client_limits(client_id) for engine in self.brokers.values()])

    # Lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the router, then every engine, then the dispatcher. If an engine cannot start, what was
        started is stopped again and its error is raised (e.g. ``PortInUse``)."""
        self.loop = asyncio.get_running_loop()
        self.router.add_commit_listener(fanout.on_commit)  # live views: one event per batch and group
        self.commands.add_listener(fanout.on_command_change)
        self._wired = True
        await self.router.start()
        try:
            for engine in self.brokers.values():
                await engine.start()
                self._started.append(engine)
        except BaseException:
            await self._stop_parts()
            raise
        try:
            await self._start_dasf()
        except BaseException:
            await self._stop_parts()
            raise
        credentials_revoked.connect(self._on_revoked, dispatch_uid=self._uid())
        await self.commands.start()
        if not _running:
            _running.append(self)

    async def stop(self) -> None:
        """Stop sending commands, stop every engine (each commits what it took and releases its
        acknowledgements), then the router."""
        if self in _running:
            _running.remove(self)
        if not self._wired:
            return  # never started, or stopped already
        credentials_revoked.disconnect(dispatch_uid=self._uid())
        await self.commands.stop()
        try:
            await self._stop_parts()  # DASF topics keep their MQTT rules until no client can reach them
        finally:
            await self._stop_dasf()

    async def _stop_parts(self) -> None:
        try:
            while self._started:
                await self._started.pop().stop()
        finally:
            await self.router.stop()
            if self._wired:
                self._wired = False
                self.router.remove_commit_listener(fanout.on_commit)
                self.commands.remove_listener(fanout.on_command_change)

    # The DASF topic broker --------------------------------------------------------------------------------

    async def _start_dasf(self) -> None:
        """When the ``hubserver.dasf`` app is installed: its service (writer, pings, garbage collection), and
        its topics on every engine that carries subscribers of its own, as ``<DASF_MQTT_PREFIX>/<slug>``."""
        from django.apps import apps

        if not apps.is_installed("hubserver.dasf"):
            return
        from .dasf.service import start_service

        self.dasf = await start_service()
        self.dasf.attach_mqtt([engine.publish_nowait for engine in self._started])

    async def _stop_dasf(self) -> None:
        if self.dasf is None:
            return
        from .dasf.service import stop_service

        self.dasf = None
        await stop_service()

    # Revocation ----------------------------------------------------------------------------------------------

    def _uid(self) -> str:
        return f"hubserver.hub.{id(self)}"

    def _on_revoked(self, sender: Any, mqtt_username: str | None = None, **kwargs: Any) -> None:
        # Sent from any thread (an admin save, the router's writer thread).
        loop = self.loop
        if mqtt_username and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._end_sessions(mqtt_username)))

    async def _end_sessions(self, mqtt_username: str) -> None:
        for engine in self._started:
            try:
                await engine.end_session(mqtt_username)
            except Exception:
                logger.exception("ending the sessions of %s on broker %r failed", mqtt_username, engine.name)


def _summed(counters: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers added up, ``{reason: count}`` dicts merged and added up."""
    total: dict[str, Any] = {}
    for counter in counters:
        for key, value in counter.items():
            if isinstance(value, dict):
                merged = total.setdefault(key, {})
                for reason, count in value.items():
                    merged[reason] = merged.get(reason, 0) + count
            else:
                total[key] = total.get(key, 0) + value
    return total
