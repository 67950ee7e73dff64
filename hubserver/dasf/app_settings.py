"""Settings of the DASF topic broker, read from Django settings when asked (``override_settings`` works).

    from hubserver.dasf import app_settings
    app_settings.DASF_STORE_MESSAGES      # StoreMessageOptions.CACHE unless configured

| setting | default | meaning |
|---|---|---|
| ``DASF_CREATE_TOPIC_ON_MESSAGE`` | ``True`` | a message to an unknown topic creates it (needs ``add_brokertopic``) |
| ``DASF_STORE_MESSAGES`` | ``"cache"`` | what is stored: ``disabled``, ``cache``, ``cacheall`` or ``store`` |
| ``DASF_STORE_SOURCE_MESSAGES`` | ``DASF_STORE_MESSAGES`` | the same, for topics that are not response topics |
| ``DASF_STORE_RESPONSE_MESSAGES`` | ``DASF_STORE_MESSAGES`` | the same, for response topics |
| ``DASF_WEBSOCKET_URL_ROUTE`` | ``"ws/"`` | path prefix of the WebSocket routes (read when the routes are built) |
| ``ROOT_URL`` | ``None`` | public base URL (``http://hub.example.com``) for WebSocket URLs built behind a proxy |
| ``DASF_PING_INTERVAL`` | ``60`` | seconds between pings of every DASF topic (``0``: no periodic pings) |
| ``DASF_PONG_TIMEOUT`` | ``10`` | seconds a pong may come after a ping before the topic counts as offline |
| ``DASF_GARBAGE_COLLECT_AFTER`` | ``600`` | seconds a response topic nobody needs is kept before it is deleted |
| ``DASF_CONSUMER_QUEUE_SIZE`` | ``1000`` | messages queued for one connection before it is closed as too slow |
| ``DASF_MAX_MESSAGE_SIZE`` | ``1048576`` | largest message (bytes of its JSON) a producer may send |
| ``DASF_MQTT_PREFIX`` | ``"dasf"`` | DASF topic ``<slug>`` is the MQTT topic ``<prefix>/<slug>`` of the hub's broker |

A topic's availability is unknown when it was never pinged, or last pinged more than ``2 * DASF_PING_INTERVAL``
seconds ago (two minutes by default; two minutes too when periodic pings are off).
"""

from enum import StrEnum

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class StoreMessageOptions(StrEnum):
    """What the broker keeps of a topic's messages."""

    DISABLED = "disabled"  # nothing: a message reaches the consumers connected right now
    CACHE = "cache"  # until one consumer acknowledged it
    CACHEALL = "cacheall"  # until every consumer (everyone holding can_consume) acknowledged it
    STORE = "store"  # forever


def _store_option(name, default):
    value = getattr(settings, name, None)
    if value is None:
        return default
    try:
        return StoreMessageOptions(value)
    except ValueError:
        choices = ", ".join(option.value for option in StoreMessageOptions)
        raise ImproperlyConfigured(f"{name} must be one of {choices}, got {value!r}") from None


def _bool(name, default):
    value = getattr(settings, name, default)
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"{name} must be True or False, got {value!r}")
    return value


def _number(name, default, minimum=0):
    value = getattr(settings, name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ImproperlyConfigured(f"{name} must be a number >= {minimum}, got {value!r}")
    return value


def _route():
    value = getattr(settings, "DASF_WEBSOCKET_URL_ROUTE", "ws/")
    if not isinstance(value, str) or not value.endswith("/") or value.startswith("/"):
        raise ImproperlyConfigured(
            f"DASF_WEBSOCKET_URL_ROUTE must be a path like 'ws/' (no leading '/'), got {value!r}"
        )
    return value


def _mqtt_prefix():
    value = getattr(settings, "DASF_MQTT_PREFIX", "dasf")
    if (
        not isinstance(value, str)
        or not value
        or any(c in value for c in "#+\x00")
        or value.startswith(("/", "$"))
        or value.endswith("/")
    ):
        raise ImproperlyConfigured(
            f"DASF_MQTT_PREFIX must be an MQTT topic without wildcards, '$' or leading/trailing '/', got {value!r}"
        )
    return value


def _root_url():
    value = getattr(settings, "ROOT_URL", None)
    if value is not None and not isinstance(value, str):
        raise ImproperlyConfigured(f"ROOT_URL must be a string or None, got {value!r}")
    return value.rstrip("/") if value else None


_READERS = {
    "DASF_CREATE_TOPIC_ON_MESSAGE": lambda: _bool("DASF_CREATE_TOPIC_ON_MESSAGE", True),
    "DASF_STORE_MESSAGES": lambda: _store_option("DASF_STORE_MESSAGES", StoreMessageOptions.CACHE),
    "DASF_STORE_SOURCE_MESSAGES": lambda: _store_option(
        "DASF_STORE_SOURCE_MESSAGES", _store_option("DASF_STORE_MESSAGES", StoreMessageOptions.CACHE)
    ),
    "DASF_STORE_RESPONSE_MESSAGES": lambda: _store_option(
        "DASF_STORE_RESPONSE_MESSAGES", _store_option("DASF_STORE_MESSAGES", StoreMessageOptions.CACHE)
    ),
    "DASF_WEBSOCKET_URL_ROUTE": _route,
    "ROOT_URL": _root_url,
    "DASF_PING_INTERVAL": lambda: _number("DASF_PING_INTERVAL", 60),
    "DASF_PONG_TIMEOUT": lambda: _number("DASF_PONG_TIMEOUT", 10),
    "DASF_GARBAGE_COLLECT_AFTER": lambda: _number("DASF_GARBAGE_COLLECT_AFTER", 600),
    "DASF_CONSUMER_QUEUE_SIZE": lambda: int(_number("DASF_CONSUMER_QUEUE_SIZE", 1000, minimum=1)),
    "DASF_MAX_MESSAGE_SIZE": lambda: int(_number("DASF_MAX_MESSAGE_SIZE", 1024 * 1024, minimum=1024)),
    "DASF_MQTT_PREFIX": _mqtt_prefix,
}

__all__ = ["StoreMessageOptions", "check", *_READERS]


def __getattr__(name):
    reader = _READERS.get(name)
    if reader is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return reader()


def check():
    """Read every setting once, so a bad value stops start-up with its name."""
    for reader in _READERS.values():
        reader()


def availability_window():
    """Seconds after the last ping during which a topic's availability is known."""
    interval = __getattr__("DASF_PING_INTERVAL")
    return 2 * interval if interval else 120
