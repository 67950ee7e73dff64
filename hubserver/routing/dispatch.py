"""After commit: signals, DeviceType hooks and listeners, in commit order, off the writer's path.

Batches go through a small bounded queue to one task, so slow receivers delay other receivers (and
eventually, through back-pressure, the writer) but never a commit that is ready. Every receiver, hook and
listener is isolated: its exception is logged with the traceback and the next one runs.
"""

import asyncio
import inspect
import logging

from asgiref.sync import sync_to_async

from ..devicetype import DeviceType
from ..signals import (
    device_connected,
    device_data_received,
    device_disconnected,
    device_state_changed,
    device_status_changed,
)
from .work import CONNECTED, DISCONNECTED

logger = logging.getLogger("hubserver.routing")

_STOP = object()
_LIFECYCLE = {CONNECTED: device_connected, DISCONNECTED: device_disconnected}


def overrides(device_type, hook):
    """True if ``device_type`` defines its own ``hook`` (the base class's hooks do nothing)."""
    return getattr(device_type, hook) is not getattr(DeviceType, hook)


class Dispatcher:
    def __init__(self, max_pending_batches=8):
        self._max_pending = max_pending_batches
        self._queue = None
        self._task = None
        self._hooks = {}  # DeviceType -> instance the hooks are called on
        self.commit_listeners = []
        self.reply_listeners = []

    async def start(self):
        self._queue = asyncio.Queue(maxsize=self._max_pending)
        self._task = asyncio.create_task(self._run(), name="hubserver-dispatch")

    async def stop(self):
        """Dispatch everything already handed over, then stop."""
        if self._task is None:
            return
        await self._queue.put(_STOP)
        await self._task
        self._task = None

    def wants(self, work):
        """Whether ``work`` has anything to fire: checked before queuing, so silent batches cost nothing."""
        sender = work.device_type
        if work.event is not None and _LIFECYCLE[work.event].has_listeners(sender):
            return True
        if work.new_status is not None and (
            device_status_changed.has_listeners(sender) or overrides(sender, "on_status_change")
        ):
            return True
        if work.reading is not None and (device_data_received.has_listeners(sender) or overrides(sender, "on_data")):
            return True
        if work.state_changes and (device_state_changed.has_listeners(sender) or overrides(sender, "on_state_change")):
            return True
        return work.reply is not None and bool(self.reply_listeners)

    async def put(self, works, results):
        """Hand over one committed batch: ``works`` to signal about, ``results`` for commit listeners."""
        if works or (results and self.commit_listeners):
            await self._queue.put((works, results))

    async def _run(self):
        while (item := await self._queue.get()) is not _STOP:
            works, results = item
            for listener in list(self.commit_listeners):
                await _call(listener, results)
            for work in works:
                try:
                    await self._dispatch(work)
                except Exception:  # each call is guarded; this keeps the task alive whatever happens
                    logger.exception("dispatching %s for %s/%s failed", work.kind, *work.key)
            self._queue.task_done()
        self._queue.task_done()

    async def join(self):
        """Wait until every batch handed over so far has been dispatched."""
        if self._queue is not None:
            await self._queue.join()

    async def _dispatch(self, work):
        sender, device = work.device_type, work.device
        if work.event is not None:
            await _send(_LIFECYCLE[work.event], sender, device=device)
        if work.new_status is not None:
            await _send(
                device_status_changed, sender, device=device, old_status=work.old_status, new_status=work.new_status
            )
            await self._hook(sender, "on_status_change", device, work.old_status, work.new_status)
        if work.reading is not None:
            await _send(
                device_data_received, sender, device=device, readings=work.readings, message=_instance(work.message)
            )
            await self._hook(sender, "on_data", device, work.readings)
        if work.state_changes:
            changes = dict(work.state_changes)
            await _send(device_state_changed, sender, device=device, changes=changes, message=_instance(work.message))
            await self._hook(sender, "on_state_change", device, changes)
        if work.reply is not None:
            for listener in list(self.reply_listeners):
                await _call(listener, sender, device, _instance(work.message), work.reply)

    async def _hook(self, device_type, name, *args):
        if not overrides(device_type, name):
            return
        try:
            instance = self._hooks.get(device_type)
            if instance is None:
                instance = self._hooks[device_type] = device_type()
            hook = getattr(instance, name)
            if inspect.iscoroutinefunction(hook):
                await hook(*args)
            else:
                await sync_to_async(hook)(*args)
        except Exception:
            logger.exception("%s.%s() failed", device_type.__name__, name)


def _instance(row):
    """The saved Message instance of a row the writer inserted (receivers get model instances)."""
    return row.instance() if row is not None else None


async def _send(signal, sender, **kwargs):
    if not signal.has_listeners(sender):
        return
    try:
        responses = await signal.asend_robust(sender=sender, **kwargs)
    except Exception:
        logger.exception("sending a device signal failed")
        return
    for receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("signal receiver %r failed", receiver, exc_info=response)


async def _call(callback, *args):
    """Call a listener, sync (it runs on the event loop: keep it short) or async."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("router listener %r failed", callback)
