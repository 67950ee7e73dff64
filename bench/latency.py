"""Latency benchmark: MQTT publish -> WebSocket ``reading`` event, at a paced 1,000 messages a second.

It starts its own ``hubserver run`` (free ports of 127.0.0.1, fresh data directory), provisions
``--devices`` weather stations, creates a superuser with a DRF token (``hubserver shell -c``), and
connects one WebSocket viewer to ``ws://127.0.0.1:<http port>/ws/hub/?token=<key>`` (no Origin header)
subscribed to ``weatherstation``. Then, in the same asyncio loop (one clock for both ends: no cross-process
clock question), the devices (``bench/mqttload.py`` connections) publish QoS 1 messages paced at ``--rate``
messages a second in total, round robin, for ``--warmup`` seconds (not counted) and then ``--duration``
seconds. Each payload carries a unique ``rain`` reading (the device's sequence number / 100, inside
WeatherStation's 0..500 mm range), so each ``reading`` event is matched to its PUBLISH by device id and rain.

Latency = time the event frame is read off the WebSocket - time the PUBLISH was written. The last line:

    latency rate=1000 msg/s p50=..ms p99=..ms max=..ms received=N/M

Run ``python bench/latency.py --help`` for the options. Ctrl+C or SIGTERM stops the hub.
"""

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import mqttload
from websockets.asyncio.client import connect as ws_connect

TOKEN_SCRIPT = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user, _ = get_user_model().objects.get_or_create(username="bench-latency")
user.is_staff = user.is_superuser = True
user.save()
print("TOKEN", Token.objects.get_or_create(user=user)[0].key)
"""


def http_port_of(hub):
    match = re.search(r"http://[^\s:]+:(\d+)/admin/", "".join(hub.output))
    if not match:
        raise common.BenchError(f"cannot find the HTTP port in the hub's output:\n{hub.text()}")
    return int(match.group(1))


def create_token(hub):
    out = subprocess.run(
        [common.hub_binary(), "shell", "-c", TOKEN_SCRIPT],
        env=common.hub_environment(hub.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"^TOKEN (\w+)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not match:
        raise common.BenchError(f"could not create an API token (status {out.returncode}):\n{out.stderr[-2000:]}")
    return match.group(1)


class Receiver:
    """Reads the viewer's frames and matches reading events to the PUBLISH send times."""

    def __init__(self, ws, sent):
        self.ws = ws
        self.sent = sent  # (device_id, rain key) -> monotonic send time, or None while warming up
        self.latencies = []
        self.matched = 0
        self.other = 0
        self.errors = []

    async def run(self):
        async for frame in self.ws:
            now = time.monotonic()
            event = json.loads(frame)
            kind = event.get("type")
            if kind == "reading":
                rain = event.get("readings", {}).get("rain")
                key = (event.get("device_id"), None if rain is None else round(rain * 100))
                sent = self.sent.pop(key, False)
                if sent is False:
                    self.other += 1
                elif sent is not None:
                    self.latencies.append(now - sent)
                    self.matched += 1
            elif kind == "error":
                self.errors.append(event)


async def measure(hub, http_port, token, devices, args):
    url = f"ws://127.0.0.1:{http_port}/ws/hub/?token={token}"
    async with ws_connect(url, ping_interval=None, max_size=2**20, compression=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "subscribe", "device_type": "weatherstation", "request_id": "bench"}))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if answer.get("type") != "subscribed":
            raise common.BenchError(f"the hub refused the subscription: {answer}")
        sent = {}
        receiver = Receiver(ws, sent)
        reader = asyncio.create_task(receiver.run())
        publishers = await asyncio.gather(
            *(mqttload.open_device("127.0.0.1", hub.mqtt_port, d, 1 << 16, 30) for d in devices)
        )
        try:
            figures = await publish_paced(publishers, devices, sent, args)
            # Let the last events arrive.
            deadline = time.monotonic() + args.drain
            while any(v is not None for v in sent.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            for publisher in publishers:
                publisher.disconnect()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        pubacks = sorted(x for p in publishers for x in p.result.latencies)
        figures.update(
            latencies=sorted(receiver.latencies),
            received=receiver.matched,
            unmatched=receiver.other,
            errors=receiver.errors,
            puback_p50=common.percentile(pubacks, 0.50),
            puback_p99=common.percentile(pubacks, 0.99),
        )
        return figures


async def publish_paced(publishers, devices, sent, args):
    """Write PUBLISHes on a fixed schedule (message i at start + i / rate), round robin over the devices."""
    rng = random.Random(1)
    count = len(devices)
    warmup = int(args.warmup * args.rate)
    total = warmup + int(args.duration * args.rate)
    topics = [mqttload._string(d["topics"]["data"]) for d in devices]
    fixed = bytes([(mqttload.PUBLISH << 4) | (1 << 1)])
    packet_ids = [0] * count
    start = time.monotonic() + 0.05
    index = 0
    late = 0.0
    while index < total:
        now = time.monotonic()
        due = min(total, int((now - start) * args.rate) + 1)
        if index < due:
            late = max(late, now - (start + index / args.rate))
        while index < due:
            slot = index % count
            seq = index // count
            reading = mqttload.weather_reading(rng)
            reading["rain"] = seq / 100  # unique per device while seq < 50,000 (0 .. 500 mm)
            payload = json.dumps(reading, separators=(",", ":")).encode()
            publisher = publishers[slot]
            packet_ids[slot] = packet_ids[slot] % 65535 + 1
            variable = topics[slot] + struct.pack("!H", packet_ids[slot])
            stamp = time.monotonic()
            publisher.sent_at[packet_ids[slot]] = stamp
            sent[(devices[slot]["device_id"], seq)] = None if index < warmup else stamp
            publisher.transport.write(fixed + mqttload._length(len(variable) + len(payload)) + variable + payload)
            if index == warmup:
                measured_from = stamp
            index += 1
        next_due = start + index / args.rate
        await asyncio.sleep(max(0.0, next_due - time.monotonic()))
        for publisher in publishers:
            publisher._check()
    elapsed = time.monotonic() - measured_from
    return {"published": total - warmup, "publish_elapsed": elapsed, "max_late": late}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Publish -> WebSocket delivery latency at a paced rate (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second, all devices together")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--devices", type=int, default=10, help="publishing devices")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for the last events")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.devices < 1:
        parser.error("--rate and --duration must be positive, --devices at least 1")
    if (args.warmup + args.duration) * args.rate / args.devices >= 50_000:
        parser.error("at most 50,000 messages per device (the rain value that identifies them)")
    return args


def main(argv=None):
    args = parse_args(argv)
    with common.Main("latency") as run:
        temporary = run.temporary("hubserver-latency-", keep=args.keep_data)
        print(f"starting hubserver run (data in {temporary})", flush=True)
        hub = run.stop(common.Hub(temporary)).start()
        http_port = http_port_of(hub)
        devices = hub.provision(args.devices, f"lat-{secrets.token_hex(3)}-")
        token = create_token(hub)
        print(
            f"running: {args.rate:.0f} msg/s QoS 1 from {args.devices} devices, {args.warmup:.0f}s warm-up + "
            f"{args.duration:.0f}s measured, one WebSocket viewer subscribed to weatherstation",
            flush=True,
        )
        cpu_before = hub.cpu_seconds()
        figures = asyncio.run(measure(hub, http_port, token, devices, args))
        cpu = hub.cpu_seconds()
        hub.check_alive()
        hub.stop()
        for error in figures["errors"][:5]:
            print(f"warning: the hub sent an error event: {error}", file=sys.stderr, flush=True)
        lat = figures["latencies"]
        if not lat:
            raise common.BenchError("no reading event arrived on the WebSocket")
        actual = figures["published"] / figures["publish_elapsed"] if figures["publish_elapsed"] > 0 else 0.0
        busy = (cpu - cpu_before) if cpu is not None and cpu_before is not None else None
        print(
            f"latency-detail published={figures['published']} actual_rate={actual:.0f} msg/s "
            f"schedule_max_late={figures['max_late'] * 1000:.1f}ms "
            f"puback_p50={figures['puback_p50'] * 1000:.1f}ms puback_p99={figures['puback_p99'] * 1000:.1f}ms "
            f"hub_cpu={'-' if busy is None else f'{busy:.2f}s'}",
            flush=True,
        )
        print(
            f"latency rate={args.rate:.0f} msg/s p50={common.percentile(lat, 0.5) * 1000:.1f}ms "
            f"p99={common.percentile(lat, 0.99) * 1000:.1f}ms max={lat[-1] * 1000:.1f}ms "
            f"received={figures['received']}/{figures['published']}",
            flush=True,
        )
        return 0 if figures["received"] == figures["published"] else 1
    return run.code


if __name__ == "__main__":
    sys.exit(main())
