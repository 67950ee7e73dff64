"""``hubserver types [NAME] [--schema]``: what device types this hub knows, and what their devices send."""

import json

from django.core.management.base import BaseCommand, CommandError

from ...registry import registry


class Command(BaseCommand):
    help = "List the registered device types, or print one type's payload JSON Schemas."

    def add_arguments(self, parser):
        parser.add_argument("name", nargs="?", help="a device type (any spelling: WeatherStation, weatherstation)")
        parser.add_argument("--schema", action="store_true", help="print the JSON Schemas of its payloads")

    def handle(self, *args, name=None, schema=False, **options):
        if name is None:
            if schema:
                document = {t.type_name(): t.json_schema() for t in registry.all()}
                self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False))
                return
            for device_type in sorted(registry.all(), key=lambda t: t.type_name()):
                readings = ", ".join(f"{n} ({r.unit})" if r.unit else n for n, r in device_type._readings.items())
                self.stdout.write(
                    self.style.MIGRATE_HEADING(f"{device_type.type_name()}  ({device_type._meta.verbose_name})")
                )
                self.stdout.write(f"  readings: {readings or '-'}")
                if device_type._state_fields:
                    state = ", ".join(f"{n} ({f.unit})" if f.unit else n for n, f in device_type._state_fields.items())
                    self.stdout.write(f"  state:    {state}")
                if device_type._commands:
                    self.stdout.write(f"  commands: {', '.join(device_type._commands)}")
            return
        device_type = registry.get(name)
        if device_type is None:
            known = ", ".join(sorted(t.type_name() for t in registry.all())) or "none"
            raise CommandError(f"unknown device type {name!r}; known: {known}")
        document = (
            device_type.json_schema()
            if schema
            else {
                "name": device_type.type_name(),
                "verbose_name": device_type._meta.verbose_name,
                "readings": device_type.json_schema()["readings"],
                "state_fields": list(device_type._state_fields),
                "commands": {n: c.description for n, c in device_type._commands.items()},
            }
        )
        self.stdout.write(json.dumps(document, indent=2, ensure_ascii=False))
