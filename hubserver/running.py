"""Hubs running on this machine: while ``hubserver run`` serves, it leaves a small JSON note saying which
database it uses and where it listens. Other commands read the notes, so ``hubserver provision`` in a
second terminal prints the ports devices really connect to, ``hubserver simulate`` connects to them, and a
command about to create a database that no running hub uses can say so.

The notes live in ``$XDG_RUNTIME_DIR/hubserver`` (else ``$XDG_STATE_HOME/hubserver/running``, by default
``~/.local/state/hubserver/running``), one per process. A note whose process is gone is ignored and removed.
Writing them is best effort: a hub whose user has no writable home still runs, it is just not found.
"""

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("hubserver")


@dataclass(frozen=True)
class RunningHub:
    pid: int
    database: str  # database_key() of the database it serves
    data_dir: str  # "" outside the hubserver binary
    host: str  # the address it listens on (0.0.0.0: all)
    http_port: int
    mqtt_port: int
    mqtt_tls_port: int  # 0: no TLS listener
    websocket_path: str
    started: float


# This process's own hub, when it is one: found without reading the notes.
_this_process = None


def notes_dir():
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hubserver"
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "hubserver" / "running"


def database_key(settings_dict=None):
    """A database's identity: the resolved file of an SQLite database, else ``engine://host:port/name``."""
    if settings_dict is None:
        from django.db import connections

        settings_dict = connections["default"].settings_dict
    engine = settings_dict["ENGINE"].rsplit(".", 1)[-1]
    name = str(settings_dict.get("NAME") or "")
    if engine == "sqlite3":
        return str(Path(name).expanduser().resolve()) if name and name != ":memory:" else name
    host, port = settings_dict.get("HOST") or "localhost", settings_dict.get("PORT") or ""
    return f"{engine}://{host}{':' if port else ''}{port}/{name}"


def record(hub):
    """Note that ``hub`` (this process) is running; returns the note's path, or None if it cannot be written."""
    global _this_process
    _this_process = hub
    folder = notes_dir()
    path = folder / f"{hub.pid}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(hub)))
        temporary.replace(path)
    except OSError as error:
        logger.debug("cannot write the running-hub note %s: %s", path, error)
        return None
    return path


def forget():
    """This process no longer runs a hub."""
    global _this_process
    if _this_process is not None:
        with contextlib.suppress(OSError):
            (notes_dir() / f"{_this_process.pid}.json").unlink()
    _this_process = None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_hubs():
    """Every hub running on this machine for this user (this process's own first), oldest first."""
    hubs = [_this_process] if _this_process is not None else []
    try:
        notes = sorted(notes_dir().glob("*.json"))
    except OSError:
        notes = []
    for note in notes:
        try:
            hub = RunningHub(**json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if _this_process is not None and hub.pid == _this_process.pid:
            continue
        if not _alive(hub.pid):
            with contextlib.suppress(OSError):
                note.unlink()
            continue
        hubs.append(hub)
    return sorted(hubs, key=lambda hub: (hub is not _this_process, hub.started))


def hub_on(database=None):
    """The running hub serving ``database`` (a database_key(); default: this process's database), or None."""
    database = database_key() if database is None else database
    return next((hub for hub in running_hubs() if hub.database == database), None)


def this_hub(host, http_port, mqtt_port, mqtt_tls_port, websocket_path):
    """The RunningHub describing this process, on the database and data directory it is configured with."""
    from django.conf import settings

    return RunningHub(
        pid=os.getpid(),
        database=database_key(),
        data_dir=str(getattr(settings, "DATA_DIR", "") or ""),
        host=host,
        http_port=http_port,
        mqtt_port=mqtt_port,
        mqtt_tls_port=mqtt_tls_port,
        websocket_path=websocket_path,
        started=time.time(),
    )
