"""A fixed-bucket histogram kept by the writer (one observation per batch, not per message), read at scrape
time by the metrics collector. No dependency on prometheus-client in the routing layer."""

import bisect

COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self):
        """``{"count", "sum", "buckets": {upper bound: cumulative count}}`` (``float("inf")`` included)."""
        cumulative, running = {}, 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            cumulative[bound] = running
        return {"count": self.count, "sum": self.sum, "buckets": cumulative}
