"""The ``hubserver`` command: the hub's own commands and every Django management command, on the binary's
settings (``hubserver.settings``), with ``--devices FILE`` and ``--data-dir DIR`` understood anywhere."""

import io
import os
import sys

from django.core.management import ManagementUtility, call_command, get_commands, load_command_class

SETTINGS_MODULE = "hubserver.settings"
HUB_APPS = ("hubserver",)
GLOBAL_OPTIONS = {"--devices": "HUBSERVER_DEVICES", "--data-dir": "HUBSERVER_DATA_DIR"}
# Commands that manage migrations themselves, or need no database, skip the user-devices migration sync.
NO_SYNC = {
    "makemigrations",
    "migrate",
    "sqlmigrate",
    "showmigrations",
    "squashmigrations",
    "help",
    "version",
    "check",
    "--help",
    "-h",
    "--version",
}


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


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    args = take_global_options(argv[1:], os.environ)
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    command = args[0] if args else "help"
    if os.environ.get("HUBSERVER_DEVICES") and command not in NO_SYNC:
        import django

        django.setup()
        sync_user_migrations()
    HubManagementUtility(["hubserver", *args]).execute()


if __name__ == "__main__":
    main()
