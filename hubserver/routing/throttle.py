"""A log that says each (reason, topic) at most once per interval: a misconfigured device publishing
thousands of messages a second to an unknown topic must not flood the log."""

import time


class ThrottledLog:
    max_keys = 10_000

    def __init__(self, logger, interval=60.0):
        self._logger = logger
        self.interval = interval
        self._last = {}

    def warning(self, reason, topic, msg, *args):
        now = time.monotonic()
        key = (reason, topic)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return
        if len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_keys:  # flooded with distinct keys: forget rather than grow
                self._last.clear()
        self._last[key] = now
        self._logger.warning(msg, *args)
