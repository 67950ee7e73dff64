"""Reading the environment for the binary's settings: data directory, secret key, database, user devices."""

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def env_bool(name, default):
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_int(name, default):
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number; got {raw!r}") from None


def env_float(name, default):
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {raw!r}") from None


def env_list(name, default):
    raw = os.environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_sizes(name, default):
    """``name=bytes,name=bytes`` (e.g. ``hubserver:device-data=1048576``) as a dict of ints."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return dict(default)
    sizes = {}
    for item in raw.split(","):
        key, eq, value = item.strip().rpartition("=")
        if not item.strip():
            continue
        try:
            if not eq or not key.strip():
                raise ValueError
            sizes[key.strip()] = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be name=bytes pairs separated by commas; got {raw!r}") from None
    return sizes


FOREVER = {"forever", "none", "never"}


def env_duration(name):
    """A retention variable: ``"30d"``, ``"12h"``..., or ``forever`` (None); ``...`` when it is not set."""
    from hubserver.lifecycle.durations import parse_duration

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return ...
    value = raw.strip()
    if value.lower() in FOREVER:
        return None
    parse_duration(value, name)  # a ConfigurationError (ImproperlyConfigured) naming the variable
    return value


def env_rollup_durations(name):
    """``30d`` for every bucket, or ``1m=30d,1h=5y,1d=forever``; ``...`` when it is not set."""
    from hubserver.lifecycle.durations import parse_duration

    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return ...
    if "=" not in raw:
        return env_duration(name)
    durations = {}
    for item in raw.split(","):
        label, eq, value = item.strip().partition("=")
        if not item.strip():
            continue
        if not eq or not label.strip():
            raise ImproperlyConfigured(
                f"{name} must be one duration or bucket=duration pairs (1m=30d,1h=5y); got {raw!r}"
            )
        value = value.strip()
        durations[label.strip()] = None if value.lower() in FOREVER else value
        if durations[label.strip()] is not None:
            parse_duration(value, f"{name} ({label.strip()})")
    return durations


def lifecycle_settings():
    """The HUBSERVER retention and pruning keys set in the environment (unset ones keep their defaults)."""
    values = {
        "MESSAGE_RETENTION": env_duration("HUBSERVER_MESSAGE_RETENTION"),
        "COMMAND_RETENTION": env_duration("HUBSERVER_COMMAND_RETENTION"),
        "READING_RETENTION": env_duration("HUBSERVER_READING_RETENTION"),
        "ROLLUP_RETENTION": env_rollup_durations("HUBSERVER_ROLLUP_RETENTION"),
        "PRUNE_INTERVAL": env_float("HUBSERVER_PRUNE_INTERVAL", ...),
        "PRUNE_BATCH_SIZE": env_int("HUBSERVER_PRUNE_BATCH_SIZE", ...),
    }
    return {key: value for key, value in values.items() if value is not ...}


def default_data_dir():
    """The user's data directory (``$XDG_DATA_HOME/hubserver``, by default ``~/.local/share/hubserver``): the
    same whatever the current directory, so every command of one user finds the same hub."""
    base = os.environ.get("XDG_DATA_HOME", "")
    base = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return base / "hubserver"


def data_dir():
    """HUBSERVER_DATA_DIR (``--data-dir``), else default_data_dir(); created if missing."""
    raw = os.environ.get("HUBSERVER_DATA_DIR")
    path = (Path(raw).expanduser() if raw else default_data_dir()).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ImproperlyConfigured(
            f"cannot create the data directory {path}: {error.strerror}; "
            "give a writable one with --data-dir or HUBSERVER_DATA_DIR"
        ) from None
    return path


def secret_key(directory):
    """HUBSERVER_SECRET_KEY, or a key generated on first start and kept (mode 0600) in the data directory."""
    given = os.environ.get("HUBSERVER_SECRET_KEY")
    if given:
        return given
    key_file = directory / "secret_key"
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def database(directory):
    """DATABASE_URL, or SQLite in the data directory tuned for one writer: WAL, IMMEDIATE transactions."""
    import dj_database_url

    url = os.environ.get("DATABASE_URL") or f"sqlite:///{directory / 'hubserver.sqlite3'}"
    config = dj_database_url.parse(url, conn_max_age=600, conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # A persistent connection per thread; a new one per batch tripled commit time (measured).
        config["CONN_MAX_AGE"] = None
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
            "transaction_mode": "IMMEDIATE",
            **config.get("OPTIONS", {}),
        }
    return config


EXTERNAL_ENGINE = "hubserver.brokers.mqtt.MQTTBroker"


# HUBSERVER_BROKER_<KEY> variables that set a key of the default broker's entry.
_BROKER_TLS_FILES = {
    "CA_CERTS": "HUBSERVER_BROKER_CA_CERTS",
    "CERTFILE": "HUBSERVER_BROKER_CERTFILE",
    "KEYFILE": "HUBSERVER_BROKER_KEYFILE",
}
_BROKER_TEXT = {"CLIENT_ID": "HUBSERVER_BROKER_CLIENT_ID", "SHARE_GROUP": "HUBSERVER_BROKER_SHARE_GROUP"}
_BROKER_FLAGS = {
    "AUTH_BACKEND": "HUBSERVER_BROKER_AUTH_BACKEND",
    "USE_SHARED_SUBSCRIPTIONS": "HUBSERVER_BROKER_USE_SHARED_SUBSCRIPTIONS",
}


def brokers():
    """``BROKERS`` from HUBSERVER_BROKER_URL (``mqtt://user:password@host:port`` or ``mqtts://...``): the
    ``default`` broker becomes that external broker. None when the variable is not set (the embedded one)."""
    from urllib.parse import unquote, urlsplit

    url = os.environ.get("HUBSERVER_BROKER_URL", "").strip()
    tls_files = {key: os.environ.get(name, "").strip() for key, name in _BROKER_TLS_FILES.items()}
    given = [_BROKER_TLS_FILES[key] for key, value in tls_files.items() if value]
    # (HUBSERVER_BROKER_AUTH_BACKEND alone is meaningful: it turns the broker HTTP endpoints on.)
    others = [
        name
        for key, name in (*_BROKER_TEXT.items(), *_BROKER_FLAGS.items())
        if key != "AUTH_BACKEND" and os.environ.get(name)
    ]
    if not url:
        if given or others:
            raise ImproperlyConfigured(f"{', '.join(given + others)} set without HUBSERVER_BROKER_URL")
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ImproperlyConfigured(
            f"HUBSERVER_BROKER_URL must be mqtt://user:password@host:port or mqtts://...; got {parts.scheme}://..."
        )
    tls = parts.scheme == "mqtts"
    if given and not tls:
        raise ImproperlyConfigured(f"{', '.join(given)} set but HUBSERVER_BROKER_URL is not mqtts://")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ImproperlyConfigured("HUBSERVER_BROKER_URL has a port that is not a number") from None
    entry = {
        "ENGINE": EXTERNAL_ENGINE,
        "HOST": parts.hostname,
        "PORT": port,
        "USERNAME": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "USE_TLS": tls,
        **{key: value for key, value in tls_files.items() if value},
    }
    for key, name in _BROKER_TEXT.items():
        if os.environ.get(name, "").strip():
            entry[key] = os.environ[name].strip()
    for key, name in _BROKER_FLAGS.items():
        if os.environ.get(name, "").strip():
            entry[key] = env_bool(name, False)
    return {"default": entry}


def channel_layers():
    """The channel layer: in-process, or Redis (HUBSERVER_REDIS_URL) so that a browser on any hub process sees
    what any other process stored."""
    url = os.environ.get("HUBSERVER_REDIS_URL", "").strip()
    if not url:
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"HUBSERVER_REDIS_URL must be a redis://, rediss:// or unix:// URL; got {url!r}")
    try:
        import channels_redis  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(
            "HUBSERVER_REDIS_URL is set but channels-redis is not installed: pip install 'hubserver[redis]'"
        ) from None
    prefix = os.environ.get("HUBSERVER_REDIS_PREFIX", "hubserver").strip() or "hubserver"
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": prefix},
        }
    }


@dataclass(frozen=True)
class UserDevicesApp:
    app: str
    label: str
    devices_file: str
    migrations_module: str


def user_devices_app(directory):
    """The app for HUBSERVER_DEVICES (a user's devices.py); its migrations live in the data directory."""
    raw = os.environ.get("HUBSERVER_DEVICES")
    if not raw:
        return None
    devices_file = Path(raw).expanduser().resolve()
    if not devices_file.is_file():
        raise ImproperlyConfigured(f"HUBSERVER_DEVICES: {devices_file} is not a file")
    # The migrations package lives in <data dir>/migrations/userdevices_migrations, importable by that name.
    package_root = directory / "migrations"
    package = package_root / "userdevices_migrations"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").touch(exist_ok=True)
    if str(package_root) not in sys.path:
        sys.path.insert(0, str(package_root))
    return UserDevicesApp(
        app="hubserver.userdevices",
        label="userdevices",
        devices_file=str(devices_file),
        migrations_module="userdevices_migrations",
    )
