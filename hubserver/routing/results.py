"""What the router tells its caller: a ``RouteResult`` per message, and why a message was refused.

A broker engine acknowledges a QoS 1 message only once its future holds a result; a future that holds
an exception (``BatchCommitError``, ``RouterNotRunning``) means "not stored, do not acknowledge".
"""

from dataclasses import dataclass, field
from datetime import datetime

from ..exceptions import HubserverError


class Refusal:
    """Reason codes of messages the router did not store (the keys of ``stats()["refused"]``)."""

    BAD_TOPIC = "bad_topic"  # not a device's data, status or reply message
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_DEVICE = "unknown_device"
    INACTIVE_DEVICE = "inactive_device"
    PAYLOAD_TOO_LARGE = "payload_too_large"


class RouterNotRunning(HubserverError, RuntimeError):
    """The router is not started (or is stopping): the message was not queued."""


class BatchCommitError(HubserverError):
    """The batch holding this message could not be committed (e.g. database locked); nothing was stored."""


@dataclass(frozen=True, slots=True)
class RouteResult:
    """The outcome of one message or lifecycle event, known once its batch has been committed.

    ``stored`` is True when the hub committed it (a Message row, a status change); ``processing_status``
    is the Message's ``completed``/``failed`` and ``error`` its reason. ``reason`` is a ``Refusal`` code
    when ``stored`` is False. What live views show travels here too (``readings``, ``status_fields``,
    ``received_at``, the status change), so nobody has to read back the rows a batch has just written.
    """

    stored: bool
    kind: str | None = None
    type_name: str | None = None
    device_id: str | None = None
    processing_status: str | None = None
    error: str = ""
    reason: str | None = None
    message_id: int | None = None
    reading_id: int | None = None
    readings: dict = field(default_factory=dict)
    timestamp: datetime | None = None
    old_status: str | None = None
    new_status: str | None = None
    correlation_id: str = ""
    # (newest Message id of the type before the batch, newest id of the batch): lets a live stream tell
    # whether it saw every row up to this batch (see hubserver.realtime.sse).
    cursors: tuple | None = None
    received_at: datetime | None = None
    status_fields: dict | None = None  # a status message's valid fields: status, battery_level, firmware_version
    state: dict | None = None  # the StateFields a status message or reply changed: {name: new value}

    @property
    def status_changed(self) -> bool:
        return self.new_status is not None and self.new_status != self.old_status


def refused(
    reason: str, error: str = "", *, kind: str | None = None, type_name: str | None = None, device_id: str | None = None
) -> RouteResult:
    return RouteResult(stored=False, kind=kind, type_name=type_name, device_id=device_id, reason=reason, error=error)
