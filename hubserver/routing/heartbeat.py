"""Marks devices offline when they have sent nothing for ``HEARTBEAT_TIMEOUT`` seconds.

It sleeps until the earliest deadline (never more often than ``timeout / 20``, so many devices with
staggered deadlines do not make it spin) and waits on an event while no device is tracked.
"""

import asyncio
import logging

logger = logging.getLogger("hubserver.routing")


class HeartbeatMonitor:
    def __init__(self, timeout, on_timeout):
        self.timeout = timeout
        self._on_timeout = on_timeout  # async callable(key)
        self._granularity = timeout / 20
        self._last = {}  # key -> loop time of its last sign of life
        self._tracking = asyncio.Event()
        self._task = None

    def __len__(self):
        return len(self._last)

    def touch(self, key):
        self._last.pop(key, None)  # keep the dict ordered by last activity
        self._last[key] = asyncio.get_running_loop().time()
        self._tracking.set()

    def forget(self, key):
        self._last.pop(key, None)

    def start(self):
        self._task = asyncio.create_task(self._run(), name="hubserver-heartbeat")

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self._last:
                self._tracking.clear()
                await self._tracking.wait()
                continue
            # Ordered by last activity, so the first entry has the earliest deadline.
            wait = self._last[next(iter(self._last))] + self.timeout - loop.time()
            if wait > 0:
                await asyncio.sleep(max(wait, self._granularity))
                continue
            now = loop.time()
            expired = []
            for key, last in self._last.items():
                if last + self.timeout > now:
                    break
                expired.append(key)
            for key in expired:
                del self._last[key]
            for key in expired:
                try:
                    await self._on_timeout(key)
                except Exception:
                    logger.exception("marking %s/%s offline failed", *key)
