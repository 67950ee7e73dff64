"""``hub_settings``: the ``HUBSERVER`` dict of Django settings, read lazily, validated, cached, and
reloaded when a test changes it with ``override_settings``."""

from django.core.signals import setting_changed

from .exceptions import ConfigurationError

SETTINGS_NAME = "HUBSERVER"
EMBEDDED_ENGINE = "hubserver.brokers.embedded.EmbeddedBroker"
EXTERNAL_ENGINE = "hubserver.brokers.mqtt.MQTTBroker"

# Shortest BROKER_AUTH_TOKEN accepted: the token is all that stands between the network and a password oracle.
BROKER_TOKEN_MIN_LENGTH = 16

# Event loops ``hubserver run`` can run on; the first is the default.
EVENT_LOOPS = ("uvloop", "asyncio")

NUMBER = (int, float)
STR_LIST = "list of str"
DURATION = "duration"  # "90d", "12h"... or None (forever): hubserver.lifecycle.durations
DURATIONS = "duration, or dict of durations by bucket"

# Keys of one BROKERS entry with their type and default.
BROKER_DEFAULTS = {
    "ENGINE": (str, EXTERNAL_ENGINE),
    "HOST": (str, "localhost"),
    "PORT": (int, 1883),
    "USERNAME": (str, ""),
    "PASSWORD": (str, ""),
    "CLIENT_ID": (str, ""),
    "KEEPALIVE": (int, 60),
    "USE_TLS": (bool, False),
    "CA_CERTS": (str, ""),
    "CERTFILE": (str, ""),
    "KEYFILE": (str, ""),
    "USE_SHARED_SUBSCRIPTIONS": (bool, True),
    "SHARE_GROUP": (str, "hubserver"),
    "AUTH_BACKEND": (bool, False),
    # The hub keeps device accounts on this broker through Mosquitto's dynamic-security plugin. Default:
    # on, unless AUTH_BACKEND is (then the broker asks /iot/broker/auth/ and /acl/ instead).
    "DYNAMIC_SECURITY": (bool, True),
}

# Top-level keys: django-devicehub's names first, then the hub's own.
DEFAULTS = {
    "BROKERS": (dict, {"default": {"ENGINE": EMBEDDED_ENGINE}}),
    "TOPIC_PREFIX": (str, "things"),
    "AUTO_ADMIN": (bool, True),
    "AUTO_API": (bool, True),
    # Embedded broker listeners (used by ``hubserver run``).
    "MQTT_HOST": (str, "0.0.0.0"),
    "MQTT_PORT": (int, 1883),
    "MQTT_TLS_PORT": (int, 0),  # 0: no TLS listener
    "MQTT_TLS_CERTFILE": (str, ""),
    "MQTT_TLS_KEYFILE": (str, ""),
    "MQTT_WEBSOCKET_PATH": (str, "/mqtt"),
    # Where devices connect, as printed by provisioning (hubserver.endpoints): "" / 0 = what the hub running on
    # this database listens on (the host name of this machine when it listens on every address).
    "PUBLIC_HOST": (str, ""),
    "PUBLIC_MQTT_PORT": (int, 0),
    "PUBLIC_MQTT_TLS_PORT": (int, 0),
    "PUBLIC_WEBSOCKET_URL": (str, ""),
    # Who may connect, and how much.
    "ALLOW_ANONYMOUS": (bool, False),
    "ANONYMOUS_DENY": (STR_LIST, []),
    "MAX_PAYLOAD_SIZE": (int, 256 * 1024),
    "MAX_CONNECTIONS": (int, 10_000),
    # HTTP request bodies: the limit of every URL without its own, and limits by URL name (the hub's own
    # routes have built-in ones: hubserver.web.bodies). Refused from the headers, before the body is read.
    "HTTP_MAX_BODY_SIZE": (int, 1024 * 1024),
    "HTTP_BODY_LIMITS": (dict, {}),
    # MQTT limits (docs/limits.md): the largest packet, and the largest CONNECT (all a client can make the
    # hub hold before it is authenticated); seconds a new connection has to send its CONNECT.
    "MAX_PACKET_SIZE": (int, 1024 * 1024),
    "MAX_CONNECT_SIZE": (int, 16 * 1024),
    "CONNECT_TIMEOUT": (NUMBER, 10.0),
    # The longest keepalive (seconds) an MQTT 5 client may use; one asking for more, or for none (0), is
    # told this one in CONNACK (Server Keep Alive) and held to it. 0: each client keeps its own.
    "MAX_KEEPALIVE": (int, 0),
    # Per MQTT connection: QoS 1/2 messages sent and not yet acknowledged, and incoming packets being
    # handled at once (beyond: the hub stops reading); incoming QoS 2 messages waiting for their PUBREL.
    "MAX_INFLIGHT_MESSAGES": (int, 32),
    "MAX_AWAITING_REL": (int, 100),
    # QoS 1/2 deliveries waiting for a place in a client's in-flight window; beyond, new ones are dropped.
    "MAX_QUEUED_MESSAGES": (int, 1000),
    # Per MQTT client quotas (0: none), which a DeviceType's Meta may override: packets (PUBLISH, PINGREQ,
    # SUBSCRIBE, UNSUBSCRIBE and acknowledgements of nothing) and PUBLISH bytes per second, each with a
    # burst; and how many of its messages may wait for the database at once.
    "CLIENT_MESSAGE_RATE": (NUMBER, 500),
    "CLIENT_MESSAGE_BURST": (int, 2000),
    "CLIENT_BYTE_RATE": (NUMBER, 1024 * 1024),
    "CLIENT_BYTE_BURST": (int, 4 * 1024 * 1024),
    "CLIENT_QUEUE_SHARE": (int, 200),
    # Reading timestamps a device may send, in seconds before / after the time the hub received the message;
    # outside them the receive time is used and the message is marked failed with the reason.
    "TIMESTAMP_MAX_PAST": (NUMBER, 3650 * 24 * 3600),
    "TIMESTAMP_MAX_FUTURE": (NUMBER, 3600),
    # Shared secret an external broker sends to /iot/broker/auth/ and /acl/ ("Authorization: Bearer ...");
    # required (BROKER_TOKEN_MIN_LENGTH characters at least) when a BROKERS entry sets AUTH_BACKEND, which is
    # what turns those endpoints on.
    "BROKER_AUTH_TOKEN": (str, ""),
    # Authentication failures (MQTT CONNECT, /iot/broker/auth/) per username and per source address within
    # AUTH_FAILURE_WINDOW seconds, after which attempts are refused unchecked until the window ends (0: off).
    "AUTH_FAILURE_LIMIT": (int, 10),
    "AUTH_ADDRESS_FAILURE_LIMIT": (int, 30),
    "AUTH_FAILURE_WINDOW": (NUMBER, 60),
    # /metrics for anyone (not only this machine and staff users), or for these networks too (CIDR, e.g. a
    # container bridge's 172.16.0.0/12).
    "METRICS_PUBLIC": (bool, False),
    "METRICS_ALLOWED_NETWORKS": (STR_LIST, []),
    # Seconds without any message after which a connected device is marked offline (0: never).
    "HEARTBEAT_TIMEOUT": (NUMBER, 300),
    # Bytes a WebSocket (MQTT, live view, DASF) may hold for a client that has not read them; beyond, sending to
    # it waits for the client, and the sender's own queue limit applies (hubserver.web.send_buffer).
    "WEBSOCKET_SEND_BUFFER": (int, 64 * 1024),
    # Live views: events buffered per WebSocket before a viewer is dropped as too slow, the seconds it then
    # gets to take its error, and subscriptions per WebSocket; SSE keep-alive seconds, reconnect delay (ms)
    # and rows per replay page; polling's default and largest ?limit=; the channel layer alias for fan-out.
    "REALTIME_QUEUE_SIZE": (int, 1000),
    "REALTIME_SLOW_CLOSE_TIMEOUT": (NUMBER, 5.0),
    "REALTIME_MAX_SUBSCRIPTIONS": (int, 200),
    "SSE_HEARTBEAT": (NUMBER, 15.0),
    "SSE_RETRY": (int, 3000),
    "SSE_REPLAY_PAGE": (int, 500),
    "POLL_LIMIT": (int, 100),
    "POLL_MAX_LIMIT": (int, 1000),
    "CHANNEL_LAYER": (str, "default"),
    # Group-commit writer: rows per transaction at most, and queued messages before back-pressure.
    "WRITER_BATCH_SIZE": (int, 2000),
    "WRITER_QUEUE_SIZE": (int, 50_000),
    # The event loop ``hubserver run`` runs on (EVENT_LOOPS): uvloop when installed, or asyncio's own.
    "EVENT_LOOP": (str, EVENT_LOOPS[0]),
    # How long rows are kept ("30d", "12h", ... or None: forever); a DeviceType's Meta.retention overrides
    # them (hubserver.lifecycle.retention). Rollups: one duration, or one per bucket ("1m", "1h", "1d").
    "MESSAGE_RETENTION": (DURATION, "30d"),
    "COMMAND_RETENTION": (DURATION, "90d"),
    "READING_RETENTION": (DURATION, "400d"),
    "ROLLUP_RETENTION": (DURATIONS, {"1m": "30d", "1h": "5y", "1d": None}),
    # Seconds between the hub's pruning passes (0: none; use ``hubserver prune``), rows per delete batch.
    "PRUNE_INTERVAL": (NUMBER, 60),
    "PRUNE_BATCH_SIZE": (int, 1000),
}


def _type_name(expected):
    if expected in (STR_LIST, DURATIONS):
        return expected
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _check_type(where, value, expected):
    if expected in (DURATION, DURATIONS):
        return  # checked by _durations(), with a message that shows the format
    if expected == STR_LIST:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    elif expected in (int, NUMBER):
        ok = isinstance(value, expected) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigurationError(f"{where} must be a {_type_name(expected)}, got {type(value).__name__} {value!r}")


def _validate_brokers(brokers):
    if not brokers:
        raise ConfigurationError(f"{SETTINGS_NAME}['BROKERS'] must name at least one broker")
    resolved = {}
    for name, config in brokers.items():
        where = f"{SETTINGS_NAME}['BROKERS'][{name!r}]"
        _check_type(where, config, dict)
        unknown = sorted(set(config) - set(BROKER_DEFAULTS))
        if unknown:
            raise ConfigurationError(f"{where}: unknown key(s) {', '.join(unknown)}")
        entry = {}
        for key, (expected, default) in BROKER_DEFAULTS.items():
            value = config.get(key, default)
            _check_type(f"{where}[{key!r}]", value, expected)
            entry[key] = value
        if "DYNAMIC_SECURITY" not in config:
            entry["DYNAMIC_SECURITY"] = not entry["AUTH_BACKEND"]
        elif entry["DYNAMIC_SECURITY"] and entry["AUTH_BACKEND"]:
            raise ConfigurationError(
                f"{where}: AUTH_BACKEND and DYNAMIC_SECURITY are both True; the broker checks devices either "
                "through the hub's HTTP endpoints (EMQX) or through accounts the hub keeps (Mosquitto), not both"
            )
        resolved[name] = entry
    return resolved


def _networks(values):
    import ipaddress

    try:
        return [ipaddress.ip_network(value, strict=False) for value in values]
    except ValueError as error:
        raise ConfigurationError(f"{SETTINGS_NAME}['METRICS_ALLOWED_NETWORKS']: {error}") from None


def _durations(resolved):
    """Parse the retention settings in place: a timedelta or None each, ROLLUP_RETENTION a dict by bucket."""
    from .lifecycle.durations import parse_duration
    from .lifecycle.retention import parse_rollups

    for key, (expected, _) in DEFAULTS.items():
        where = f"{SETTINGS_NAME}[{key!r}]"
        if expected == DURATION:
            resolved[key] = parse_duration(resolved[key], where)
        elif expected == DURATIONS:
            resolved[key] = parse_rollups(resolved[key], where)


def validate(user):
    """Merge the user's dict with the defaults; raise ConfigurationError naming the first bad key."""
    if not isinstance(user, dict):
        raise ConfigurationError(f"{SETTINGS_NAME} must be a dict, got {type(user).__name__}")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(
            f"{SETTINGS_NAME}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(DEFAULTS)}"
        )
    resolved = {}
    for key, (expected, default) in DEFAULTS.items():
        value = user.get(key, default)
        _check_type(f"{SETTINGS_NAME}[{key!r}]", value, expected)
        resolved[key] = value
    resolved["BROKERS"] = _validate_brokers(resolved["BROKERS"])
    resolved["ANONYMOUS_DENY"] = list(resolved["ANONYMOUS_DENY"])
    prefix = resolved["TOPIC_PREFIX"]
    if not prefix or any(c in prefix for c in "#+") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigurationError(
            f"{SETTINGS_NAME}['TOPIC_PREFIX'] must be a topic without wildcards or leading/trailing '/', got {prefix!r}"
        )
    if resolved["EVENT_LOOP"] not in EVENT_LOOPS:
        raise ConfigurationError(
            f"{SETTINGS_NAME}['EVENT_LOOP'] must be one of {', '.join(EVENT_LOOPS)}, got {resolved['EVENT_LOOP']!r}"
        )
    if any(entry["AUTH_BACKEND"] for entry in resolved["BROKERS"].values()):
        token = resolved["BROKER_AUTH_TOKEN"]
        if len(token.strip()) < BROKER_TOKEN_MIN_LENGTH:
            raise ConfigurationError(
                f"{SETTINGS_NAME}['BROKER_AUTH_TOKEN'] must be set (at least {BROKER_TOKEN_MIN_LENGTH} characters) "
                "when a BROKERS entry enables AUTH_BACKEND: it turns on /iot/broker/auth/ and /iot/broker/acl/, "
                "which answer only requests carrying it. Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    for key in ("AUTH_FAILURE_LIMIT", "AUTH_ADDRESS_FAILURE_LIMIT"):
        if resolved[key] < 0:
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] must be 0 (off) or more, got {resolved[key]}")
    for name, limit in resolved["HTTP_BODY_LIMITS"].items():
        where = f"{SETTINGS_NAME}['HTTP_BODY_LIMITS'][{name!r}]"
        if not isinstance(name, str):
            raise ConfigurationError(f"{SETTINGS_NAME}['HTTP_BODY_LIMITS'] keys are URL names, got {name!r}")
        _check_type(where, limit, int)
        if limit < 0:
            raise ConfigurationError(f"{where} must be 0 or more bytes, got {limit}")
    resolved["HTTP_BODY_LIMITS"] = dict(resolved["HTTP_BODY_LIMITS"])
    resolved["METRICS_ALLOWED_NETWORKS"] = _networks(resolved["METRICS_ALLOWED_NETWORKS"])
    for key in ("PUBLIC_MQTT_PORT", "PUBLIC_MQTT_TLS_PORT"):
        if not 0 <= resolved[key] <= 65535:
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] must be a port (1-65535, or 0: the listening one)")
    for key in (
        "MAX_PAYLOAD_SIZE",
        "HTTP_MAX_BODY_SIZE",
        "AUTH_FAILURE_WINDOW",
        "MAX_PACKET_SIZE",
        "MAX_CONNECT_SIZE",
        "CONNECT_TIMEOUT",
        "MAX_INFLIGHT_MESSAGES",
        "MAX_AWAITING_REL",
        "MAX_QUEUED_MESSAGES",
        "CLIENT_QUEUE_SHARE",
        "TIMESTAMP_MAX_PAST",
        "TIMESTAMP_MAX_FUTURE",
        "WRITER_BATCH_SIZE",
        "WRITER_QUEUE_SIZE",
        "WEBSOCKET_SEND_BUFFER",
        "REALTIME_QUEUE_SIZE",
        "REALTIME_SLOW_CLOSE_TIMEOUT",
        "REALTIME_MAX_SUBSCRIPTIONS",
        "SSE_HEARTBEAT",
        "SSE_RETRY",
        "SSE_REPLAY_PAGE",
        "POLL_LIMIT",
        "POLL_MAX_LIMIT",
        "PRUNE_BATCH_SIZE",
    ):
        if resolved[key] <= 0:
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] must be positive, got {resolved[key]}")
    if not 0 <= resolved["MAX_KEEPALIVE"] <= 65535:
        raise ConfigurationError(f"{SETTINGS_NAME}['MAX_KEEPALIVE'] must be 0 (no cap) to 65535 seconds")
    for key in ("CLIENT_MESSAGE_RATE", "CLIENT_MESSAGE_BURST", "CLIENT_BYTE_RATE", "CLIENT_BYTE_BURST"):
        if resolved[key] < 0:
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] must be 0 (no quota) or positive, got {resolved[key]}")
    if resolved["MAX_CONNECT_SIZE"] > resolved["MAX_PACKET_SIZE"]:
        raise ConfigurationError(f"{SETTINGS_NAME}['MAX_CONNECT_SIZE'] must not exceed MAX_PACKET_SIZE")
    if resolved["PRUNE_INTERVAL"] < 0:
        raise ConfigurationError(
            f"{SETTINGS_NAME}['PRUNE_INTERVAL'] must be 0 (no pruning in the hub) or more seconds, "
            f"got {resolved['PRUNE_INTERVAL']}"
        )
    _durations(resolved)
    return resolved


class HubSettings:
    """Attribute access to the validated settings: ``hub_settings.TOPIC_PREFIX``."""

    def __init__(self):
        self._cache = None

    def _load(self):
        from django.conf import settings

        self._cache = validate(getattr(settings, SETTINGS_NAME, {}))
        return self._cache

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._cache if self._cache is not None else self._load()
        try:
            return values[name]
        except KeyError:
            raise AttributeError(f"{SETTINGS_NAME} has no setting {name!r}") from None

    def as_dict(self):
        return dict(self._cache if self._cache is not None else self._load())

    def reload(self):
        """Drop the cache; the next access reads and validates the Django settings again."""
        self._cache = None


hub_settings = HubSettings()


def _on_setting_changed(setting, **kwargs):
    if setting == SETTINGS_NAME:
        hub_settings.reload()


setting_changed.connect(_on_setting_changed, dispatch_uid="hubserver.conf.reload")
