"""Memory: resident memory of the hub per idle connection, at 1,000 and at 5,000 connections.

It starts a fresh hub (``hubserver run`` on free local ports, fresh temporary SQLite data directory),
provisions the devices, and measures the hub's VmRSS (``/proc/<pid>/status``):

1. the baseline, after start-up and a warm-up: ``--warmup`` devices connect at once, subscribe and
   disconnect, so the code paths, the database connections and the argon2 verifier threads (and the
   8 MiB of memory each verification uses, which the allocator keeps) are already in the baseline;
2. with ``--steps`` (default 1,000 then 5,000) idle devices connected, each with its own credentials and
   SUBSCRIBEd to its own ``cmd`` topic (``bench/idle_clients.py``, ``--per-process`` per process).

After each step it waits until the RSS has settled (no change above 0.5 % for 3 s, at most ``--settle``
seconds). The hub's garbage collector is not forced (it is another process); the settling wait lets
pending work finish. Per-connection figure: ``(RSS_n - RSS_baseline) / n``. The last line is
``memory per_connection_1000=..KB per_connection_5000=..KB``. Traffic goes to 127.0.0.1 only.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import open_fds, rss_kb
from idle_clients import Fleet, FleetError, add_fleet_options, describe_failures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Hub resident memory per idle connection (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", default="1000,5000", help="comma-separated numbers of connected idle devices, increasing"
    )
    parser.add_argument("--warmup", type=int, default=20, help="devices that connect and leave before the baseline")
    add_fleet_options(parser)
    parser.add_argument("--settle", type=float, default=20.0, help="at most this many seconds for the RSS to settle")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per connection")
    args = parser.parse_args(argv)
    try:
        args.steps = [int(s) for s in args.steps.split(",")]
    except ValueError:
        parser.error("--steps must be comma-separated integers")
    if not args.steps or any(s < 1 for s in args.steps) or args.steps != sorted(set(args.steps)):
        parser.error("--steps must be increasing positive integers")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    return args


def settled_rss(pid, most, check):
    """VmRSS in KB once it changes by less than 0.5 % over 3 s (or after ``most`` seconds)."""
    deadline = time.monotonic() + most
    history = []
    while True:
        check()
        history.append((time.monotonic(), rss_kb(pid)))
        window = [kb for t, kb in history if t >= history[-1][0] - 3]
        if history[-1][0] - history[0][0] >= 3 and max(window) - min(window) <= 0.005 * max(window):
            return history[-1][1]
        if time.monotonic() > deadline:
            return history[-1][1]
        time.sleep(0.5)


def main(argv=None):
    args = parse_args(argv)
    fleets = []
    with common.Main("memory") as run:
        total = args.steps[-1]
        hub = common.start_hub(run, total + args.warmup + 1000)
        pid = hub.process.pid
        print(f"started hubserver run (pid {pid}, data in {hub.data_dir})", flush=True)
        started = time.monotonic()
        warm = hub.provision(args.warmup, "warm-")
        devices = hub.provision(total, "idle-")
        print(f"provisioned {args.warmup} + {total} devices in {time.monotonic() - started:.1f}s", flush=True)

        with Fleet(hub.host, hub.mqtt_port, warm, keepalive=args.keepalive, timeout=args.timeout) as fleet:
            result = fleet.connect(check=hub.check_alive)
            if result["accepted"] < args.warmup:
                raise FleetError(f"warm-up: {describe_failures(result['failures'])}")
            fleet.disconnect()
        baseline = settled_rss(pid, args.settle, hub.check_alive)
        print(f"baseline rss={baseline} KB after start-up and {args.warmup} warm-up connections", flush=True)

        figures = []
        done = 0
        for step in args.steps:
            fleet = Fleet(
                hub.host,
                hub.mqtt_port,
                devices[done:step],
                per_process=args.per_process,
                keepalive=args.keepalive,
                timeout=args.timeout,
            ).start()
            fleets.append(run.stop(fleet))
            result = fleet.connect(check=hub.check_alive)
            if result["accepted"] < step - done:
                hub.check_alive()
                raise FleetError(
                    f"only {done + result['accepted']} of {step} idle devices connected and subscribed: "
                    f"{describe_failures(result['failures'])}\nhub output:\n{hub.text(20)}"
                )
            done = step
            rss = settled_rss(pid, args.settle, hub.check_alive)
            open_now = sum(f.status()["open"] for f in fleets)
            if open_now != step:
                raise FleetError(f"{step} devices connected but only {open_now} were still open after settling")
            per = (rss - baseline) / step
            figures.append((step, per))
            print(
                f"connections={step} rss={rss} KB delta={rss - baseline} KB per_connection={per:.1f} KB "
                f"hub_open_fds={open_fds(pid)}",
                flush=True,
            )
        for fleet in fleets:
            fleet.close()
        code = hub.stop()
        if code not in (0, None):
            print(f"warning: the hub exited with status {code}:\n{hub.text()}", file=sys.stderr, flush=True)
        print(f"memory baseline={baseline}KB " + " ".join(f"rss_{n}={baseline + per * n:.0f}KB" for n, per in figures))
        print("memory " + " ".join(f"per_connection_{n}={per:.1f}KB" for n, per in figures), flush=True)
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
