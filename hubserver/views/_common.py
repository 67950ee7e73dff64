"""Small helpers shared by the hub's views: thread-safe counters read by ``hubserver.metrics``."""

import threading
from collections import Counter


class ViewStats:
    """Counters of one view module, incremented per request and read at scrape time (no Prometheus objects
    on the request path). ``snapshot()`` is a plain dict copy."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = Counter()

    def incr(self, key, amount=1):
        with self._lock:
            self._counts[key] += amount

    def snapshot(self):
        with self._lock:
            return dict(self._counts)

    def clear(self):
        with self._lock:
            self._counts.clear()
