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
        from django.db import connections
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from . import fields
        from .lifecycle import backfill, timestamps, usual

        connection_created.connect(fields.install, dispatch_uid="hubserver.fields.install")
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:  # opened before this receiver was connected
                fields.install(None, connection)
        post_migrate.connect(fields.forget_shapes, dispatch_uid="hubserver.fields.forget_shapes")
        post_migrate.connect(timestamps.after_migrate, sender=self, dispatch_uid="hubserver.lifecycle.timestamps")
        post_migrate.connect(usual.after_migrate, sender=self, dispatch_uid="hubserver.lifecycle.usual")
        post_migrate.connect(backfill.after_migrate, sender=self, dispatch_uid="hubserver.lifecycle.backfill")


def discover(site=None):
    """Import every installed app's ``devices.py``; register the generated admin when AUTO_ADMIN is on."""
    from .conf import hub_settings

    autodiscover_modules("devices")
    if hub_settings.AUTO_ADMIN:
        from .generators.admin import auto_register_admin

        auto_register_admin(site)
