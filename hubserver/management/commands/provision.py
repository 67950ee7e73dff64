"""``hubserver provision TYPE DEVICE_ID`` / ``hubserver provision TYPE --count N``: devices and credentials.

The secrets are printed once and stored only as hashes: keep the output. Provisioning a device that
already has credentials rotates them (its live session is dropped, the old secrets stop working).

Output goes to stdout (a table by default for one device, CSV by default for many, JSON on request) and
everything else (progress, warnings) to stderr, so ``hubserver provision T --count 100 > creds.csv``
gives a clean file.
"""

import csv
import io
import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from ...access.provisioning import connection_info, device_username, provision, provision_many
from ...conf import hub_settings
from ...endpoints import public_endpoints
from ...exceptions import ValidationError
from ...registry import registry
from ..database import ensure_database

FORMATS = ("table", "json", "csv")
CSV_COLUMNS = (
    "device_id",
    "device_type",
    "client_id",
    "mqtt_username",
    "mqtt_password",
    "api_key",
    "host",
    "mqtt_port",
    "mqtt_tls_port",
    "websocket_url",
    "topic_data",
    "topic_status",
    "topic_cmd",
    "topic_reply",
)


class Command(BaseCommand):
    help = (
        "Create a device (or --count N of them) and print its MQTT credentials, shown only once.\n\n"
        "One device: hubserver provision TYPE DEVICE_ID [--name NAME] [--format table|json|csv] (table by "
        "default). Many: hubserver provision TYPE --count N [--prefix P] [--start 1] [--format csv|json|table] "
        "(CSV by default) creates P0001..PNNNN. Existing devices get new credentials (the old ones stop "
        "working). Progress and warnings go to stderr, credentials to stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument("type", help="a device type, any spelling (WeatherStation, weatherstation)")
        parser.add_argument("device_id", nargs="?", help="the device to create or re-provision")
        parser.add_argument("--name", help="display name of the device (one device only)")
        parser.add_argument("--count", type=int, help="provision this many devices: PREFIX0001, PREFIX0002, ...")
        parser.add_argument("--prefix", help="device id prefix with --count (default: '<type>-')")
        parser.add_argument("--start", type=int, default=1, help="first number with --count (default 1)")
        parser.add_argument("--format", choices=FORMATS, help="output format (default: table, or csv with --count)")
        parser.add_argument("--workers", type=int, help="hashing threads with --count (default: the CPU count)")

    def handle(self, *args, type, device_id=None, name=None, count=None, prefix=None, start=1, **options):
        device_type = registry.get(type)
        if device_type is None:
            known = ", ".join(sorted(t.type_name() for t in registry.all())) or "none"
            raise CommandError(f"unknown device type {type!r}; known types: {known}")
        ensure_database()
        if device_type._device_model is None:
            raise CommandError(f"device type {device_type.type_name()!r} has no models (no create_models() call)")
        if (device_id is None) == (count is None):
            raise CommandError("give either a DEVICE_ID or --count N")
        fmt = options.get("format")
        try:
            if count is None:
                if prefix is not None:
                    raise CommandError("--prefix only applies with --count")
                self._one(device_type, device_id, name, fmt or "table", options)
            else:
                if name is not None:
                    raise CommandError("--name only applies to one device")
                if count < 1 or start < 0:
                    raise CommandError("--count must be at least 1 and --start at least 0")
                prefix = f"{device_type.type_name()}-" if prefix is None else prefix
                self._many(device_type, prefix, count, start, fmt or "csv", options)
        except ValidationError as error:
            raise CommandError(str(error)) from error

    # -- one device --------------------------------------------------------------------------------------

    def _one(self, device_type, device_id, name, fmt, options):
        model = device_type._device_model
        device_username(device_type, device_id, model)  # refuse a bad id before creating anything
        with transaction.atomic():
            device = model._default_manager.filter(device_id=device_id).first()
            if device is None:
                device = model(device_id=device_id, name=name or "")
            else:
                if device.mqtt_password_hash or device.api_key:
                    self._warn(f"{device_id}: rotated; its previous credentials no longer work")
                if name is not None and name != device.name:
                    device.name = name
                    device.save(update_fields=["name", "updated_at"])
            credentials = provision(device)
        info = connection_info(device, credentials)
        if fmt == "json":
            self.stdout.write(json.dumps(info, indent=2))
        elif fmt == "csv":
            self._write_csv([info])
        else:
            self._write_table(info)
        if fmt == "table":
            self._warn("Store these now: the password and API key are shown only this once.")
        self._note_endpoints(options.get("verbosity", 1))

    # -- many devices ------------------------------------------------------------------------------------

    def _many(self, device_type, prefix, count, start, fmt, options):
        width = max(4, len(str(start + count - 1)))
        device_ids = [f"{prefix}{number:0{width}d}" for number in range(start, start + count)]
        progress = self._progress(count, options.get("verbosity", 1))
        try:
            results = provision_many(
                device_type, device_ids, workers=options.get("workers"), progress=progress.advance if progress else None
            )
        finally:
            if progress is not None:
                progress.stop()
        rotated = sum(1 for result in results if result.rotated)
        infos = [connection_info(result.device, result.credentials) for result in results]
        if fmt == "json":
            self.stdout.write(json.dumps(infos, indent=2))
        elif fmt == "csv":
            self._write_csv(infos)
        else:
            self._write_many_table(infos)
        if options.get("verbosity", 1) > 0:
            self._warn(f"Provisioned {len(infos)} {device_type.type_name()} device(s){self._rotated(rotated)}.")
        self._note_endpoints(options.get("verbosity", 1))

    def _note_endpoints(self, verbosity):
        if verbosity > 0 and not public_endpoints().running and not hub_settings.PUBLIC_MQTT_PORT:
            self._warn(
                "No hub is running on this database, so the host and ports shown are the ones 'hubserver run' "
                "starts with by default (HUBSERVER_PUBLIC_HOST and HUBSERVER_PUBLIC_MQTT_PORT set them)."
            )

    @staticmethod
    def _rotated(rotated):
        return f", of which {rotated} already existed and were rotated" if rotated else ""

    # -- output ------------------------------------------------------------------------------------------

    def _console(self, stream, **kwargs):
        from rich.console import Console

        out = getattr(stream, "_out", stream)
        terminal = hasattr(out, "isatty") and out.isatty()
        # Off a terminal, never wrap: a folded password is a broken password.
        return Console(file=out, width=None if terminal else 200, **kwargs)

    def _progress(self, total, verbosity):
        if verbosity < 1:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("provisioning"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self._console(self.stderr, stderr=True),
            transient=False,
        )
        task = progress.add_task("provision", total=total)
        progress.start()

        class Advance:
            def advance(self, steps=1):
                progress.advance(task, steps)

            def stop(self):
                progress.stop()

        return Advance()

    def _write_table(self, info):
        from rich import box
        from rich.table import Table

        table = Table(box=box.SIMPLE, show_header=False, title=f"{info['device_type']} {info['device_id']}")
        table.add_column("key", style="bold")
        table.add_column("value", no_wrap=True, overflow="ignore")
        for key, value in info.items():
            if key == "topics":
                for suffix, topic in value.items():
                    table.add_row(f"topic ({suffix})", topic)
            elif value is not None:
                table.add_row(key, str(value))
        self._console(self.stdout).print(table)

    def _write_many_table(self, infos):
        from rich import box
        from rich.table import Table

        first = infos[0]
        table = Table(
            box=box.SIMPLE, caption=f"host {first['host']}, MQTT port {first['mqtt_port']}; client id = username"
        )
        for column in ("device_id", "mqtt_username", "mqtt_password", "api_key"):
            table.add_column(column, no_wrap=True, overflow="ignore")
        for info in infos:
            table.add_row(info["device_id"], info["mqtt_username"], info["mqtt_password"], info["api_key"])
        self._console(self.stdout).print(table)

    def _write_csv(self, infos):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for info in infos:
            row = {**info, **{f"topic_{suffix}": topic for suffix, topic in info["topics"].items()}}
            writer.writerow(["" if row[column] is None else row[column] for column in CSV_COLUMNS])
        self.stdout.write(buffer.getvalue(), ending="")

    def _warn(self, message):
        self.stderr.write(message, style_func=self.style.WARNING)
