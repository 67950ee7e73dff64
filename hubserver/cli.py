"""The ``hubserver`` command: the hub's own commands and every Django management command, on the binary's
settings (``hubserver.settings``), with ``--devices FILE`` and ``--data-dir DIR`` understood anywhere."""

import io
import itertools
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

from django.core.management import ManagementUtility, call_command, get_commands, load_command_class

SETTINGS_MODULE = "hubserver.settings"
HUB_APPS = ("hubserver", "hubserver.dasf")
GLOBAL_OPTIONS = {"--devices": "HUBSERVER_DEVICES", "--data-dir": "HUBSERVER_DATA_DIR"}
HELP = {"help", "--help", "-h"}
VERSION = {"version", "--version"}
# Commands that manage migrations themselves skip the user-devices migration sync; ``run`` syncs them
# itself, after it has checked its ports.
NO_SYNC = {"makemigrations", "migrate", "sqlmigrate", "showmigrations", "squashmigrations", "check", "run"}
# Commands that never open the database (without a devices file, whose migrations every command syncs).
DATABASE_FREE = {"types", "check", "makemigrations", "sqlmigrate", "diffsettings"}


def take_global_options(args, environ):
    """Remove ``--devices X`` / ``--data-dir X`` (or ``--opt=X``) from ``args`` and put them in ``environ``."""
    rest = []
    index = 0
    while index < len(args):
        arg = args[index]
        name, eq, value = arg.partition("=")
        if name in GLOBAL_OPTIONS:
            if not eq:
                if index + 1 >= len(args):
                    raise SystemExit(f"hubserver: {name} needs a value")
                value = args[index + 1]
                index += 1
            environ[GLOBAL_OPTIONS[name]] = value
        else:
            rest.append(arg)
        index += 1
    return rest


class HubManagementUtility(ManagementUtility):
    """Django's utility, with the hub's own commands listed first in the help."""

    def main_help_text(self, commands_only=False):
        if commands_only:
            return super().main_help_text(commands_only=True)
        commands = get_commands()
        hub = sorted(name for name, app in commands.items() if app in HUB_APPS)
        lines = [
            "Usage: hubserver [--devices FILE] [--data-dir DIR] <command> [options]",
            "",
            "Hub commands:",
        ]
        for name in hub:
            summary = (load_command_class(commands[name], name).help or "").strip().splitlines()
            lines.append(f"    {name:<16}{summary[0] if summary else ''}")
        lines += ["", "Every Django management command works too ('hubserver help <command>' for its options):"]
        django_help = super().main_help_text().splitlines()
        start = next((i for i, line in enumerate(django_help) if line.startswith("[")), len(django_help))
        lines += [line for line in django_help[start:] if line.strip() not in hub]
        return "\n".join(lines)


def sync_user_migrations(stdout=None):
    """Write (into the data directory) and apply the migrations of the user's devices file."""
    buffer = io.StringIO()
    call_command("makemigrations", "userdevices", interactive=False, verbosity=1, stdout=buffer)
    written = buffer.getvalue()
    if "No changes detected" not in written:
        (stdout or sys.stderr).write(written)
    call_command("migrate", interactive=False, verbosity=0)


def program_name(argv0):
    """How the user runs this binary (``.venv/bin/hubserver`` or ``hubserver``), for commands we suggest."""
    if Path(argv0).name != "hubserver":
        return "hubserver"
    on_path = shutil.which("hubserver")
    if os.path.isabs(argv0) and on_path and Path(on_path).resolve() == Path(argv0).resolve():
        return "hubserver"
    return argv0


def version_text():
    import django

    from . import __version__

    return (
        f"hubserver {__version__} (Django {django.get_version()}, amqtt {metadata.version('amqtt')}, "
        f"Python {platform.python_version()})"
    )


def quiet(args):
    return any(a in ("-v0", "--verbosity=0") for a in args) or any(
        a in ("-v", "--verbosity") and b == "0" for a, b in itertools.pairwise(args)
    )


def warn_about_catalogue_data(stderr):
    """The catalogue is left out because a devices file is given, but this database has its tables."""
    from django.apps import apps
    from django.db import connection
    from django.db.migrations.recorder import MigrationRecorder

    if "HUBSERVER_CATALOGUE" in os.environ or apps.is_installed("hubserver.devicetypes"):
        return
    recorder = MigrationRecorder(connection)
    if recorder.has_table() and recorder.migration_qs.filter(app="devicetypes").exists():
        stderr.write(
            "hubserver: warning: this database has tables of the built-in device catalogue, which is left "
            "out because a devices file is given; set HUBSERVER_CATALOGUE=1 to keep using those devices.\n"
        )


def run(argv, stderr):
    args = take_global_options(argv[1:], os.environ)
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    command = args[0] if args else "help"
    if command in VERSION:
        print(version_text())
        return
    if command in HELP:
        HubManagementUtility(["hubserver", *args]).execute()
        return
    import django

    django.setup()
    from .management.location import is_new_database, new_database_notices, notices

    devices = bool(os.environ.get("HUBSERVER_DEVICES"))
    uses_database = command not in DATABASE_FREE or devices
    if not quiet(args) and not HELP.intersection(args):
        program = program_name(argv[0])
        lines = notices(program)
        # ``run`` says so itself once it knows its ports are free (a start that fails creates nothing).
        if uses_database and command != "run" and is_new_database():
            lines += new_database_notices(program)
        for line in lines:
            stderr.write(line + "\n")
    if devices and command not in NO_SYNC:
        sync_user_migrations()
        warn_about_catalogue_data(stderr)
    HubManagementUtility(["hubserver", *args]).execute()


def main(argv=None):
    from django.core.exceptions import ImproperlyConfigured

    from .exceptions import HubserverError

    argv = list(sys.argv if argv is None else argv)
    try:
        run(argv, sys.stderr)
    except (HubserverError, ImproperlyConfigured) as error:
        # A configuration or declaration mistake: the message says what and how to fix it; a traceback would
        # only bury it.
        sys.stderr.write(f"hubserver: error: {error}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
