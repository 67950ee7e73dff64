"""Sending a command: validate it against its ``Command`` declaration, keep it as an outbound Message, and
tell the hub process's dispatcher, which publishes it now or when the device next connects."""

import logging
import uuid
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from ..conf import hub_settings
from ..exceptions import ValidationError
from ..vocabulary import CommandState, Direction, Kind, device_topic
from .events import CommandChange, command_queued

logger = logging.getLogger("hubserver.commands")


def _device_type_of(device):
    device_type = getattr(type(device), "_device_type_cls", None)
    if device_type is None:
        raise ValidationError(f"{device!r} is not a device of a registered DeviceType")
    return device_type


def prepare(device, name, payload=None):
    """Validate; return ``(Command, payload)`` or raise ValidationError naming the problem."""
    device_type = _device_type_of(device)
    command = device_type._commands.get(name)
    if command is None:
        known = ", ".join(device_type._commands) or "none"
        raise ValidationError(f"{device_type.__name__} has no command {name!r}; its commands: {known}")
    return command, command.validate(payload)


def send_command(device, name, payload=None):
    """Queue command ``name`` for ``device`` and return its outbound Message (``command_status`` pending).

    The hub publishes it on ``{prefix}/{type}/{id}/cmd`` as ``{"command", "payload", "correlation_id"}``
    at the Command's QoS, at once if the device is connected, otherwise when it connects; it expires after
    the Command's ``timeout`` seconds without a reply. Works from any process that shares the database.
    Inside a transaction, the hub hears of it when the transaction commits.
    """
    command, payload = prepare(device, name, payload)
    device_type = _device_type_of(device)
    message_model = device_type._message_model
    correlation_id = uuid.uuid4().hex
    now = timezone.now()
    type_name = device_type.type_name()
    message = message_model.objects.create(
        device=device,
        direction=Direction.OUTBOUND,
        topic=device_topic(hub_settings.TOPIC_PREFIX, type_name, device.device_id, Kind.CMD),
        payload_json={"command": name, "payload": payload, "correlation_id": correlation_id},
        correlation_id=correlation_id,
        command=name,
        command_status=CommandState.PENDING,
        expires_at=now + timedelta(seconds=command.timeout),
        received_at=now,
    )
    change = CommandChange(type_name, device.device_id, message.pk, correlation_id, name, CommandState.PENDING, at=now)
    using = message._state.db
    transaction.on_commit(lambda: _announce(device_type, change), using=using)
    return message


def _announce(device_type, change):
    for receiver, result in command_queued.send_robust(sender=device_type, change=change):
        if isinstance(result, Exception):
            logger.error("command_queued receiver %r failed", receiver, exc_info=result)


async def asend_command(device, name, payload=None):
    """``send_command`` for async code: the database work runs off the event loop."""
    return await sync_to_async(send_command)(device, name, payload)
