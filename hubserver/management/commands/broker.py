"""``hubserver broker setup|sync|check``: the device accounts the hub keeps on an external Mosquitto.

- ``setup`` (once per broker): logged in with the plugin's admin account (the one ``mosquitto_ctrl dynsec
  init`` created), creates the hub's own client (the entry's ``USERNAME``/``PASSWORD``) with the role
  ``hubserver-service``: subscribe to every device's data/status/reply (shared and plain), publish
  commands, administer the plugin. From then on the hub logs in with its own account.
- ``sync``: makes the broker's device clients and roles match the registry; running it again changes
  nothing. Devices whose client was missing are listed: they need ``hubserver provision`` again (Mosquitto
  keeps its own password hashes; the hub's argon2 hashes cannot be given to it).
- ``check``: connects with the hub's account and asks the plugin something harmless.
"""

import getpass
import os
from dataclasses import replace

from django.core.management.base import BaseCommand, CommandError

from ...brokers.accounts import managed, managed_brokers, setup_service_account, sync
from ...brokers.connection import BrokerError, broker_address
from ...brokers.dynsec import DynsecAdmin
from ...conf import hub_settings
from ...exceptions import ConfigurationError

ADMIN_PASSWORD_VARIABLE = "HUBSERVER_BROKER_ADMIN_PASSWORD"


class Command(BaseCommand):
    help = "Keep device accounts on an external Mosquitto (dynamic security): setup, sync, check."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{setup,sync,check}")
        setup = actions.add_parser("setup", help="create the hub's own account on the broker (once)")
        setup.add_argument("--broker", default="default", help="the BROKERS entry (default: default)")
        setup.add_argument("--admin-username", default="admin", help="the plugin's admin account (default: admin)")
        setup.add_argument(
            "--admin-password",
            help=f"its password (default: ${ADMIN_PASSWORD_VARIABLE}, else asked for on the terminal)",
        )
        sync_parser = actions.add_parser("sync", help="make the broker's device accounts match the registry")
        sync_parser.add_argument("--broker", help="one BROKERS entry (default: every managed one)")
        sync_parser.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
        check = actions.add_parser("check", help="prove the hub's account may administer the plugin")
        check.add_argument("--broker", help="one BROKERS entry (default: every managed one)")

    def handle(self, *args, action, broker=None, **options):
        try:
            names = self._brokers(broker)
            for name in names:
                getattr(self, f"do_{action}")(name, **options)
        except (BrokerError, ConfigurationError) as exc:
            raise CommandError(str(exc)) from exc

    def _brokers(self, broker):
        if broker is not None:
            if broker not in hub_settings.BROKERS:
                raise CommandError(
                    f"unknown broker {broker!r}; configured brokers: {', '.join(sorted(hub_settings.BROKERS))}"
                )
            if not managed(broker):
                raise CommandError(
                    f"broker {broker!r} is not one whose device accounts the hub keeps: it needs an external ENGINE "
                    "and DYNAMIC_SECURITY on (HUBSERVER_BROKER_URL sets one up for 'default')"
                )
            return [broker]
        names = managed_brokers()
        if not names:
            raise CommandError(
                "no broker of HUBSERVER['BROKERS'] is an external Mosquitto whose accounts the hub keeps "
                "(set HUBSERVER_BROKER_URL, or an entry with ENGINE 'hubserver.brokers.mqtt.MQTTBroker')"
            )
        return names

    def do_setup(self, name, admin_username, admin_password=None, **options):
        address = broker_address(name)
        if not address.username or not address.password:
            raise CommandError(
                f"HUBSERVER['BROKERS'][{name!r}] has no USERNAME/PASSWORD: they are the account setup creates "
                "(HUBSERVER_BROKER_URL=mqtt://<user>:<password>@host:port)"
            )
        password = admin_password or os.environ.get(ADMIN_PASSWORD_VARIABLE)
        if not password:
            password = getpass.getpass(f"Password of {admin_username!r} on {address.host}:{address.port}: ")
        admin = replace(address, username=admin_username, password=password)
        acls = setup_service_account(name, address.username, address.password, admin)
        with DynsecAdmin(address) as own:  # the new account works, and may administer the plugin
            own.check()
        self.stdout.write(
            self.style.SUCCESS(
                f"{address}: account {address.username!r} has role 'hubserver-service' ({len(acls)} ACLs)"
            )
        )

    def do_sync(self, name, dry_run=False, **options):
        report = sync(name, dry_run=dry_run)
        verb = "would" if dry_run else "did"
        self.stdout.write(
            f"broker {name!r}: {report.devices} device(s) in the registry; {verb} create {len(report.created)}, "
            f"update {len(report.updated)}, delete {len(report.deleted)}"
        )
        if report.service_role == "missing":
            self.stderr.write(
                self.style.WARNING(f"broker {name!r} has no 'hubserver-service' role: run 'hubserver broker setup'")
            )
        elif report.service_role == "updated":
            self.stdout.write(f"broker {name!r}: the 'hubserver-service' role {verb} get the current topics")
        if report.created:
            shown = ", ".join(report.created[:10]) + (" ..." if len(report.created) > 10 else "")
            self.stderr.write(
                self.style.WARNING(
                    f"{len(report.created)} device(s) had no account on broker {name!r} and cannot log in until "
                    f"they are provisioned again (hubserver provision <type> <id>): {shown}"
                )
            )
        if not report.changed:
            self.stdout.write(self.style.SUCCESS(f"broker {name!r} matches the registry"))

    def do_check(self, name, **options):
        address = broker_address(name)
        with DynsecAdmin(address) as admin:
            admin.check()
        self.stdout.write(self.style.SUCCESS(f"{address}: the dynamic-security plugin answers {address.username!r}"))
