"""Telling the user where a command keeps its data: which data directory and database it uses, that it is
about to create a new database, and that a hub is running on another one (devices provisioned into a
database the running hub does not use are refused by it)."""

import os
from pathlib import Path

from django.conf import settings
from django.db import connections

from ..running import database_key, running_hubs

# The data directory of releases before the default became the user's data directory.
OLD_DEFAULT = "hubserver-data"


def is_new_database():
    """True when the default database is an SQLite file that does not exist yet (the command creates it)."""
    config = connections["default"].settings_dict
    if config["ENGINE"] != "django.db.backends.sqlite3":
        return False
    name = str(config.get("NAME") or "")
    return bool(name) and name != ":memory:" and not Path(name).exists()


def where(settings_dict=None):
    """``data directory X`` and, unless it is the default SQLite file inside it, ``database Y``."""
    data_dir = Path(settings.DATA_DIR)
    database = database_key(settings_dict)
    if Path(database).parent == data_dir and os.path.isabs(database):
        return f"data directory {data_dir}"
    return f"data directory {data_dir}, database {database}"


def notices(program):
    """What to print (to stderr) before a command runs: where it works, and a forgotten old data directory."""
    lines = [f"hubserver: {where()}"]
    if "HUBSERVER_DATA_DIR" not in os.environ:
        old = Path(OLD_DEFAULT)
        if (old / "hubserver.sqlite3").is_file() and old.resolve() != Path(settings.DATA_DIR):
            lines.append(
                f"hubserver: warning: ./{OLD_DEFAULT} here holds a hub database, but this command uses the "
                f"default data directory {settings.DATA_DIR}. To use the one here: "
                f"{program} --data-dir {OLD_DEFAULT} ..."
            )
    return lines


def new_database_notices(program):
    """What to print before creating a new database: that it happens, and which hubs run on other ones."""
    lines = [f"hubserver: creating a new database in {settings.DATA_DIR}"]
    mine = database_key()
    for hub in running_hubs():
        if hub.database == mine:
            continue
        on = f"{program} --data-dir {hub.data_dir} ..." if hub.data_dir else "the settings it runs with"
        lines.append(
            f"hubserver: warning: a hub is running (pid {hub.pid}, MQTT port {hub.mqtt_port}) on another database, "
            f"{hub.database}; devices and users created here are unknown to it. To use that hub's database: {on}"
        )
    return lines
