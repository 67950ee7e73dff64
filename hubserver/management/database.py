"""Commands that need the database (run, provision, simulate) bring it up to date first, so a new data
directory works with any of them as the first command. Inside a user's own Django project the hub never
migrates on its own: it says what to run instead."""

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

BINARY_SETTINGS = "hubserver.settings"


def migrate_quietly():
    """Apply any unapplied migrations, printing nothing when there are none."""
    call_command("migrate", interactive=False, verbosity=0)


def ensure_database():
    """Migrate when running as the ``hubserver`` binary; elsewhere refuse clearly if migrations are missing."""
    if settings.SETTINGS_MODULE == BINARY_SETTINGS:
        migrate_quietly()
        return
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        raise CommandError("the database has unapplied migrations: run 'python manage.py migrate' first")
