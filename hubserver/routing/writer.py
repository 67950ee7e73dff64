"""``GroupCommitWriter``: one transaction per batch, batches as big as the backlog, no fixed wait.

The writer takes whatever is queued (up to ``batch_size``) the moment it is free, so batches are small
when the hub is idle (low latency) and grow with the load (few commits). The queue is bounded: producers
await when it is full instead of the process growing without limit. All ORM work runs in one thread the
writer owns, so its database connection (and SQLite's WAL state) persists across batches.

Futures are resolved only after the commit: a broker engine acknowledges QoS 1 from them.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from .histogram import BATCH_SIZE_BUCKETS, COMMIT_SECONDS_BUCKETS, Histogram
from .results import BatchCommitError, RouterNotRunning

logger = logging.getLogger("hubserver.routing")

_STOP = object()


class GroupCommitWriter:
    """Queue items (each with a ``future``); ``write_batch(items)`` runs in the ORM thread and sets
    ``item.result`` or ``item.error``; ``after_commit(items)`` then runs on the event loop."""

    def __init__(self, write_batch, *, batch_size, queue_size, after_commit=None, name="hubserver-writer"):
        self._write_batch = write_batch
        self._after_commit = after_commit
        self.batch_size = batch_size
        self._queue_size = queue_size
        self._name = name
        self._queue = None
        self._task = None
        self._executor = None
        self._accepting = False
        self._finished = False
        self.batches = 0
        self.commit_seconds = Histogram(COMMIT_SECONDS_BUCKETS)
        self.batch_sizes = Histogram(BATCH_SIZE_BUCKETS)
        self.last_batch_size = 0
        self.max_batch_size = 0
        self.commit_errors = 0
        self.uncommitted = 0

    @property
    def queued(self):
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        self._accepting = True
        self._finished = False
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def run_sync(self, function, *args):
        """Run ``function(*args)`` in the ORM thread (between batches) and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def put(self, item):
        """Queue ``item``; awaits only while the queue is full (back-pressure)."""
        if not self._accepting:
            raise RouterNotRunning("the router is not running")
        if not self._queue.full():
            self._queue.put_nowait(item)  # the usual case: no coroutine to create and run
            return
        await self._queue.put(item)
        if self._finished:  # we waited for room while the writer stopped: nobody will write it
            self._fail_pending()

    async def join(self):
        """Wait until everything queued so far has been written (or has failed)."""
        if self._queue is not None:
            await self._queue.join()

    async def stop(self):
        """Write everything queued so far, then close the thread's database connection and the thread."""
        if self._task is None:
            return
        self._accepting = False
        await self._queue.put(_STOP)
        try:
            await self._task
        finally:
            self._finished = True
            self._task = None
            self._fail_pending()
            await self.run_sync(_close_connections)
            self._executor.shutdown(wait=False)

    async def _run(self):
        while True:
            item = await self._queue.get()
            batch = []
            while item is not _STOP:
                batch.append(item)
                if len(batch) >= self.batch_size or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._commit(batch)
            for _ in range(len(batch) + (item is _STOP)):
                self._queue.task_done()
            if item is _STOP:
                return

    async def _commit(self, batch):
        started = time.perf_counter()
        try:
            await self.run_sync(self._write_batch, batch)
        except Exception as exc:
            self.commit_errors += 1
            self.uncommitted += len(batch)
            logger.error("batch of %d messages not committed: %s", len(batch), exc, exc_info=exc)
            for item in batch:
                if not item.future.done():
                    error = BatchCommitError(f"batch of {len(batch)} messages not committed: {exc}")
                    error.__cause__ = exc
                    item.future.set_exception(error)
            return
        self.batches += 1
        self.last_batch_size = len(batch)
        self.max_batch_size = max(self.max_batch_size, len(batch))
        self.commit_seconds.observe(time.perf_counter() - started)
        self.batch_sizes.observe(len(batch))
        for item in batch:
            if item.future.done():  # the caller gave up waiting
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.result)
        if self._after_commit is not None:
            try:
                await self._after_commit(batch)
            except Exception:
                logger.exception("after-commit processing failed")

    def _fail_pending(self):
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queue.task_done()
            if item is not _STOP and not item.future.done():
                item.future.set_exception(RouterNotRunning("the router stopped before this message was written"))


def _close_connections():
    from django.db import connections

    connections.close_all()
