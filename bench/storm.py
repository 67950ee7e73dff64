"""Connect storm: ``--devices`` provisioned devices connecting at once; time until all are CONNACKed.

It starts a fresh hub (``hubserver run`` on free local ports, fresh temporary SQLite data directory),
provisions ``--devices`` weather stations and spreads them over ``--processes`` client processes
(``bench/idle_clients.py``). Every process opens all its connections at one agreed instant, with no
client-side limit on concurrent connects; each device sends CONNECT with its own credentials, waits for
its CONNACK, then SUBSCRIBEs to its ``cmd`` topic like a real device coming back.

Two storms on the same hub process:

- ``cold``: the first connection of every device, so the hub verifies every secret with argon2;
- ``warm``: all devices disconnect, then reconnect at once (the hub's verifier cache of successes).

The figure is the time from the first CONNECT (any process) to the last CONNACK, and ``accepted`` counts
CONNACKs with return code 0. The kernel's listen-queue overflow counters (``/proc/net/netstat``,
``ListenOverflows``/``ListenDrops``; system-wide) are printed per storm: a connection dropped there
waits for the client's SYN retransmission (1 s, then 3 s...). The last line is
``storm devices=1000 cold=..s warm=..s accepted=1000/1000`` (accepted: the fewer of the two storms;
each storm's own count is on the lines before). Traffic goes to 127.0.0.1 only.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from idle_clients import Fleet, describe_failures


def listen_drops():
    """System-wide TcpExt ListenOverflows + ListenDrops counters (Linux), or None."""
    try:
        text = Path("/proc/net/netstat").read_text()
        lines = [line.split() for line in text.splitlines() if line.startswith("TcpExt:")]
        values = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:]), strict=True))
        return values["ListenOverflows"], values["ListenDrops"]
    except (OSError, KeyError, IndexError, ValueError):
        return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Devices connecting at once: time until all are CONNACKed (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1000, help="devices connecting at once")
    parser.add_argument("--processes", type=int, default=4, help="client processes sharing the devices")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between the disconnect and the warm storm")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each device waits for TCP and CONNACK")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.processes < 1:
        parser.error("--devices and --processes must be at least 1")
    return args


def storm(fleet, hub, name):
    cpu_before = hub.cpu_seconds()
    drops_before = listen_drops()
    result = fleet.connect(start_in=1.0, check=hub.check_alive)
    hub_cpu = hub.cpu_seconds() - cpu_before
    drops_after = listen_drops()
    result["name"] = name
    result["elapsed"] = (
        result["last_connack"] - result["first_connect"] if result["last_connack"] and result["first_connect"] else None
    )
    result["hub_cpu"] = hub_cpu
    if drops_before and drops_after:
        result["overflows"] = drops_after[0] - drops_before[0]
        result["drops"] = drops_after[1] - drops_before[1]
    return result


def storm_line(r):
    elapsed = "-" if r["elapsed"] is None else f"{r['elapsed']:.2f}s"
    parts = [
        f"storm-{r['name']} devices={r['attempted']} accepted={r['accepted']}/{r['attempted']}",
        f"first_connect_to_last_connack={elapsed}",
    ]
    if r["first_attempt"] is not None and r["last_connack"] is not None:
        parts.append(f"first_tcp_attempt_to_last_connack={r['last_connack'] - r['first_attempt']:.2f}s")
    if r["last_suback"] is not None:
        parts.append(f"last_suback={r['last_suback'] - r['first_connect']:.2f}s")
    parts.append(f"client_processes={r['processes']} hub_cpu={r['hub_cpu']:.2f}s")
    if "overflows" in r:
        parts.append(f"listen_overflows={r['overflows']} listen_drops={r['drops']}")
    if r["failures"]:
        parts.append(f"failures=[{describe_failures(r['failures'])}]")
    return " ".join(parts)


def main(argv=None):
    args = parse_args(argv)
    with common.Main("storm") as run:
        hub = common.start_hub(run, args.devices + 1000)
        print(f"started hubserver run (pid {hub.process.pid}, data in {hub.data_dir})", flush=True)
        started = time.monotonic()
        devices = hub.provision(args.devices, "storm-")
        print(f"provisioned {args.devices} devices in {time.monotonic() - started:.1f}s", flush=True)
        fleet = run.stop(
            Fleet(
                hub.host,
                hub.mqtt_port,
                devices,
                processes=args.processes,
                keepalive=60,
                concurrency=None,  # all at once
                timeout=args.timeout,
            )
        ).start()
        results = []
        for name in ("cold", "warm"):
            if results:
                unclosed = fleet.disconnect()
                if unclosed:
                    print(f"warning: {unclosed} connections were not closed yet", file=sys.stderr, flush=True)
                time.sleep(args.pause)
            print(f"{name} storm: {args.devices} devices connecting at once", flush=True)
            results.append(storm(fleet, hub, name))
            print(storm_line(results[-1]), flush=True)
        fleet.close()
        code = hub.stop()
        if code not in (0, None):
            print(f"warning: the hub exited with status {code}:\n{hub.text()}", file=sys.stderr, flush=True)
        cold, warm = results
        for result in results:
            print(storm_line(result), flush=True)

        def secs(r):
            return "-" if r["elapsed"] is None else f"{r['elapsed']:.2f}s"

        print(
            f"storm devices={args.devices} cold={secs(cold)} warm={secs(warm)} "
            f"accepted={min(cold['accepted'], warm['accepted'])}/{args.devices}",
            flush=True,
        )
        return 0 if cold["accepted"] == warm["accepted"] == args.devices else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
