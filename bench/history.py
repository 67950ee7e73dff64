"""History benchmark: how fast a long range of one device draws, from the API to the chart.

1. A fresh data directory with one weather station and ``--days`` (30) of readings every ``--interval``
   (1) second written straight into its reading table (2,592,000 rows by default); the hub computes their
   rollups when it starts (the ``migrate`` it runs fills empty rollup tables from the raw readings).
2. ``hubserver run`` on free local ports.
3. The API: ``GET /api/weatherstation/devices/<id>/readings/?bucket=auto&since=<range ago>&limit=1500``
   for each range of the dashboard's picker, ``--repeat`` (10) times, with a token; the bucket the hub chose,
   the rows, the bytes and the response times.
4. The dashboard in Debian's chromium (Playwright): sign in, open the device page, click the range
   ``--range`` (30d) ``--repeat`` times (back to "Live" in between) and read how long each took from the
   click to the charts drawn (the page records it: ``#charts[data-draw-ms]``, from before the API request
   to the animation frame after the last chart was drawn).

The last lines, e.g.::

    history-api range=30d bucket=1h rows=720 bytes=401234 p50=35.1ms max=48.0ms
    history-draw range=30d bucket=1h readings=2592000 p50=80.2ms max=95.3ms (click -> API -> 5 charts drawn)

Goal: 30 days of one-second data draws in under 200 ms. Run ``python bench/history.py --help`` for the
options. Traffic goes to 127.0.0.1 only.
"""

import argparse
import json
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

READINGS = "devicetypes_weatherstationreading"
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "1y": 365 * 86400}
CHROMIUM = "/usr/bin/chromium"
USERNAME, PASSWORD = "bench-history", "bench-history-password"

USER_SCRIPT = f"""
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_superuser({USERNAME!r}, "", {PASSWORD!r})
print("TOKEN", Token.objects.get_or_create(user=user)[0].key)
"""


def write_readings(db_path, device_id, days, interval):
    """Readings of ``device_id`` every ``interval`` s for ``days`` days up to now (a slow sine and noise)."""
    import math
    import random

    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        (device,) = db.execute(
            "SELECT id FROM devicetypes_weatherstationdevice WHERE device_id = ?", (device_id,)
        ).fetchone()
        rng = random.Random(1)
        now = datetime.now(UTC).replace(microsecond=0)
        total = int(days * 86400 / interval)
        start = now - timedelta(seconds=total * interval)
        chunk = 100_000
        for first in range(0, total, chunk):
            rows = []
            for n in range(first, min(total, first + chunk)):
                when = start + timedelta(seconds=n * interval)
                stored = common.stored_time(when)
                day = 2 * math.pi * (n * interval % 86400) / 86400
                rows.append(
                    (
                        device,
                        stored,
                        stored,
                        round(12 + 8 * math.sin(day) + rng.gauss(0, 0.3), 2),
                        round(60 - 20 * math.sin(day) + rng.gauss(0, 1), 1),
                        round(1013 + 5 * math.sin(day / 7) + rng.gauss(0, 0.2), 1),
                        round(abs(rng.gauss(4, 2)), 1),
                        0.0,
                    )
                )
            db.execute("BEGIN")
            db.executemany(
                f"INSERT INTO {READINGS} (device_id, timestamp, received_at, temperature, humidity, pressure, "
                "wind_speed, rain) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.execute("COMMIT")
        return total
    finally:
        db.close()


def make_user(hub):
    out = subprocess.run(
        [common.hub_binary(), "shell", "-c", USER_SCRIPT],
        env=hub.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"^TOKEN (\w+)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not match:
        raise common.BenchError(f"could not create the user (status {out.returncode}):\n{out.stderr[-2000:]}")
    return match.group(1)


def http_port_of(hub):
    match = re.search(r"http://[^\s:]+:(\d+)/admin/", "".join(hub.output))
    if not match:
        raise common.BenchError(f"cannot find the HTTP port in the hub's output:\n{hub.text()}")
    return int(match.group(1))


def api_figures(base, token, device_id, seconds, repeat):
    since = (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    url = f"{base}/api/weatherstation/devices/{device_id}/readings/?bucket=auto&limit=1500&since={since}"
    times, size, rows = [], 0, []
    for _ in range(repeat):
        request = urllib.request.Request(url, headers={"Authorization": f"Token {token}", "Accept": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        times.append(time.perf_counter() - started)
        size = len(body)
        rows = json.loads(body)
    bucket = rows[0].get("bucket", "raw") if rows else "-"
    return {"bucket": bucket, "rows": len(rows), "bytes": size, "times": sorted(times)}


def draw_figures(base, device_id, range_name, repeat):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(base + "/login/")
            page.fill("input[name=username]", USERNAME)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r"/$"))
            page.goto(f"{base}/devices/weatherstation/{device_id}/")
            charts = page.locator("#charts")
            times = []
            bucket = None
            for _ in range(repeat):
                page.click('#range-picker button[data-range="live"]')
                page.wait_for_function("document.getElementById('charts').dataset.range === 'live'")
                page.click(f'#range-picker button[data-range="{range_name}"]')
                page.wait_for_function(
                    f"document.getElementById('charts').dataset.state === 'drawn' && "
                    f"document.getElementById('charts').dataset.range === '{range_name}'"
                )
                times.append(float(charts.get_attribute("data-draw-ms")) / 1000)
                bucket = charts.get_attribute("data-bucket")
            return {"bucket": bucket, "times": sorted(times)}
        finally:
            browser.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="How fast a long range draws, API and chromium (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--days", type=float, default=30.0, help="days of readings to store")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--range", default="30d", choices=list(RANGES), help="the range drawn in chromium")
    parser.add_argument("--repeat", type=int, default=10, help="API requests per range, and draws")
    parser.add_argument("--no-browser", action="store_true", help="only the API figures")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if args.days <= 0 or args.interval <= 0 or args.repeat < 1:
        parser.error("--days, --interval and --repeat must be positive")
    return args


def ms(seconds):
    return f"{seconds * 1000:.1f}ms"


def main(argv=None):
    args = parse_args(argv)
    with common.Main("history") as run:
        directory = run.temporary("hubserver-history-", keep=args.keep_data)
        hub = common.Hub(directory)
        device_id = hub.provision(1, "hist-")[0]["device_id"]
        started = time.monotonic()
        total = write_readings(hub.db_path, device_id, args.days, args.interval)
        print(f"wrote {total} readings of {device_id} in {time.monotonic() - started:.1f}s", flush=True)
        started = time.monotonic()
        run.stop(hub).start()  # its migrate computes the rollups of those readings
        print(f"hub started (rollups computed) in {time.monotonic() - started:.1f}s", flush=True)
        token = make_user(hub)
        base = f"http://127.0.0.1:{http_port_of(hub)}"
        lines = []
        for name, seconds in RANGES.items():
            figures = api_figures(base, token, device_id, seconds, args.repeat)
            lines.append(
                f"history-api range={name} bucket={figures['bucket']} rows={figures['rows']} bytes={figures['bytes']} "
                f"p50={ms(statistics.median(figures['times']))} max={ms(figures['times'][-1])}"
            )
            print(lines[-1], flush=True)
        if not args.no_browser:
            figures = draw_figures(base, device_id, args.range, args.repeat)
            lines.append(
                f"history-draw range={args.range} bucket={figures['bucket']} readings={total} "
                f"p50={ms(statistics.median(figures['times']))} max={ms(figures['times'][-1])} "
                "(click -> API -> 5 charts drawn, chromium)"
            )
        hub.stop()
        for line in lines:
            print(line, flush=True)
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
