"""``realtime_settings``: the optional ``HUBSERVER_REALTIME`` dict of Django settings, read lazily on first
use, validated, cached, and reloaded when a test changes it with ``override_settings`` (seed 003 settings).

| key | default | meaning |
|---|---|---|
| ``QUEUE_SIZE`` | 1000 | events buffered per WebSocket before the viewer is dropped as ``too_slow`` |
| ``SLOW_CLOSE_TIMEOUT`` | 5.0 | seconds a dropped viewer gets to take its ``too_slow`` error before a hard close |
| ``MAX_SUBSCRIPTIONS`` | 200 | subscriptions per WebSocket |
| ``SSE_HEARTBEAT`` | 15.0 | seconds between SSE keep-alive comments |
| ``SSE_RETRY`` | 3000 | milliseconds an EventSource waits before reconnecting (SSE ``retry:``) |
| ``REPLAY_PAGE`` | 500 | rows per database page when SSE replays missed events |
| ``POLL_LIMIT`` / ``POLL_MAX_LIMIT`` | 100 / 1000 | default and largest ``?limit=`` of polling |
| ``CHANNEL_LAYER`` | ``"default"`` | the channel layer alias used for fan-out |
"""

from django.core.signals import setting_changed

from ..exceptions import ConfigurationError

SETTINGS_NAME = "HUBSERVER_REALTIME"
NUMBER = (int, float)

DEFAULTS = {
    "QUEUE_SIZE": (int, 1000),
    "SLOW_CLOSE_TIMEOUT": (NUMBER, 5.0),
    "MAX_SUBSCRIPTIONS": (int, 200),
    "SSE_HEARTBEAT": (NUMBER, 15.0),
    "SSE_RETRY": (int, 3000),
    "REPLAY_PAGE": (int, 500),
    "POLL_LIMIT": (int, 100),
    "POLL_MAX_LIMIT": (int, 1000),
    "CHANNEL_LAYER": (str, "default"),
}


def validate(user):
    if not isinstance(user, dict):
        raise ConfigurationError(f"{SETTINGS_NAME} must be a dict, got {type(user).__name__}")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ConfigurationError(f"{SETTINGS_NAME}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    resolved = {}
    for key, (expected, default) in DEFAULTS.items():
        value = user.get(key, default)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] has the wrong type: {value!r}")
        if expected is not str and value <= 0:
            raise ConfigurationError(f"{SETTINGS_NAME}[{key!r}] must be positive, got {value!r}")
        resolved[key] = value
    return resolved


class RealtimeSettings:
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

    def reload(self):
        self._cache = None


realtime_settings = RealtimeSettings()


def _on_setting_changed(setting, **kwargs):
    if setting == SETTINGS_NAME:
        realtime_settings.reload()


setting_changed.connect(_on_setting_changed, dispatch_uid="hubserver.realtime.settings")
