"""The rollup bucket lengths: a minute, an hour and a day, named as in the API (``?bucket=1h``)."""

BUCKETS = {"1m": 60, "1h": 3600, "1d": 86400}  # label -> seconds, finest first
LABELS = {seconds: label for label, seconds in BUCKETS.items()}
