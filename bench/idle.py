"""Idle scaling: the ingest rate with 0 and with 5,000 idle connected devices, and the ratio (goal: >= 0.8).

One hub process (``hubserver run`` on free local ports, fresh temporary SQLite data directory) serves the
whole benchmark. It provisions ``--idle`` idle devices and ``--devices`` publishing devices, then:

1. runs ``bench/ingest.py``'s load (its ``run_load``: QoS 1, ``--devices`` x ``--messages-per-device``,
   ``--processes`` generator processes) with no idle device connected: ``rate0``;
2. connects the ``--idle`` devices (``bench/idle_clients.py``: ``--per-process`` per process, each with its
   own credentials, SUBSCRIBEd to its own ``things/weatherstation/<id>/cmd``, keepalive PINGREQs),
   waits ``--settle`` seconds (measuring the hub's CPU while they sit idle), and runs the same load again:
   ``rate<N>``; it then checks that every idle device is still connected.

With ``--repeat R`` the pair runs R times (idle devices disconnected in between) and the figures are the
medians. The last line is ``idle rate0=... rate5000=... ratio=...`` (``ratio`` = rate5000 / rate0).
Traffic goes to 127.0.0.1 only.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import ingest
from common import open_fds, rss_kb
from idle_clients import Fleet, add_fleet_options, describe_failures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Ingest rate with 0 and with N idle subscribed devices (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--idle", type=int, default=5000, help="idle devices connected for the second run")
    parser.add_argument("--devices", type=int, default=100, help="publishing devices (ingest.py --devices)")
    parser.add_argument("--messages-per-device", type=int, default=300, help="ingest.py --messages-per-device")
    parser.add_argument("--processes", type=int, default=2, help="ingest load-generator processes")
    parser.add_argument("--window", type=int, default=20, help="ingest.py --window")
    add_fleet_options(parser)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between connecting and measuring")
    parser.add_argument("--repeat", type=int, default=1, help="measure the 0 / N pair this many times")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per phase")
    args = parser.parse_args(argv)
    if min(args.idle, args.devices, args.messages_per_device, args.processes, args.per_process, args.repeat) < 1:
        parser.error("counts must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    with common.Main("idle") as run:
        hub = common.start_hub(run, args.idle + args.devices + 1000)
        print(f"started hubserver run (pid {hub.process.pid}, data in {hub.data_dir})", flush=True)
        started = time.monotonic()
        idle_devices = hub.provision(args.idle, "idle-")
        prefix = "load-"
        devices = hub.provision(args.devices, prefix)
        print(f"provisioned {args.idle} idle + {args.devices} publishing devices in {time.monotonic() - started:.1f}s")
        topic_prefix = devices[0]["topics"]["data"].rsplit("/", 2)[0] + "/" + prefix
        load_args = ingest.parse_args(
            [
                "--devices",
                str(args.devices),
                "--messages-per-device",
                str(args.messages_per_device),
                "--processes",
                str(args.processes),
                "--window",
                str(args.window),
                "--timeout",
                str(args.timeout),
            ]
        )
        fleet = run.stop(
            Fleet(
                hub.host,
                hub.mqtt_port,
                idle_devices,
                per_process=args.per_process,
                keepalive=args.keepalive,
                timeout=args.timeout,
            )
        ).start()
        lines, rates = [], {0: [], args.idle: []}
        for round_ in range(args.repeat):
            print(f"[{round_ + 1}/{args.repeat}] ingest with 0 idle devices", flush=True)
            figures = ingest.run_load(hub, devices, topic_prefix, load_args, args.processes)
            rates[0].append(figures["rate"])
            lines.append(f"idle=0 {ingest.figures_line(figures)}")
            print(lines[-1], flush=True)

            print(f"[{round_ + 1}/{args.repeat}] connecting {args.idle} idle devices", flush=True)
            connected = fleet.connect(check=hub.check_alive)
            if connected["accepted"] < args.idle:
                hub.check_alive()
                raise common.BenchError(
                    f"only {connected['accepted']} of {args.idle} idle devices connected and subscribed: "
                    f"{describe_failures(connected['failures'])}\nhub output:\n{hub.text(20)}"
                )
            print(
                f"{connected['accepted']} idle devices connected and subscribed in "
                f"{connected['last_suback'] - connected['first_attempt']:.1f}s "
                f"({fleet.options['concurrency']} connecting at once per process, {connected['processes']} processes)",
                flush=True,
            )
            cpu_before = hub.cpu_seconds()
            time.sleep(args.settle)
            idle_cpu = hub.cpu_seconds() - cpu_before
            print(
                f"hub with {args.idle} idle devices: rss={rss_kb(hub.process.pid)} KB "
                f"open_fds={open_fds(hub.process.pid)} "
                f"cpu={idle_cpu / args.settle * 100:.1f}% of a core while idle",
                flush=True,
            )
            print(f"[{round_ + 1}/{args.repeat}] ingest with {args.idle} idle devices", flush=True)
            figures = ingest.run_load(hub, devices, topic_prefix, load_args, args.processes)
            rates[args.idle].append(figures["rate"])
            lines.append(f"idle={args.idle} {ingest.figures_line(figures)}")
            print(lines[-1], flush=True)
            state = fleet.status()
            if state["open"] != args.idle or state["lost"]:
                print(
                    f"warning: after the run {state['open']} of {args.idle} idle devices were connected "
                    f"({state['lost']} closed by the hub)\nhub output:\n{hub.text(20)}",
                    file=sys.stderr,
                    flush=True,
                )
            lines.append(
                f"idle-devices open={state['open']}/{args.idle} lost={state['lost']} pings={state['pings']} "
                f"pingresps={state['pingresps']} hub_idle_cpu={idle_cpu / args.settle * 100:.1f}%"
            )
            if round_ + 1 < args.repeat:
                fleet.disconnect()
                time.sleep(2)
        fleet.close()
        code = hub.stop()
        if code not in (0, None):
            print(f"warning: the hub exited with status {code}:\n{hub.text()}", file=sys.stderr, flush=True)
        rate0 = statistics.median(rates[0])
        rate_n = statistics.median(rates[args.idle])
        for line in lines:
            print(line, flush=True)
        print(
            f"idle rate0={rate0:.0f} msg/s rate{args.idle}={rate_n:.0f} msg/s ratio={rate_n / rate0:.2f}",
            flush=True,
        )
        return 0
    return run.code


if __name__ == "__main__":
    sys.exit(main())
