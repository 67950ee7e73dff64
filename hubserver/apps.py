"""Django app of the hub: discovers every installed app's ``devices.py`` and registers the admin."""

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class HubserverConfig(AppConfig):
    name = "hubserver"
    verbose_name = "Hub"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        discover()
        from . import checks  # noqa: F401  (registers the system checks)
        from .access.revocation import connect_revocation_signals

        connect_revocation_signals()
        from .brokers import accounts

        accounts.connect_signals()  # device accounts on external Mosquitto brokers follow the registry
        from .web import connections

        connections.connect()
        from django.db.models.signals import post_migrate

        from .lifecycle.backfill import after_migrate

        post_migrate.connect(after_migrate, sender=self, dispatch_uid="hubserver.lifecycle.backfill")


def discover(site=None):
    """Import every installed app's ``devices.py``; register the generated admin when AUTO_ADMIN is on."""
    from .conf import hub_settings

    autodiscover_modules("devices")
    if hub_settings.AUTO_ADMIN:
        from .generators.admin import auto_register_admin

        auto_register_admin(site)
