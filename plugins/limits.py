"""The MQTT limits of docs/limits.md, read once from the settings when the broker starts, and what hitting
them costs a client: a count (``/metrics``), one log line a minute per kind, and for quotas a pause in
reading its socket.

The reader consults ``Limits`` attributes on its hot path, never ``hub_settings``.
"""

import logging
from collections import Counter
from dataclasses import dataclass

from hubserver.access.principals import DevicePrincipal
from hubserver.conf import hub_settings
from hubserver.registry import registry
from hubserver.routing.throttle import ThrottledLog

logger = logging.getLogger("hubserver.mqtt")

# A connection's write buffer (bytes the client has not read yet) above which the hub stops reading it.
WRITE_BUFFER_HIGH = 64 * 1024

# Seconds a closing connection gets to send what it still has before it is aborted.
CLOSE_TIMEOUT = 2.0

# Why the hub closed a connection (the label of hubserver_mqtt_closed_total).
CLOSE_REASONS = (
    "connect_timeout",
    "not_connect",
    "connect_too_large",
    "malformed_connect",
    "packet_too_large",
    "payload_too_large",
    "protocol_violation",
    "awaiting_rel",
    "not_stored",
)
# Why a message was not delivered to a client (the label of hubserver_mqtt_dropped_total).
DROP_REASONS = ("queue_full",)
# Which quota slowed a client down (the label of hubserver_mqtt_throttled_total).
THROTTLE_REASONS = ("messages", "bytes", "queue_share", "write_buffer", "websocket_buffer")


def transport_of(writer):
    """The asyncio transport under an amqtt writer adapter, or None (MQTT over WebSocket has none)."""
    stream = getattr(writer, "_writer", None)
    return getattr(stream, "transport", None)


def abort(writer):
    """Drop a connection at once, without sending what is buffered for it."""
    transport = transport_of(writer)
    if transport is not None:
        transport.abort()
    elif hasattr(writer, "abort"):
        writer.abort()


@dataclass(frozen=True, slots=True)
class Quota:
    """PUBLISHes and PUBLISH bytes per second with their bursts (0: no quota), and queue share."""

    message_rate: float
    message_burst: int
    byte_rate: float
    byte_burst: int
    queue_share: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_packet_size: int
    max_connect_size: int
    connect_timeout: float
    max_keepalive: int
    max_payload_size: int
    max_inflight: int
    max_queued: int
    max_awaiting_rel: int
    quota: Quota

    @classmethod
    def from_settings(cls):
        return cls(
            max_packet_size=hub_settings.MAX_PACKET_SIZE,
            max_connect_size=hub_settings.MAX_CONNECT_SIZE,
            connect_timeout=hub_settings.CONNECT_TIMEOUT,
            max_keepalive=hub_settings.MAX_KEEPALIVE,
            max_payload_size=hub_settings.MAX_PAYLOAD_SIZE,
            max_inflight=hub_settings.MAX_INFLIGHT_MESSAGES,
            max_queued=hub_settings.MAX_QUEUED_MESSAGES,
            max_awaiting_rel=hub_settings.MAX_AWAITING_REL,
            quota=Quota(
                message_rate=float(hub_settings.CLIENT_MESSAGE_RATE),
                message_burst=hub_settings.CLIENT_MESSAGE_BURST,
                byte_rate=float(hub_settings.CLIENT_BYTE_RATE),
                byte_burst=hub_settings.CLIENT_BYTE_BURST,
                queue_share=hub_settings.CLIENT_QUEUE_SHARE,
            ),
        )

    def quota_for(self, principal):
        """The settings' quota, with what the device's DeviceType ``Meta`` overrides."""
        if not isinstance(principal, DevicePrincipal):
            return self.quota
        device_type = registry.get(principal.type_name)
        overrides = getattr(getattr(device_type, "_meta", None), "quota", None) or {}
        if not overrides:
            return self.quota
        values = {name: getattr(self.quota, name) for name in Quota.__slots__}
        values.update(overrides)
        return Quota(**values)


class LimitCounters:
    """What the broker counts for ``/metrics`` and the admin: closes and throttles, in total and per client."""

    max_clients = 10_000  # clients remembered for the admin (the most recent ones)

    def __init__(self):
        self.closed = Counter(dict.fromkeys(CLOSE_REASONS, 0))  # every reason reported from the start
        self.throttled = Counter(dict.fromkeys(THROTTLE_REASONS, 0))
        self.throttled_seconds = 0.0
        self.dropped = Counter(dict.fromkeys(DROP_REASONS, 0))
        self.by_client = {}  # client id -> Counter of "closed:<reason>" / "throttled:<reason>", last time
        self._log = ThrottledLog(logger)

    def close(self, client_id, reason, message, *args):
        """Count a connection the hub closes for ``reason``; log it (once a minute per reason)."""
        self.closed[reason] += 1
        self._remember(client_id, f"closed:{reason}")
        self._log.warning(reason, None, message, *args)

    def drop(self, client_id, reason, message, *args):
        """Count a message the hub did not deliver to a client; log it (once a minute per client)."""
        self.dropped[reason] += 1
        self._remember(client_id, f"dropped:{reason}")
        self._log.warning(f"dropped:{reason}", client_id, message, *args)

    def throttle(self, client_id, reason, seconds, message, *args):
        self.throttled[reason] += 1
        self.throttled_seconds += seconds
        self._remember(client_id, f"throttled:{reason}")
        self._log.info(f"throttled:{reason}", client_id, message, *args)

    def _remember(self, client_id, what):
        if client_id is None:
            return
        counts = self.by_client.pop(client_id, None)  # re-inserted last: the dict keeps recency order
        if counts is None:
            counts = Counter()
            if len(self.by_client) >= self.max_clients:
                del self.by_client[next(iter(self.by_client))]
        counts[what] += 1
        self.by_client[client_id] = counts

    def for_client(self, client_id):
        return dict(self.by_client.get(client_id, {}))
