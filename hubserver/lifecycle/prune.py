"""Removing what has outlived its retention, in small batches.

A pass makes a plan (``plan()``: per type, one ``Step`` per kind of row that is not kept forever) and
deletes each step's rows oldest first, ``batch_size`` at a time, each batch its own transaction: the ids of
the oldest rows past the cutoff are read through the kind's time index, then deleted by primary key. On
SQLite a batch holds the write lock for a few milliseconds; on PostgreSQL it locks only its own rows.

In the hub, ``Pruner`` runs a pass every ``PRUNE_INTERVAL`` seconds in the writer's thread, between the
writer's batches. While messages are being written it waits, after each delete batch, nine times as long
as the batch took: removal then takes at most about a tenth of the writer's time, however much is due.
When the writer is idle, batches follow one another at once. ``hubserver prune`` runs one pass now.
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from ..registry import registry
from ..vocabulary import CommandState
from .buckets import BUCKETS
from .durations import format_duration
from .retention import retention_for

logger = logging.getLogger("hubserver.lifecycle")

OPEN_COMMANDS = CommandState.OPEN
PAUSE_FACTOR = 9  # while messages are written, wait this many times a delete batch's duration before the next
IDLE_SHARE = 0.05  # the writer is idle if it spent less than this share of a delete cycle writing messages


@dataclass(eq=False)  # steps are told apart by identity (dict keys)
class Step:
    """The rows of one kind of one type that are past their retention."""

    type_name: str
    kind: str  # "messages", "commands", "readings", "rollups 1m", ...
    model: type
    keep: object  # the retention (a timedelta)
    cutoff: datetime
    order: str  # the indexed time column, oldest first
    filters: dict = field(default_factory=dict)
    excludes: dict = field(default_factory=dict)

    def queryset(self):
        rows = self.model._base_manager.filter(**{f"{self.order}__lt": self.cutoff}, **self.filters)
        return rows.exclude(**self.excludes) if self.excludes else rows

    def count(self):
        return self.queryset().count()

    def delete_batch(self, limit):
        """Delete up to ``limit`` of the oldest rows past the cutoff; returns ``(deleted, seconds)``."""
        started = time.perf_counter()
        with transaction.atomic():
            ids = list(self.queryset().order_by(self.order).values_list("pk", flat=True)[:limit])
            if ids:
                self.model._base_manager.filter(pk__in=ids).delete()
        return len(ids), time.perf_counter() - started

    def describe(self):
        return f"{self.type_name} {self.kind} older than {format_duration(self.keep)}"


def plan(now=None, type_names=None):
    """The Steps of a pass: for every type (or those named) and kind with a finite retention."""
    now = now or timezone.now()
    steps = []
    for device_type, _, reading_model, message_model in sorted(
        registry.all_with_models(), key=lambda row: row[0].type_name()
    ):
        name = device_type.type_name()
        if type_names and name not in type_names:
            continue
        keep = retention_for(device_type)

        def add(kind, model, retention, order, **options):
            if retention is not None and model is not None:
                steps.append(Step(name, kind, model, retention, now - retention, order, **options))  # noqa: B023

        add("messages", message_model, keep.messages, "received_at", filters={"direction": "inbound"})
        add(
            "commands",
            message_model,
            keep.commands,
            "received_at",
            filters={"direction": "outbound"},
            excludes={"command_status__in": OPEN_COMMANDS},
        )
        add("readings", reading_model, keep.readings, "timestamp")
        rollup_model = device_type.get_rollup_model()
        for label, seconds in BUCKETS.items():
            add(f"rollups {label}", rollup_model, keep.rollups[label], "start", filters={"bucket": seconds})
    return steps


def prune_now(steps, batch_size, on_batch=None):
    """Delete every step's rows, batch by batch, in this thread; returns ``{step: deleted}``."""
    removed = {}
    for step in steps:
        removed[step] = 0
        while True:
            deleted, _ = step.delete_batch(batch_size)
            removed[step] += deleted
            if on_batch is not None:
                on_batch(step, deleted)
            if deleted < batch_size:
                break
    return removed


class Pruner:
    """The hub's periodic pass. ``run_sync(function, *args)`` runs ``function`` in the writer's thread."""

    def __init__(self, run_sync, interval, batch_size, busy_seconds=None):
        self._run_sync = run_sync
        self.interval = interval
        self.batch_size = batch_size
        self._busy_seconds = busy_seconds or (lambda: 0.0)
        self._task = None
        self._wake = None
        self.passes = 0
        self.removed = {}  # (type name, kind) -> rows removed since start
        self.last_pass_seconds = None
        self.errors = 0

    def start(self):
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="hubserver-pruner")

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self):
        """Start a pass now instead of at the end of the interval."""
        if self._wake is not None:
            self._wake.set()

    async def _loop(self):
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                logger.exception("pruning failed; trying again in %s s", self.interval)

    async def run_pass(self):
        """One pass over every type and kind; returns the rows removed per ``(type name, kind)``."""
        started = time.monotonic()
        steps = await self._run_sync(plan)
        removed = {}
        for step in steps:
            key = (step.type_name, step.kind)
            while True:
                cycle_started, busy_before = time.monotonic(), self._busy_seconds()
                deleted, seconds = await self._run_sync(step.delete_batch, self.batch_size)
                if deleted:
                    removed[key] = removed.get(key, 0) + deleted
                    self.removed[key] = self.removed.get(key, 0) + deleted
                if deleted < self.batch_size:
                    break
                # Messages were being written meanwhile: give the writer nine times what this batch took.
                # Nothing was: go on at once.
                elapsed = time.monotonic() - cycle_started
                writing = self._busy_seconds() - busy_before
                await asyncio.sleep(seconds * PAUSE_FACTOR if writing > IDLE_SHARE * elapsed else 0)
        self.passes += 1
        self.last_pass_seconds = time.monotonic() - started
        if removed:
            logger.info(
                "pruned %s in %.1f s",
                ", ".join(f"{n} {kind} of {name}" for (name, kind), n in sorted(removed.items())),
                self.last_pass_seconds,
            )
        return removed

    def stats(self):
        return {
            "passes": self.passes,
            "removed": dict(self.removed),
            "last_pass_seconds": self.last_pass_seconds,
            "errors": self.errors,
        }
