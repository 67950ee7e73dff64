"""``MessageRouter``: the broker-agnostic entry point of every device message and connection event.

Every way in calls ``submit()`` (or ``route()``) with the parts of a message (kind, device type, device id,
payload, receive time, QoS), never a topic: the embedded broker's bridge takes them from the topic it
checked, an external-broker engine from the topics it subscribed to, the HTTP ingest view from its URL.
Connection events come through ``device_connected()`` / ``device_disconnected()``. The router knows
nothing of MQTT libraries. Refusals (a kind that is not a device's, unknown type or device, oversize
payload) are answered at once, on the event loop, without a query; everything else goes through the
group-commit writer and is answered after its batch commits.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from ..conf import hub_settings
from ..exceptions import ConfigurationError
from ..lifecycle.prune import Pruner
from ..registry import registry
from ..vocabulary import MAX_TOPIC_LENGTH, Kind, Lifecycle, is_topic_level, topic_length
from .batch import write_batch
from .devices import DeviceCache, device_key
from .dispatch import Dispatcher
from .heartbeat import HeartbeatMonitor
from .properties import MessageProperties
from .results import Refusal, RouteResult, RouterNotRunning, refused
from .throttle import ThrottledLog
from .work import Work
from .writer import GroupCommitWriter

logger = logging.getLogger("hubserver.routing")
_INBOUND = Kind.INBOUND


class MessageRouter:
    """Create one per process, ``await start()`` on the serving event loop, ``await stop()`` on shutdown."""

    def __init__(self) -> None:
        self.devices = DeviceCache()
        self._dispatcher = Dispatcher()
        self._writer: Any = None  # the GroupCommitWriter, from start() on
        self._heartbeat: Any = None  # the HeartbeatMonitor, when HEARTBEAT_TIMEOUT > 0
        self.pruner: Any = None  # the Pruner, when PRUNE_INTERVAL > 0
        self._refusal_log = ThrottledLog(logger)
        self._counts: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._by_type: dict[str, Counter[str]] = {}  # type name -> Counter(received, stored, failed)
        self._refused_by_type: Counter[tuple[str, str]] = Counter()  # (type name, reason) -> count
        self._prefix = ""
        self._running = False
        self._started = False

    @property
    def running(self) -> bool:
        return self._running

    # Lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer thread, the dispatcher, (if HEARTBEAT_TIMEOUT > 0) the heartbeat monitor and (if
        PRUNE_INTERVAL > 0) the pruner that removes rows past their retention.

        Settings are read here: change them before starting.
        """
        if self._started:
            return
        if not settings.USE_TZ:
            raise ConfigurationError("the hub stores aware UTC timestamps: set USE_TZ = True in the Django settings")
        self._started = True
        self._prefix = hub_settings.TOPIC_PREFIX
        self._max_payload = hub_settings.MAX_PAYLOAD_SIZE
        device_models = [models[1] for models in registry.all_with_models()]
        self.devices.connect(device_models)
        self._writer = GroupCommitWriter(
            self._write_batch,
            batch_size=hub_settings.WRITER_BATCH_SIZE,
            queue_size=hub_settings.WRITER_QUEUE_SIZE,
            after_commit=self._after_commit,
        )
        await self._writer.start()
        await self._dispatcher.start()
        timeout = hub_settings.HEARTBEAT_TIMEOUT
        if timeout > 0:
            self._heartbeat = HeartbeatMonitor(timeout, self._heartbeat_timed_out)
            await self._adopt_online_devices(device_models)
            self._heartbeat.start()
        if hub_settings.PRUNE_INTERVAL > 0:  # retention: removal in the writer's thread, between batches
            self.pruner = Pruner(
                self._writer.run_sync,
                hub_settings.PRUNE_INTERVAL,
                hub_settings.PRUNE_BATCH_SIZE,
                busy_seconds=lambda: self._writer.commit_seconds.sum,
            )
            self.pruner.start()
        self._running = True

    async def stop(self) -> None:
        """Stop accepting, write and dispatch everything already queued, then stop the thread and tasks."""
        if not self._started:
            return
        self._running = False
        if self.pruner is not None:
            await self.pruner.stop()
            self.pruner = None
        if self._heartbeat is not None:
            await self._heartbeat.stop()
            self._heartbeat = None
        try:
            await self._writer.stop()
        finally:
            await self._dispatcher.stop()
            self.devices.disconnect()
            self.devices.clear()
            self._started = False

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed and its signals, hooks and listeners ran."""
        if self._writer is not None:
            await self._writer.join()
        await self._dispatcher.join()

    async def _adopt_online_devices(self, device_models: list[Any]) -> None:
        """Devices left "online" by a previous run go offline unless they show up within the timeout."""
        try:
            keys = await self._writer.run_sync(self.devices.load_online, device_models)
        except Exception:
            logger.exception("could not load the devices marked online")
            return
        for key in keys:
            self._heartbeat.touch(key)

    # Listeners ----------------------------------------------------------------------------------

    def add_commit_listener(self, callback: Callable[[list[RouteResult]], Any]) -> None:
        """``callback(results)`` (sync or async) runs once per committed batch with its stored RouteResults.

        Sync callbacks run on the event loop and must not block.
        """
        self._dispatcher.commit_listeners.append(callback)

    def remove_commit_listener(self, callback: Callable[[list[RouteResult]], Any]) -> None:
        self._dispatcher.commit_listeners.remove(callback)

    def add_reply_listener(self, callback: Callable[..., Any]) -> None:
        """``callback(device_type, device, message, reply)`` for each committed command reply (ParsedReply).

        The extension point for command tracking.
        """
        self._dispatcher.reply_listeners.append(callback)

    def remove_reply_listener(self, callback: Callable[..., Any]) -> None:
        self._dispatcher.reply_listeners.remove(callback)

    # Messages -----------------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        type_name: str,
        device_id: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        received_at: datetime | None = None,
        client_id: str | None = None,
        verified: bool = False,
        properties: MessageProperties | None = None,
    ) -> asyncio.Future[RouteResult]:
        """Queue one device message; returns a future resolved with its RouteResult once it is committed.

        ``kind`` is ``data``, ``status`` or ``reply`` (``hubserver.vocabulary.Kind``); ``type_name`` any
        spelling of a registered type; ``received_at`` when the engine received it (default: now);
        ``client_id`` names the sender in logs. ``verified=True`` says the caller has just read the device's
        row and found it active (the HTTP ingest view): a cached "unknown"/"inactive" answer is then stale
        and is dropped rather than returned.
        ``properties`` (``MessageProperties``): the message's content type, correlation id and user
        properties (MQTT 5), stored on its row; a reply's correlation id may come from here.

        Awaits only when the writer's queue is full. A refusal resolves the future at once (``stored``
        False, ``reason`` a Refusal code). A failed commit sets ``BatchCommitError`` on the future: do not
        acknowledge such a message.
        """
        if not self._running:
            raise RouterNotRunning("the router is not running")
        self._counts["received"] += 1
        if isinstance(payload, str):
            payload = payload.encode()
        if len(payload) > self._max_payload:
            error = f"payload of {len(payload)} bytes exceeds MAX_PAYLOAD_SIZE ({self._max_payload})"
            return self._refuse(
                Refusal.PAYLOAD_TOO_LARGE, error, kind, (type_name, device_id), client_id, by_type=False
            )
        if (
            kind not in _INBOUND
            or not is_topic_level(device_id)
            or topic_length(self._prefix, type_name, device_id, kind) > MAX_TOPIC_LENGTH
        ):
            error = "not a device's data, status or reply message"
            return self._refuse(Refusal.BAD_TOPIC, error, kind, (type_name, device_id), client_id, by_type=False)
        target = self._target(kind, type_name, device_id, client_id, verified)
        if isinstance(target, asyncio.Future):
            return target
        work = Work(
            kind=kind,
            payload=bytes(payload),
            qos=qos,
            client_id=client_id,
            received_at=_aware(received_at),
            properties=properties,
            **target,
        )
        await self._writer.put(work)
        return work.future

    async def route(
        self,
        kind: str,
        type_name: str,
        device_id: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        received_at: datetime | None = None,
        client_id: str | None = None,
        verified: bool = False,
        properties: MessageProperties | None = None,
    ) -> RouteResult:
        """``submit()`` and wait for the RouteResult."""
        future = await self.submit(
            kind,
            type_name,
            device_id,
            payload,
            qos=qos,
            received_at=received_at,
            client_id=client_id,
            verified=verified,
            properties=properties,
        )
        return await future

    # Connections --------------------------------------------------------------------------------

    async def device_connected(self, type_name: str, device_id: str) -> RouteResult:
        """A device's session started: status online, ``device_connected`` fired, heartbeat tracked.

        The broker has just authenticated it against its row, so whatever the cache remembers about it (an
        "unknown" from before another process created it, a stale instance) is dropped and reloaded.
        """
        self.devices.invalidate((type_name, device_id))
        return await self._lifecycle(Lifecycle.CONNECT, type_name, device_id)

    async def device_disconnected(self, type_name: str, device_id: str, reason: str = "") -> RouteResult:
        """A device's session ended: status offline, ``device_disconnected`` fired."""
        if reason:
            logger.info("device %s/%s disconnected: %s", type_name, device_id, reason)
        return await self._lifecycle(Lifecycle.DISCONNECT, type_name, device_id, reason=reason)

    async def _lifecycle(self, kind: str, type_name: str, device_id: str, reason: str = "") -> RouteResult:
        if not self._running:
            raise RouterNotRunning("the router is not running")
        target = self._target(kind, type_name, device_id)
        if isinstance(target, asyncio.Future):
            return await target
        work = Work(kind=kind, received_at=timezone.now(), reason=reason, **target)
        await self._writer.put(work)
        return await work.future

    async def _heartbeat_timed_out(self, key: tuple[str, str]) -> None:
        if not self._running:
            return
        device_type = registry.get(key[0])
        models = registry.get_models(key[0])
        if device_type is None or models is None:
            return
        future = asyncio.get_running_loop().create_future()
        work = Work(
            Lifecycle.HEARTBEAT_TIMEOUT, key, device_type, models, timezone.now(), future, reason="heartbeat timeout"
        )
        await self._writer.put(work)
        future.add_done_callback(_log_failure)

    # Internals ----------------------------------------------------------------------------------

    def _target(
        self, kind: str, type_name: str, device_id: str, client_id: str | None = None, verified: bool = False
    ) -> Any:
        """The Work fields naming the device, or a future already resolved with the refusal."""
        device_type = registry.get(type_name)
        models = registry.get_models(type_name) if device_type is not None else None
        if models is None:
            error = f"unknown device type {type_name!r}"
            return self._refuse(Refusal.UNKNOWN_TYPE, error, kind, (type_name, device_id), client_id)
        key = device_key(device_type, device_id)
        state = self.devices.peek(key)
        if isinstance(state, str):
            if verified:
                self.devices.invalidate(key)  # the writer loads the row the caller just read
            else:
                error = f"{state.replace('_', ' ')} {device_id!r}"
                return self._refuse(state, error, kind, key, client_id)
        future = asyncio.get_running_loop().create_future()
        return {"key": key, "device_type": device_type, "models": models, "future": future}

    def _refuse(
        self,
        reason: str,
        error: str,
        kind: str,
        key: tuple[str, str],
        client_id: str | None = None,
        *,
        by_type: bool = True,
    ) -> asyncio.Future[RouteResult]:
        """Count, log (throttled) and answer a message or event the hub does not store."""
        self._refused[reason] += 1
        if by_type:
            self._refused_by_type[(key[0], reason)] += 1
        self._refusal_log.warning(
            reason, (key, kind), "refused %s of %s/%s from client %s: %s", kind, *key, client_id or "?", error
        )
        future: asyncio.Future[RouteResult] = asyncio.get_running_loop().create_future()
        future.set_result(refused(reason, error, kind=kind, type_name=key[0], device_id=key[1]))
        return future

    def _write_batch(self, works: list[Work]) -> None:
        write_batch(works, self.devices)

    async def _after_commit(self, works: list[Work]) -> None:
        results: list[RouteResult] = []
        to_dispatch: list[Work] = []
        alive: dict[tuple, bool] = {}  # device key -> whether it is alive after this batch (its last event wins)
        for work in works:
            result = work.result
            if work.error is not None or result is None:
                self._counts["errors"] += 1
                continue
            type_counts = self._by_type.setdefault(work.key[0], Counter())
            type_counts["received"] += work.message is not None or not result.stored
            if not result.stored:
                reason = result.reason or "?"
                self._refused[reason] += 1
                self._refused_by_type[(work.key[0], reason)] += 1
                self._refusal_log.warning(
                    reason, (work.key, work.kind), "refused %s of %s/%s: %s", work.kind, *work.key, result.error
                )
                continue
            results.append(result)
            if work.message is not None:
                self._counts["stored"] += 1
                type_counts["stored"] += 1
                if result.processing_status == "failed":
                    self._counts["failed"] += 1
                    type_counts["failed"] += 1
            if work.kind != Lifecycle.HEARTBEAT_TIMEOUT:
                alive[work.key] = work.kind != Lifecycle.DISCONNECT
            if self._dispatcher.wants(work):
                to_dispatch.append(work)
        self._track(alive)
        await self._dispatcher.put(to_dispatch, results)

    def _track(self, alive: dict[tuple, bool]) -> None:
        """Heartbeat bookkeeping once per device per batch: touched, or forgotten once it disconnected."""
        if self._heartbeat is None:
            return
        for key, is_alive in alive.items():
            if is_alive:
                self._heartbeat.touch(key)
            else:
                self._heartbeat.forget(key)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: messages received/stored/failed, refusals by reason, batches."""
        writer = self._writer
        return {
            "received": self._counts["received"],
            "stored": self._counts["stored"],
            "failed": self._counts["failed"],
            "errors": self._counts["errors"],
            "refused": dict(self._refused),
            "batches": writer.batches if writer else 0,
            "last_batch_size": writer.last_batch_size if writer else 0,
            "max_batch_size": writer.max_batch_size if writer else 0,
            "commit_errors": writer.commit_errors if writer else 0,
            "uncommitted": writer.uncommitted if writer else 0,
            "queued": writer.queued if writer else 0,
            "tracked_devices": len(self._heartbeat) if self._heartbeat is not None else 0,
            "by_type": {name: dict(counts) for name, counts in self._by_type.items()},
            "refused_by_type": {f"{name}:{reason}": n for (name, reason), n in self._refused_by_type.items()},
            "commit_seconds": writer.commit_seconds.snapshot() if writer else None,
            "batch_sizes": writer.batch_sizes.snapshot() if writer else None,
        }


def _aware(received_at: datetime | None) -> datetime:
    """The broker's receive time as an aware UTC datetime (the hub runs with USE_TZ; naive means UTC)."""
    if received_at is None:
        return datetime.now(UTC)
    if received_at.tzinfo is None:
        return received_at.replace(tzinfo=UTC)
    return received_at.astimezone(UTC)


def _log_failure(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("marking a silent device offline failed: %s", future.exception())
