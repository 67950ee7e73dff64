"""``hubserver prune [--dry-run] [TYPE ...]``: remove now what has outlived its retention.

The hub does the same every ``PRUNE_INTERVAL`` seconds on its own; this is for a hub that runs with
``PRUNE_INTERVAL = 0`` (pruning from cron instead), or to see what a retention change would remove
before the hub does it (``--dry-run``). It deletes in batches of ``--batch-size`` rows, each its own
transaction, so a running hub keeps storing messages meanwhile.
"""

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...conf import hub_settings
from ...lifecycle.durations import format_duration
from ...lifecycle.prune import plan, prune_now
from ...lifecycle.retention import retention_for
from ...registry import registry
from ..database import ensure_database


class Command(BaseCommand):
    help = (
        "Remove the messages, commands, readings and rollups older than their retention (Meta.retention of "
        "each device type, else the *_RETENTION settings). --dry-run only counts what would go."
    )

    def add_arguments(self, parser):
        parser.add_argument("types", nargs="*", metavar="TYPE", help="only these device types (default: all)")
        parser.add_argument("--dry-run", action="store_true", help="count what would be removed; remove nothing")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help=f"rows per delete transaction (default: PRUNE_BATCH_SIZE, {hub_settings.PRUNE_BATCH_SIZE})",
        )

    def handle(self, *args, types, dry_run, batch_size, **options):
        batch_size = batch_size or hub_settings.PRUNE_BATCH_SIZE
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        names = []
        for name in types:
            device_type = registry.get(name)
            if device_type is None or registry.get_models(name) is None:
                known = ", ".join(sorted(t.type_name() for t, *_ in registry.all_with_models())) or "none"
                raise CommandError(f"unknown device type {name!r}; known types: {known}")
            names.append(device_type.type_name())
        ensure_database()
        now = timezone.now()
        for device_type, *_ in sorted(registry.all_with_models(), key=lambda row: row[0].type_name()):
            if not names or device_type.type_name() in names:
                self.stdout.write(f"{device_type.type_name()}: keeps {retention_for(device_type).describe()}")
        steps = plan(now, names or None)
        if not steps:
            self.stdout.write("Nothing has a finite retention: nothing to remove.")
            return
        width = max(len(f"{step.type_name} {step.kind}") for step in steps)
        verb = "would remove" if dry_run else "removed"
        total = 0
        counts = {step: step.count() for step in steps} if dry_run else prune_now(steps, batch_size)
        for step in steps:
            what = f"{step.type_name} {step.kind}"
            self.stdout.write(
                f"  {what:<{width}}  older than {format_duration(step.keep):>6} "
                f"(before {step.cutoff:%Y-%m-%d %H:%M:%S} UTC): {verb} {counts[step]}"
            )
            total += counts[step]
        self.stdout.write(f"{'Would remove' if dry_run else 'Removed'} {total} rows in all.")
