"""Bare amqtt: the stock ``amqtt.broker.Broker`` (0.12.1) with no storage, the peer ``bench/peers.py`` compares
the hub with.

Two plugins, nothing else: an auth plugin that accepts every CONNECT carrying a username and a password
(the load generator's device credentials; nothing is hashed or looked up), and an event plugin that counts
the PUBLISHes the broker has taken off its per-client queues (``MESSAGE_RECEIVED``). amqtt sends the QoS 1
PUBACK as soon as it reads the packet, before any plugin runs, so this is the broker's own speed
with nothing behind it.

It listens on ``--host``:``--port`` (127.0.0.1 only) and prints, on its own lines:

    bare_amqtt listening on 127.0.0.1:PORT
    bare_amqtt received=N last=T      (at most every --report seconds, when N changed; T = time.monotonic()
                                       of the N-th message, comparable across processes on Linux)

and the same ``received`` line last when stopped (SIGTERM or Ctrl+C).
"""

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass

from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class Counter:
    received = 0
    last = 0.0


class AcceptCredentialsPlugin(BaseAuthPlugin):
    """Accept any client that sends a username and a password (the generator's devices)."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session):
        return bool(session and session.username and session.password)


class CountMessagesPlugin(BasePlugin):
    """Count every PUBLISH the broker processes; store nothing."""

    @dataclass
    class Config:
        pass

    async def on_broker_message_received(self, *, client_id, message):
        Counter.received += 1
        Counter.last = time.monotonic()


def broker_config(host, port):
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "sys_interval": 0,
        "plugins": {
            f"{__name__}.AcceptCredentialsPlugin": {},
            f"{__name__}.CountMessagesPlugin": {},
        },
    }


def report():
    print(f"bare_amqtt received={Counter.received} last={Counter.last:.6f}", flush=True)


async def serve(host, port, every):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = Broker(broker_config(host, port))
    await broker.start()
    print(f"bare_amqtt listening on {host}:{port}", flush=True)
    shown = -1
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if Counter.received != shown:
                shown = Counter.received
                report()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), 10)
        report()


def main(argv=None):
    parser = argparse.ArgumentParser(description="A bare amqtt broker (no storage) that counts messages.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--report", type=float, default=0.1, help="seconds between 'received' lines")
    args = parser.parse_args(argv)
    if args.host not in LOCAL_HOSTS:
        parser.error("bare_amqtt listens on 127.0.0.1 only")
    # amqtt logs every connection at INFO; keep the broker as quiet as the hub's defaults.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.host, args.port, args.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
