"""What the command layer tells its listeners: a ``CommandChange`` each time a command changes state.

The dispatcher emits every change in one place (``CommandDispatcher.add_listener``), in the order they
happen, whoever queued the command (the REST API, the admin, a WebSocket, ``send_command()`` in this or
another process). ``command_queued`` is how ``send_command()`` tells a dispatcher in its own process that a
command is waiting; it is sent after the transaction that stored the command commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.dispatch import Signal

# sender: the DeviceType; change: the CommandChange (state "pending") of the Message just stored.
command_queued = Signal()


@dataclass(frozen=True, slots=True)
class CommandChange:
    """A command (an outbound Message row) moved to ``state`` (a ``vocabulary.CommandState``).

    It carries everything a live view shows of the command, so nobody reads the row again: ``at`` is
    when it was processed (replied, failed, expired), otherwise when it was queued."""

    type_name: str
    device_id: str
    message_id: int
    correlation_id: str
    command: str
    state: str
    result: Any = None
    at: datetime | None = None

    def moved(self, state: str, *, result: Any = None, at: datetime | None = None) -> CommandChange:
        """The same command in another state."""
        return CommandChange(
            self.type_name,
            self.device_id,
            self.message_id,
            self.correlation_id,
            self.command,
            state,
            result,
            at or self.at,
        )
