"""The command dispatcher of the hub process: publishes pending commands to connected devices (at once, on
connect, and every few seconds for commands queued by other processes), records acknowledgements and
replies, and expires commands that outlive their Command's timeout. All state lives in the Message rows,
so pending commands survive a restart.

Every state change is emitted here and only here, as a ``CommandChange`` to the listeners
(``add_listener``), in the order the changes happen: ``pending`` when the dispatcher learns of a command
(``command_queued`` from ``send_command()`` in this process, or its poll for the others), ``sent`` and
``delivered`` around the publish (``sent`` back to ``pending`` if the connection drops first), ``replied``
or ``failed`` on the device's reply, ``expired`` on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

import orjson
from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from ..conf import hub_settings
from ..registry import registry
from ..signals import device_command_sent
from ..vocabulary import CommandState, Direction, Kind, device_topic
from .events import CommandChange, command_queued

logger = logging.getLogger("hubserver.commands")

OPEN = CommandState.OPEN
Listener = Callable[[CommandChange], Any]


class CommandDispatcher:
    """``broker_for(device_type)`` is the ``BaseBroker`` that carries the type's commands (its
    ``Meta.broker``); the dispatcher uses its ``is_connected`` and ``publish_to_device``. ``router`` (a
    MessageRouter) hands it the devices' committed replies."""

    poll_interval = 2.0

    def __init__(self, broker_for: Callable[[Any], Any], router: Any = None) -> None:
        self._broker_for = broker_for
        self._router = router
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._in_flight: set[tuple[str, int]] = set()  # (type_name, message pk) being delivered now
        self._announced: set[tuple[str, int]] = set()  # commands whose last emitted state is pending
        self._tasks: set[asyncio.Future] = set()
        self._listeners: list[Listener] = []
        self._changes: asyncio.Queue | None = None
        self._emitter: asyncio.Task | None = None

    # Listeners -------------------------------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """``callback(change)`` (sync or async) for every command state change, in order. Sync callbacks run
        on the event loop and must not block; a listener's exception is logged and the next one runs."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        self._listeners.remove(callback)

    def _emit(self, change: CommandChange) -> None:
        """Record ``change`` and hand it to the listeners, in emission order (never waits)."""
        key = (change.type_name, change.message_id)
        if change.state == CommandState.PENDING:
            self._announced.add(key)
        else:
            self._announced.discard(key)
        if self._changes is not None and self._listeners:
            self._changes.put_nowait(change)

    async def _run_emitter(self) -> None:
        while True:
            change = await self._changes.get()
            for listener in list(self._listeners):
                try:
                    result = listener(change)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("command listener %r failed", listener)
            self._changes.task_done()

    async def join(self) -> None:
        """Wait until the listeners have seen every change emitted so far."""
        if self._changes is not None:
            await self._changes.join()

    # Lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._router is not None:
            self._router.add_reply_listener(self._on_reply)
        self._loop = asyncio.get_running_loop()
        self._changes = asyncio.Queue()
        self._emitter = asyncio.create_task(self._run_emitter(), name="hubserver-command-events")
        command_queued.connect(self._on_queued, dispatch_uid=self._uid())
        self._task = asyncio.create_task(self._run(), name="hubserver-commands")

    async def stop(self) -> None:
        if self._task is None:
            return  # not started
        command_queued.disconnect(dispatch_uid=self._uid())
        if self._router is not None:
            self._router.remove_reply_listener(self._on_reply)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._emitter is not None:
            await self.join()  # the last changes still reach the listeners
            self._emitter.cancel()
            await asyncio.gather(self._emitter, return_exceptions=True)
            self._emitter = None

    def _uid(self) -> str:
        return f"hubserver.commands.dispatcher.{id(self)}"

    def notify(self, device_type: Any = None, message_pk: int | None = None) -> None:
        """Look for pending commands now rather than at the next poll (callable from any thread)."""
        if self._task is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_queued(self, sender: Any, change: CommandChange, **kwargs: Any) -> None:
        """``command_queued``, from the thread that committed the command: announce it and send it now."""
        if self._task is None or self._loop is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._queued, change)

    def _queued(self, change: CommandChange) -> None:
        key = (change.type_name, change.message_id)
        if key not in self._announced and key not in self._in_flight:  # the poll may have been quicker
            self._emit(change)
        self._wake.set()

    def device_connected(self, type_name: str, device_id: str) -> None:
        """A device connected or subscribed: look for its pending commands now. One wake-up serves every
        device that connected meanwhile (a query per type, not per device: a reconnect storm stays cheap)."""
        self._wake.set()

    # The loop --------------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            # Cleared before the pass, not after it: a notify() that arrives during the pass (a command
            # queued, a device connected) makes another pass at once instead of waiting for the next poll.
            self._wake.clear()
            try:
                await self._expire()
                await self._send_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("command dispatch failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _send_pending(self) -> None:
        for device_type, message_model, rows in await _pending():
            for change, client_id, topic, envelope, qos in rows:
                key = (change.type_name, change.message_id)
                if key in self._in_flight:
                    continue
                if key not in self._announced:
                    self._emit(change)  # queued by another process (or before this hub started)
                self._in_flight.add(key)
                self._spawn(self._send_one(device_type, message_model, change, client_id, topic, envelope, qos))

    async def _send_one(self, device_type, message_model, change, client_id, topic, envelope, qos):
        key = (change.type_name, change.message_id)
        pk = change.message_id
        try:
            broker = self._broker_for(device_type)
            if broker is None or not broker.is_connected(client_id, topic):
                return  # stays pending until the device connects and subscribes to its cmd topic
            if not await _set_status(message_model, pk, CommandState.SENT, only=(CommandState.PENDING,)):
                return  # no longer pending (expired, deleted)
            self._emit(change.moved(CommandState.SENT))
            try:
                await broker.publish_to_device(
                    client_id,
                    topic,
                    orjson.dumps(envelope),
                    qos=qos,
                    correlation_id=change.correlation_id,
                    response_topic=_reply_topic(change),
                    user_properties={"command": change.command},
                )
            except (Exception, asyncio.CancelledError):
                # The connection went before the acknowledgement: send it again on the next connection
                # (devices recognise repeats by correlation_id).
                if await _set_status(message_model, pk, CommandState.PENDING, only=(CommandState.SENT,)):
                    self._emit(change.moved(CommandState.PENDING))
                raise
            if await _set_status(message_model, pk, CommandState.DELIVERED, only=(CommandState.SENT,)):
                self._emit(change.moved(CommandState.DELIVERED))
            await _command_sent(device_type, message_model, pk, envelope)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            logger.info("command %s to %s not delivered yet: %s", envelope.get("command"), client_id, exc)
        finally:
            self._in_flight.discard(key)

    async def _expire(self) -> None:
        for device_type, changes in await _expire_overdue():
            logger.info("%d command(s) of %s expired without a reply", len(changes), device_type.__name__)
            for change in changes:
                self._emit(change)

    async def _on_reply(self, device_type, device, message, reply) -> None:
        for previous, change in await _record_reply(device_type, device, reply):
            if previous == CommandState.SENT:
                # A reply can overtake the acknowledgement (a device answers before it acknowledges): the
                # reply proves delivery, so viewers see every state, in order.
                self._emit(change.moved(CommandState.DELIVERED, at=change.at))
            self._emit(change)


def _reply_topic(change):
    """Where the device answers a command: its ``reply`` topic (MQTT 5 sends it as the Response Topic)."""
    return device_topic(hub_settings.TOPIC_PREFIX, change.type_name, change.device_id, Kind.REPLY)


def _change(type_name, row, state=None, **moved):
    """A CommandChange from a ``values()`` row of an outbound Message."""
    return CommandChange(
        type_name,
        row["device__device_id"],
        row["pk"],
        row["correlation_id"],
        row["command"],
        state or row["command_status"],
        moved.get("result"),
        moved.get("at") or row["received_at"],
    )


_FIELDS = ("pk", "device__device_id", "correlation_id", "command", "command_status", "received_at")


@database_sync_to_async
def _pending():
    """Pending, unexpired commands (oldest first), per type: (change, client id, topic, envelope, qos)."""
    now = timezone.now()
    found = []
    for device_type, _, _, message_model in registry.all_with_models():
        type_name = device_type.type_name()
        rows = message_model.objects.filter(
            direction=Direction.OUTBOUND,
            command_status=CommandState.PENDING,
            expires_at__gt=now,
            device__is_active=True,
        ).order_by("received_at", "pk")
        batch = []
        for row in rows.values(*_FIELDS, "device__mqtt_username", "topic", "payload_json")[:1000]:
            command = device_type._commands.get(row["command"])
            if row["device__mqtt_username"] and command is not None:
                change = _change(type_name, row)
                batch.append((change, row["device__mqtt_username"], row["topic"], row["payload_json"], command.qos))
        if batch:
            found.append((device_type, message_model, batch))
    return found


@database_sync_to_async
def _set_status(message_model, pk, status, only):
    """Move the command to ``status`` if it is in one of ``only``; True if it moved."""
    return bool(message_model.objects.filter(pk=pk, command_status__in=only).update(command_status=status))


@database_sync_to_async
def _load(message_model, pk):
    return message_model.objects.select_related("device").get(pk=pk)


async def _command_sent(device_type, message_model, pk, envelope):
    message = await _load(message_model, pk)
    await device_command_sent.asend_robust(
        sender=device_type, device=message.device, command=envelope["command"], payload=envelope.get("payload") or {}
    )


@database_sync_to_async
def _expire_overdue():
    """Mark overdue open commands expired; returns ``[(DeviceType, [CommandChange, ...])]`` of those it changed."""
    now = timezone.now()
    expired = []
    for device_type, _, _, message_model in registry.all_with_models():
        with transaction.atomic():
            overdue = message_model.objects.filter(
                direction=Direction.OUTBOUND, command_status__in=OPEN, expires_at__lte=now
            )
            rows = list(overdue.values(*_FIELDS)[:1000])
            if rows:
                message_model.objects.filter(pk__in=[row["pk"] for row in rows], command_status__in=OPEN).update(
                    command_status=CommandState.EXPIRED, processed_at=now
                )
                type_name = device_type.type_name()
                expired.append((device_type, [_change(type_name, row, CommandState.EXPIRED, at=now) for row in rows]))
    return expired


@database_sync_to_async
def _record_reply(device_type, device, reply):
    """Close the open command the reply answers; returns ``[(state it was in, its CommandChange)]`` (empty if
    nothing matched)."""
    if not reply.correlation_id:
        return []
    message_model = device_type._message_model
    ok = reply.status in (None, "ok", "success", True)
    state = CommandState.REPLIED if ok else CommandState.FAILED
    now = timezone.now()
    with transaction.atomic():
        matching = message_model.objects.filter(
            device=device,
            direction=Direction.OUTBOUND,
            correlation_id=reply.correlation_id,
            command_status__in=OPEN,
        )
        rows = list(matching.values(*_FIELDS))
        if rows:
            message_model.objects.filter(pk__in=[row["pk"] for row in rows]).update(
                command_status=state, command_result=reply.result, processed_at=now
            )
    if not rows:
        logger.info("reply %s from %s matches no open command", reply.correlation_id, device.device_id)
    type_name = device_type.type_name()
    return [(row["command_status"], _change(type_name, row, state, result=reply.result, at=now)) for row in rows]
