"""``hubserver listen``: a worker. The router and the group-commit writer on an external broker (a shared
subscription to every device topic, each QoS 1 message acknowledged after its commit), the command
dispatcher, and nothing listening: no HTTP, no MQTT port. Start as many as the load needs, each with its
own ``--client-id`` (its persistent session on the broker); stop with SIGTERM (what it took is committed
and acknowledged first)."""

import asyncio
import contextlib
import signal

from django.core.management.base import BaseCommand, CommandError

from ...brokers.connection import BrokerError
from ...conf import EMBEDDED_ENGINE, hub_settings
from ...exceptions import ConfigurationError
from ..database import ensure_database
from ..gc_tuning import tune_for_serving


class Command(BaseCommand):
    help = "Store the devices' messages from an external broker (a worker: no HTTP, no MQTT listener)."
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("--broker", help="the BROKERS entry to take messages from (default: every external one)")
        parser.add_argument(
            "--client-id",
            help="this worker's MQTT client id, which names its persistent session on the broker: one per worker, "
            "the same across its restarts (default: the entry's CLIENT_ID, else hubserver-<host name>-<entry>)",
        )
        parser.add_argument(
            "--drain",
            action="store_true",
            help="scale down: leave the share group, store what the broker still holds for this client id, end "
            "its session and exit (without it, a worker that never returns keeps being dealt messages)",
        )
        parser.add_argument(
            "--stats-interval", type=float, default=60.0, help="seconds between two lines of figures (0: none)"
        )

    def handle(self, *args, broker=None, client_id=None, stats_interval=60.0, drain=False, **options):
        names = self.brokers(broker)
        if client_id and len(names) > 1:
            raise CommandError("--client-id names one session: give --broker too")
        ensure_database()
        try:
            return asyncio.run(self.serve(names, client_id, stats_interval, drain))
        except (BrokerError, ConfigurationError) as exc:
            raise CommandError(str(exc)) from exc

    def brokers(self, broker):
        external = [name for name, entry in hub_settings.BROKERS.items() if entry["ENGINE"] != EMBEDDED_ENGINE]
        if broker is not None:
            if broker not in hub_settings.BROKERS:
                raise CommandError(
                    f"unknown broker {broker!r}; configured brokers: {', '.join(sorted(hub_settings.BROKERS))}"
                )
            if broker not in external:
                raise CommandError(f"broker {broker!r} is the embedded one: 'hubserver run' serves it")
            return [broker]
        if not external:
            raise CommandError(
                "no external broker is configured: set HUBSERVER_BROKER_URL (mqtt://user:password@host:port), "
                "or a BROKERS entry with ENGINE 'hubserver.brokers.mqtt.MQTTBroker'"
            )
        return external

    async def serve(self, names, client_id, stats_interval, drain=False):
        from ...hub import Hub

        options = {name: {"client_id": client_id} for name in names} if client_id else {}
        hub = Hub(brokers=names, engine_options=options)
        await hub.start()
        tune_for_serving()  # as 'hubserver run' does: collections under load cost a third of a worker's CPU
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for name in names:
            engine = hub.brokers[name]
            self.stdout.write(
                f"hubserver listen: storing messages from {engine.address} as client id {engine.address.client_id!r}"
            )
        self.stdout.flush()
        reporter = asyncio.ensure_future(self.report(hub, names, stats_interval)) if stats_interval > 0 else None
        try:
            if drain:
                for name in names:
                    await hub.brokers[name].drain()
            else:
                await stop.wait()
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            self.stdout.write("Stopping: taking no new message; committing and acknowledging what was taken...")
            await hub.stop()
            self.report_line(hub, names)
            self.stdout.write("Stopped.")

    async def report(self, hub, names, interval):
        while True:
            await asyncio.sleep(interval)
            self.report_line(hub, names)

    def report_line(self, hub, names):
        router = hub.router.stats()
        for name in names:
            counts = hub.brokers[name].counts
            self.stdout.write(
                f"hubserver listen: broker {name!r}: {counts['stored']} stored, {counts['refused']} refused, "
                f"{counts['retried']} retried, {counts['connection_lost']} connection(s) lost; "
                f"{router['batches']} batches, largest {router['max_batch_size']}; "
                f"{hub.brokers[name].unacknowledged} unacknowledged now"
            )
        self.stdout.flush()
