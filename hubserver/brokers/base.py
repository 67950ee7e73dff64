"""``BaseBroker``: what every broker engine is to the rest of the hub.

An engine carries MQTT traffic between devices and the hub. The composition root (``hubserver.hub.Hub``)
builds one per ``BROKERS`` entry, with the entry's name and settings and the hub itself, and then only
calls the methods below. In the other direction an engine calls the hub:

- ``hub.router.submit(kind, type_name, device_id, payload, qos=..., received_at=..., client_id=...)`` for
  every device message (``hubserver.routing.MessageRouter``). It returns a future; acknowledge a QoS 1/2
  message only once that future holds a result (stored, or refused: both are final), and never when it
  holds an exception (not stored: the device must send it again).
- ``await hub.device_connected(type_name, device_id)`` / ``hub.device_subscribed(...)`` /
  ``await hub.device_disconnected(type_name, device_id, reason)`` when a device's session starts, when
  it subscribes (its commands can go out now) and when it ends. Once per device, however many
  connections it has.

``docs/architecture.md`` describes the seam step by step.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..hub import Hub


class BaseBroker(abc.ABC):
    """One broker engine; subclasses implement every abstract method."""

    #: ``BROKERS`` keys the engine reads besides ``ENGINE``. Any other key given in its entry is refused
    #: at start-up and by ``hubserver check`` (a setting that is accepted and ignored is worse than none).
    settings_keys: ClassVar[frozenset[str]] = frozenset()
    #: True when two entries must not both use this engine in one process (it binds ports).
    one_per_process: ClassVar[bool] = False

    def __init__(self, hub: Hub, name: str, settings: Mapping[str, Any]) -> None:
        self.hub = hub
        self.name = name  # the BROKERS entry
        self.settings = settings  # the entry, defaults filled in

    @abc.abstractmethod
    async def start(self) -> None:
        """Start carrying traffic (the router is already running). Raise if that is impossible; the hub
        then stops what it started and the error reaches the user."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop taking messages, wait for the router to commit what was taken (``await
        hub.router.flush()``) so their acknowledgements go out, report the devices still connected as
        disconnected, then close the connections. The router stops after every engine has."""

    @abc.abstractmethod
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
        """Send one message to a device (``client_id`` is its MQTT client id, which is its
        ``mqtt_username``) on ``topic``. Returns once the device acknowledged it (QoS 1/2) or it was
        written (QoS 0); raises ``ConnectionError`` if the device is not connected or the connection drops
        first. Over MQTT 5 an engine sends ``correlation_id`` as Correlation Data (its UTF-8 bytes),
        ``response_topic`` (where the device's reply goes) and ``user_properties`` as properties; over
        MQTT 3.1.1 they cannot travel (the hub's command envelope carries the correlation id). The reply
        is matched by either: ``router.submit(..., properties=MessageProperties(correlation_id=...))``."""

    @abc.abstractmethod
    def is_connected(self, client_id: str, topic: str | None = None) -> bool:
        """Whether the device has a live session and, given ``topic``, a subscription matching it."""

    @abc.abstractmethod
    def connected_devices(self) -> list[tuple[str, str]]:
        """``(type name, device id)`` of every device with a live session through this engine."""

    @abc.abstractmethod
    async def end_session(self, mqtt_username: str) -> None:
        """Close every live session authenticated as ``mqtt_username`` and forget its persistent state
        (its credentials were rotated, it was deactivated or deleted)."""

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0) -> bool:
        """Queue a message from the hub itself (an application's topic: DASF's ``dasf/<topic>``) for the
        engine's clients whose subscriptions match ``topic``, each recipient's ACL applying; never waits.
        Returns False when nothing was queued (nobody subscribed). An engine whose clients are not its own
        (a client of an external broker) keeps this default: it carries no application topics."""
        return False

    def stats(self) -> dict[str, Any]:
        """Counters for ``/metrics``: ``connected`` (clients), ``devices``, ``refused`` (connections, by
        reason) and ``dropped`` (messages, by reason); the embedded engine adds its limit counters. Numbers
        and ``{reason: count}`` dicts, which the Hub sums over its engines."""
        return {}

    def client_limits(self, client_id: str) -> dict[str, int]:
        """How often this client was closed or slowed down for breaking a limit, by reason (the admin shows
        it); empty for an engine that does not enforce per-client limits."""
        return {}
