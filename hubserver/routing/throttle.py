"""Logging what clients cause without letting them flood the log.

``ThrottledLog`` says each (reason, key) at most once per interval, with the number of repeats it kept
quiet about: a misconfigured device publishing thousands of messages a second to an unknown topic, or a
scanner opening thousands of connections, costs one line a minute. ``clip`` (from ``hubserver.logsafe``)
shortens what a client chose (client ids, usernames, topics) before it goes into a log line.
"""

import time

from ..logsafe import clip

__all__ = ["ThrottledLog", "clip"]


class ThrottledLog:
    max_keys = 10_000

    def __init__(self, logger, interval=60.0):
        self._logger = logger
        self.interval = interval
        self._last = {}  # key -> (time logged, repeats not logged since)

    def clear(self):
        """Forget what was said (tests: each starts with nothing said yet)."""
        self._last.clear()

    def warning(self, reason, topic, msg, *args, exc_info=None):
        self.log(30, reason, topic, msg, *args, exc_info=exc_info)

    def info(self, reason, topic, msg, *args):
        self.log(20, reason, topic, msg, *args)

    def log(self, level, reason, topic, msg, *args, exc_info=None):
        now = time.monotonic()
        key = (reason, topic)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= self.max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
            if len(self._last) >= self.max_keys:  # flooded with distinct keys: forget rather than grow
                self._last.clear()
        self._last[key] = (now, 0)
        if last is not None and last[1]:
            msg = f"{msg} (and {last[1]} more like it in the last {now - last[0]:.0f} s)"
        self._logger.log(level, msg, *args, exc_info=exc_info)
