"""The command dispatcher of the hub process: publishes pending commands to connected devices (at once, on
connect, and every few seconds for commands queued by other processes), records PUBACKs and replies, and
expires commands that outlive their Command's timeout. All state lives in the Message rows, so pending
commands survive a restart."""

import asyncio
import contextlib
import logging

import orjson
from channels.db import database_sync_to_async
from django.db import transaction
from django.utils import timezone

from ..realtime.fanout import publish_command_event
from ..registry import registry
from ..signals import device_command_sent

logger = logging.getLogger("hubserver.commands")

OPEN = ("pending", "sent", "delivered")


class CommandDispatcher:
    """``broker_for(device_type)`` is the ``BaseBroker`` that carries the type's commands (its
    ``Meta.broker``); the dispatcher uses its ``is_connected`` and ``publish_to_device``, which returns
    once the device acknowledged the command (QoS 1/2) or it was written (QoS 0)."""

    poll_interval = 2.0

    def __init__(self, broker_for, router=None):
        self._broker_for = broker_for
        self._router = router
        self._task = None
        self._wake = asyncio.Event()
        self._in_flight = set()  # (type_name, message pk) being delivered now
        self._tasks = set()

    async def start(self):
        if self._router is not None:
            self._router.add_reply_listener(self._on_reply)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="hubserver-commands")

    async def stop(self):
        if self._task is None:
            return  # not started
        if self._router is not None:
            self._router.remove_reply_listener(self._on_reply)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def notify(self, device_type, message_pk):
        """A command was queued in this process (any thread): send it without waiting for the next poll."""
        if self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    def device_connected(self, type_name, device_id):
        """A device connected or subscribed: look for its pending commands now. One wake-up serves every
        device that connected meanwhile (a query per type, not per device: a reconnect storm stays cheap)."""
        self._wake.set()

    def _spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self):
        while True:
            try:
                await self._expire()
                await self._send_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("command dispatch failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _send_pending(self, type_name=None, device_id=None):
        for device_type, message_model, rows in await _pending(type_name, device_id):
            for pk, client_id, topic, envelope, qos in rows:
                key = (device_type.type_name(), pk)
                if key in self._in_flight:
                    continue
                self._in_flight.add(key)
                self._spawn(self._send_one(device_type, message_model, key, client_id, topic, envelope, qos))

    async def _send_one(self, device_type, message_model, key, client_id, topic, envelope, qos):
        pk = key[1]
        try:
            broker = self._broker_for(device_type)
            if broker is None or not broker.is_connected(client_id, topic):
                return  # stays pending until the device connects and subscribes to its cmd topic
            await _set_status(message_model, pk, "sent", only=("pending",))
            await publish_command_event(message_model, pk)
            try:
                await broker.publish_to_device(
                    client_id, topic, orjson.dumps(envelope), qos=qos, correlation_id=envelope.get("correlation_id", "")
                )
            except (Exception, asyncio.CancelledError):
                # The connection went before the PUBACK: send it again on the next connection (devices
                # recognise repeats by correlation_id).
                await _set_status(message_model, pk, "pending", only=("sent",))
                await publish_command_event(message_model, pk)
                raise
            await _set_status(message_model, pk, "delivered", only=("sent",))
            await publish_command_event(message_model, pk)
            await _command_sent(device_type, message_model, pk, envelope)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            logger.info("command %s to %s not delivered yet: %s", envelope.get("command"), client_id, exc)
        finally:
            self._in_flight.discard(key)

    async def _expire(self):
        for device_type, pks in await _expire_overdue():
            logger.info("%d command(s) of %s expired without a reply", len(pks), device_type.__name__)
            for pk in pks:
                await publish_command_event(device_type._message_model, pk)

    async def _on_reply(self, device_type, device, message, reply):
        await _record_reply(device_type._message_model, device, reply)
        await publish_command_event(device_type._message_model, device=device, correlation_id=reply.correlation_id)


@database_sync_to_async
def _pending(type_name=None, device_id=None):
    """Pending, unexpired commands (oldest first), per type: (pk, client id, topic, envelope, qos)."""
    now = timezone.now()
    found = []
    for device_type, _, _, message_model in registry.all_with_models():
        if type_name is not None and device_type.type_name() != type_name:
            continue
        rows = message_model.objects.filter(
            direction="outbound", command_status="pending", expires_at__gt=now, device__is_active=True
        )
        if device_id is not None:
            rows = rows.filter(device__device_id=device_id)
        rows = rows.order_by("received_at", "pk").values_list(
            "pk", "device__mqtt_username", "topic", "payload_json", "command"
        )
        batch = []
        for pk, username, topic, envelope, name in rows[:1000]:
            command = device_type._commands.get(name)
            if username and command is not None:
                batch.append((pk, username, topic, envelope, command.qos))
        if batch:
            found.append((device_type, message_model, batch))
    return found


@database_sync_to_async
def _set_status(message_model, pk, status, only):
    message_model.objects.filter(pk=pk, command_status__in=only).update(command_status=status)


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
    """Mark overdue open commands expired; returns ``[(DeviceType, [pk, ...])]`` of those it changed."""
    now = timezone.now()
    expired = []
    for device_type, _, _, message_model in registry.all_with_models():
        with transaction.atomic():
            overdue = message_model.objects.filter(direction="outbound", command_status__in=OPEN, expires_at__lte=now)
            pks = list(overdue.values_list("pk", flat=True)[:1000])
            if pks:
                message_model.objects.filter(pk__in=pks, command_status__in=OPEN).update(
                    command_status="expired", processed_at=now
                )
                expired.append((device_type, pks))
    return expired


@database_sync_to_async
def _record_reply(message_model, device, reply):
    if not reply.correlation_id:
        return
    ok = reply.status in (None, "ok", "success", True)
    updated = message_model.objects.filter(
        device=device,
        direction="outbound",
        correlation_id=reply.correlation_id,
        command_status__in=OPEN,
    ).update(command_status="replied" if ok else "failed", command_result=reply.result, processed_at=timezone.now())
    if not updated:
        logger.info("reply %s from %s matches no open command", reply.correlation_id, device.device_id)
