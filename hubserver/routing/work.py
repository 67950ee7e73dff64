"""One unit of work for the writer: an inbound message or a connection event, and what became of it.

The event loop fills the request fields; the ORM thread fills the outcome fields while it builds and
commits the batch; after commit the event loop reads the outcome to resolve futures and fire signals.
The two never touch a ``Work`` at the same time.
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from .results import RouteResult

# Lifecycle signals a Work fires after commit.
CONNECTED = "connected"
DISCONNECTED = "disconnected"


@dataclass(slots=True, eq=False)
class Work:
    kind: str  # a vocabulary Kind (data, status, reply) or Lifecycle event
    key: tuple  # (normalized type name, device_id)
    device_type: type
    models: tuple  # (Device, Reading, Message) models
    received_at: datetime
    future: asyncio.Future
    payload: bytes = b""
    qos: int = 0
    client_id: str | None = None
    reason: str = ""  # why a device disconnected
    properties: object = None  # properties.MessageProperties (MQTT 5 content type, correlation, user properties)
    # Set in the ORM thread.
    device: object = None
    message: object = None  # inserts.StoredRow of the Message (instance() for a model instance)
    reading: object = None  # inserts.StoredRow of the Reading
    readings: dict = field(default_factory=dict)
    status_fields: dict | None = None  # a status message's valid fields (status, battery_level, firmware)
    reply: object = None
    state_changes: dict | None = None  # {StateField: (old, new)} a status message or reply changed
    old_status: str | None = None
    new_status: str | None = None
    event: str | None = None
    result: RouteResult | None = None
    error: BaseException | None = None

    @property
    def device_id(self):
        return self.key[1]
