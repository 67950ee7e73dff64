"""Memory rounds: is what a hub keeps after clients have come and gone a leak, or the allocator's?

It runs a hub in this process (the ``Hub`` that ``hubserver run`` starts, on a fresh temporary SQLite data
directory, its embedded broker on a free local port) with ``tracemalloc`` on, and repeats a round:
``--clients`` clients of one service user connect; each sends ``--messages`` QoS 2 PUBLISHes of ``--size``
bytes and withholds every PUBREL (the hub closes it at ``MAX_AWAITING_REL``), while a subscriber that never
reads gets every message; then all of them disconnect. After each round, once the hub has seen every
disconnection, the garbage collector runs and the script prints the memory Python's allocations hold
(``tracemalloc``), the process's RSS, and the lines that grew most since round 1.

Reading it: a leak grows the traced memory round after round, by about what a round held; memory the
allocator keeps shows as RSS above the traced memory that does not grow after the first rounds. The last
line is ``memory_rounds traced_growth_per_round=..KB rss_growth_per_round=..KB`` (rounds 2 to the last).
Traffic goes to 127.0.0.1 only.
"""

import argparse
import asyncio
import gc
import os
import struct
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, rss_kb
from mqttload import _length, _string


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Traced memory and RSS of an in-process hub over rounds of clients (see bench/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--clients", type=int, default=20, help="publishing clients per round")
    parser.add_argument("--messages", type=int, default=100, help="QoS 2 PUBLISHes per client (no PUBREL)")
    parser.add_argument("--size", type=int, default=10_000, help="payload bytes")
    parser.add_argument("--top", type=int, default=8, help="allocation sites shown per round")
    return parser.parse_args(argv)


async def connect(port, client_id, username, password):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = _string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60)
    body += _string(client_id) + _string(username) + _string(password)
    writer.write(bytes([0x10]) + _length(len(body)) + body)
    connack = await asyncio.wait_for(reader.readexactly(4), 30)
    if connack[3] != 0:
        raise RuntimeError(f"CONNECT refused: {connack[3]}")
    return reader, writer


async def one_round(port, args, credentials, number):
    stalled_reader, stalled = await connect(port, f"stalled-{number}", *credentials)
    body = struct.pack("!H", 1) + _string("lab/rounds/#") + bytes([1])
    stalled.write(bytes([0x82]) + _length(len(body)) + body)
    await asyncio.wait_for(stalled_reader.readexactly(5), 30)  # SUBACK; it reads nothing more
    payload = os.urandom(args.size)
    writers = []
    for n in range(args.clients):
        reader, writer = await connect(port, f"round-{number}-{n}", *credentials)
        packets = []
        for packet_id in range(1, args.messages + 1):
            body = _string(f"lab/rounds/{n}") + struct.pack("!H", packet_id) + payload
            packets.append(bytes([0x34]) + _length(len(body)) + body)
        writer.write(b"".join(packets))
        writers.append((reader, writer))
    for reader, writer in writers:
        try:
            await writer.drain()
            while await asyncio.wait_for(reader.read(65536), 30):  # PUBRECs, until the hub closes it
                pass
        except (ConnectionError, TimeoutError):
            pass
        writer.close()
    stalled.close()


async def main_async(args, credentials):
    from hubserver.hub import Hub

    port = free_port()
    hub = Hub(embedded={"host": "127.0.0.1", "port": port})
    await hub.start()
    broker = hub.engine.broker
    first = None
    traced, rss = [], []
    try:
        for number in range(1, args.rounds + 1):
            await one_round(port, args, credentials, number)
            deadline = time.monotonic() + 60
            while broker._sessions and time.monotonic() < deadline:  # every disconnection handled
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            gc.collect()
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            traced.append(tracemalloc.get_traced_memory()[0])
            rss.append(rss_kb(os.getpid()))
            sessions = len(broker._sessions)
            print(
                f"round {number}: traced {traced[-1] / 1024:,.0f} KB  rss {rss[-1]:,} KB  sessions left {sessions}  "
                f"delivery tasks left {len(getattr(broker, '_deliveries', ()))}",
                flush=True,
            )
            if first is None:
                first = snapshot
                continue
            for stat in snapshot.compare_to(first, "lineno")[: args.top]:
                print(f"    {stat}")
    finally:
        await hub.stop()
    rounds = len(traced) - 1
    if rounds >= 2:
        per_traced = (traced[-1] - traced[1]) / 1024 / (rounds - 1)
        per_rss = (rss[-1] - rss[1]) / (rounds - 1)
        print(f"memory_rounds traced_growth_per_round={per_traced:.0f}KB rss_growth_per_round={per_rss:.0f}KB")


def main(argv=None):
    args = parse_args(argv)
    data = tempfile.mkdtemp(prefix="hubserver-bench-rounds-")
    os.environ.update({"HUBSERVER_DATA_DIR": data, "DJANGO_SETTINGS_MODULE": "hubserver.settings"})
    os.environ.setdefault("HUBSERVER_LOG_LEVEL", "WARNING")
    import django
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    get_user_model().objects.create_superuser("rounds", "", "rounds-pass")
    tracemalloc.start(12)
    asyncio.run(main_async(args, ("rounds", "rounds-pass")))


if __name__ == "__main__":
    main()
