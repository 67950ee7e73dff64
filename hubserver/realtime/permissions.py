"""Permission decorators of the consumer's handlers, and the check SSE and polling share.

The API's rules (``hubserver.api.permissions``): reading a type's devices and readings needs ``view`` on
its Device and Reading models; command events need ``view`` on its Message model too (the API's command
history); sending a command needs ``change`` on its Device model. Checks run off the event loop, once per
subscribe / command / stream, never per frame, with the user's permissions re-read each time (a revoked
permission applies to the next subscription, not to ones already granted).

A decorator resolves the target from the client event (``device_type``, ``device_id``), checks, and injects
it into the handler as ``target`` (an ``AccessTarget``); a failure raises ``EventError`` which the exception
decorator answers as a structured error.
"""

import contextlib
import functools
from dataclasses import dataclass

from channels.db import database_sync_to_async

from ..api.permissions import perm
from .errors import BAD_REQUEST, PERMISSION_DENIED, UNKNOWN_DEVICE, EventError
from .events import resolve_type

VIEW = "view"
CHANGE = "change"
MAX_DEVICE_ID_LENGTH = 128


@dataclass(frozen=True)
class AccessTarget:
    device_type: type
    models: tuple  # (Device, Reading, Message)
    type_name: str  # normalized
    device_id: str | None
    device: object  # the Device row when device_id was given
    can_view_commands: bool


def _fresh(user):
    """Forget cached permissions (ModelBackend caches them on the user) and re-read the active flags."""
    for name in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        with contextlib.suppress(AttributeError):
            delattr(user, name)
    # A custom user model without these fields, or a user deleted meanwhile: keep what we have.
    with contextlib.suppress(Exception):
        user.refresh_from_db(fields=["is_active", "is_superuser"])


def check_access(user, type_name, device_id, kind):
    """(sync: call off the loop) The ``AccessTarget`` if ``user`` may ``kind`` ("view"/"change") it."""
    device_type, models = resolve_type(type_name)
    device_model, reading_model, message_model = models
    if user is None or not user.is_authenticated:
        raise EventError(PERMISSION_DENIED, "authentication required")
    _fresh(user)
    needed = [perm(device_model, kind)]
    if kind == VIEW:
        needed.append(perm(reading_model, VIEW))
    if not user.is_active or not user.has_perms(needed):
        raise EventError(PERMISSION_DENIED, f"you may not {kind} {device_type.type_name()} devices")
    device = None
    if device_id is not None:
        device = device_model._default_manager.filter(device_id=device_id).first()
        if device is None:
            raise EventError(UNKNOWN_DEVICE, f"no {device_type.type_name()} device {device_id!r}")
    can_view_commands = user.has_perms([perm(device_model, VIEW), perm(message_model, VIEW)])
    return AccessTarget(device_type, models, device_type.type_name(), device_id, device, can_view_commands)


acheck_access = database_sync_to_async(check_access)


def event_target(event, require_device):
    """``(device_type, device_id)`` of a client event, checked for shape (not for existence)."""
    type_name = event.get("device_type")
    if not isinstance(type_name, str) or not type_name:
        raise EventError(BAD_REQUEST, "'device_type' must be a non-empty string")
    device_id = event.get("device_id")
    if device_id is None and require_device:
        raise EventError(BAD_REQUEST, "'device_id' is required")
    if device_id is not None and (
        not isinstance(device_id, str) or not device_id or len(device_id) > MAX_DEVICE_ID_LENGTH
    ):
        raise EventError(BAD_REQUEST, f"'device_id' must be a string of 1 to {MAX_DEVICE_ID_LENGTH} characters")
    return type_name, device_id


def _requires(kind, require_device):
    def decorator(handler):
        @functools.wraps(handler)
        async def wrapper(self, event, **kwargs):
            type_name, device_id = event_target(event, require_device)
            target = await acheck_access(self.scope.get("user"), type_name, device_id, kind)
            return await handler(self, event, target=target, **kwargs)

        return wrapper

    return decorator


requires_view = _requires(VIEW, require_device=False)
"""The user may view the event's type (and its ``device_id``, if given, exists)."""

requires_change = _requires(CHANGE, require_device=True)
"""The user may change devices of the event's type, and its ``device_id`` exists."""
