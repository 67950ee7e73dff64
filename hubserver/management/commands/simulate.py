"""``hubserver simulate TYPE``: simulated devices of one type publishing to the hub over real MQTT.

It provisions the devices it needs (``--prefix`` + a number: ``sim-0001``...) in the hub's database, so run
it on the hub's data directory, next to ``hubserver run``. Each device connects with its own credentials,
announces itself online (Last Will: offline), publishes data every ``--interval`` seconds, and answers every
command on its ``reply`` topic. Its options are django-devicehub's ``iot_simulate`` options.
"""

import argparse
import asyncio
import contextlib
import signal

from django.core.management.base import BaseCommand, CommandError

from ...exceptions import ConfigurationError, ValidationError
from ...registry import registry
from ..database import ensure_database


def _seconds(text, allow_zero):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'more than 0'} seconds")
    return value


def positive_seconds(text):
    return _seconds(text, allow_zero=False)


def seconds_or_zero(text):
    return _seconds(text, allow_zero=True)


class Command(BaseCommand):
    help = (
        "Simulate devices of a type publishing data to the hub over MQTT, answering commands (no hardware "
        "needed). Provisions PREFIX0001.. in the hub's database; runs until --duration or Ctrl+C."
    )
    requires_migrations_checks = True

    def add_arguments(self, parser):
        parser.add_argument(
            "device_type", help="a registered device type, any spelling (WeatherStation, weatherstation)"
        )
        parser.add_argument("--count", type=int, default=1, help="number of simulated devices (default 1)")
        parser.add_argument(
            "--interval", type=positive_seconds, default=5.0, help="seconds between data messages (default 5)"
        )
        parser.add_argument("--broker", default="default", help="which BROKERS entry to publish to (default 'default')")
        parser.add_argument(
            "--duration", type=seconds_or_zero, default=0.0, help="stop after N seconds (default 0: until Ctrl+C)"
        )
        parser.add_argument(
            "--realistic", action="store_true", help="smooth values within each Reading's declared range"
        )
        parser.add_argument("--prefix", default="sim-", help="device id prefix (default 'sim-')")
        parser.add_argument("--host", help="broker address (default: 127.0.0.1 for the embedded broker)")
        parser.add_argument(
            "--port", type=int, help="broker MQTT port (embedded broker: the running hub's, else MQTT_PORT)"
        )
        parser.add_argument("--seed", type=int, help="random seed, for repeatable values")
        parser.add_argument(
            "--live",
            choices=("auto", "yes", "no"),
            default="auto",
            help="live table (default: when stdout is a terminal) or plain periodic lines",
        )

    def handle(self, *args, device_type, **options):
        from ...simulator import Simulator, resolve_target
        from ...simulator.display import Display

        ensure_database()
        kind = registry.get(device_type)
        if kind is None:
            known = ", ".join(sorted(t.type_name() for t in registry.all())) or "none"
            raise CommandError(f"unknown device type {device_type!r}; known types: {known}")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        try:
            target = resolve_target(options["broker"], options.get("host"), options.get("port"))
            simulator = Simulator(
                kind,
                count=options["count"],
                interval=options["interval"],
                realistic=options["realistic"],
                prefix=options["prefix"],
                target=target,
                seed=options.get("seed"),
            )
            simulator.provision()
        except (ConfigurationError, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        if simulator.inactive:
            self.stderr.write(
                f"Inactive (the hub will refuse them): {', '.join(simulator.inactive)}", style_func=self.style.WARNING
            )

        out = getattr(self.stdout, "_out", self.stdout)
        live = {"auto": None, "yes": True, "no": False}[options["live"]]
        display = Display(simulator, out, live=live)
        asyncio.run(self._run(simulator, display, options["duration"]))
        if not display.live:
            for line in display.summary():
                self.stdout.write(line)
        if not simulator.ever_connected:
            errors = {row["error"] for row in simulator.snapshot() if row["error"]}
            raise CommandError(
                f"no simulated device could connect to {target}"
                + (f": {'; '.join(sorted(errors))}" if errors else "")
                + ". Is the hub running (hubserver run), on this data directory and port?"
            )

    async def _run(self, simulator, display, duration):
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, simulator.stop)
        shown = asyncio.create_task(display.run())
        try:
            await simulator.run(duration)
        finally:
            display.stop()
            await shown
