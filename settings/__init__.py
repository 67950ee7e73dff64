"""Settings of the ``hubserver`` binary, configured entirely from the environment.

Every variable read here is documented in ``docs/configuration.md``, a table per area (a test keeps the two
in step): add a row there when you add one here.
"""

import os

from .environment import brokers as _brokers
from .environment import (
    channel_layers,
    data_dir,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_sizes,
    lifecycle_settings,
    secret_key,
    user_devices_app,
)
from .environment import database as _database

DATA_DIR = data_dir()
SECRET_KEY = secret_key(DATA_DIR)
DEBUG = env_bool("HUBSERVER_DEBUG", False)
# The loopback names are always allowed: health checks and tools on the hub's own machine use them.
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
ALLOWED_HOSTS = list(dict.fromkeys([*env_list("HUBSERVER_ALLOWED_HOSTS", []), *LOOPBACK_HOSTS]))
CSRF_TRUSTED_ORIGINS = env_list("HUBSERVER_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "guardian",
    "hubserver",
    "hubserver.dasf",
]
# The built-in catalogue is there to try the hub; a user who brings their own devices file gets only
# their own types (a type of theirs may share a catalogue type's name) unless they ask for both.
if env_bool("HUBSERVER_CATALOGUE", not os.environ.get("HUBSERVER_DEVICES")):
    INSTALLED_APPS.append("hubserver.devicetypes")
MIGRATION_MODULES = {}
_user_app = user_devices_app(DATA_DIR)
if _user_app:
    INSTALLED_APPS.append(_user_app.app)
    MIGRATION_MODULES[_user_app.label] = _user_app.migrations_module
    HUBSERVER_DEVICES_FILE = _user_app.devices_file

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# django-guardian answers object permissions (who may produce to / consume from a DASF topic).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
# A DASF response topic's object permissions are those of its parent BrokerTopic.
GUARDIAN_GET_CONTENT_TYPE = "hubserver.dasf.ctypes.get_content_type"

ROOT_URLCONF = "hubserver.site_urls"
LOGIN_URL = "dashboard:login"
ASGI_APPLICATION = "hubserver.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": _database(DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CHANNEL_LAYERS = channel_layers()

REST_FRAMEWORK = {
    # Token first: a request without credentials is then told 401 with "WWW-Authenticate: Token" (the first
    # class's header), not 403. Sessions (the browser, the browsable API) work the same either way.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        # Any other scheme (curl -u sends Basic) is told which ones the API takes.
        "hubserver.api.authentication.UnacceptedScheme",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "rest_framework.permissions.DjangoModelPermissions",
    ],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "hubserver.api.negotiation.NamedFormats",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "hubserver API",
    "DESCRIPTION": "Devices, readings and commands of every device type this hub knows.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "hubserver.api.openapi.add_payload_schemas",
    ],
}

LANGUAGE_CODE = "en-us"
FORMAT_MODULE_PATH = ["hubserver.settings.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# The process serves its own static files straight from the installed apps: no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

HUBSERVER = {
    "TOPIC_PREFIX": os.environ.get("HUBSERVER_TOPIC_PREFIX", "things"),
    "PUBLIC_HOST": os.environ.get("HUBSERVER_PUBLIC_HOST", ""),
    "PUBLIC_MQTT_PORT": env_int("HUBSERVER_PUBLIC_MQTT_PORT", 0),
    "PUBLIC_MQTT_TLS_PORT": env_int("HUBSERVER_PUBLIC_MQTT_TLS_PORT", 0),
    "PUBLIC_WEBSOCKET_URL": os.environ.get("HUBSERVER_PUBLIC_WEBSOCKET_URL", ""),
    "ALLOW_ANONYMOUS": env_bool("HUBSERVER_ALLOW_ANONYMOUS", False),
    "ANONYMOUS_DENY": env_list("HUBSERVER_ANONYMOUS_DENY", []),
    "BROKERS": {
        "default": {
            "ENGINE": "hubserver.brokers.embedded.EmbeddedBroker",
            "AUTH_BACKEND": env_bool("HUBSERVER_BROKER_AUTH_BACKEND", False),
        }
    },
    "BROKER_AUTH_TOKEN": os.environ.get("HUBSERVER_BROKER_AUTH_TOKEN", ""),
    "AUTH_FAILURE_LIMIT": env_int("HUBSERVER_AUTH_FAILURE_LIMIT", 10),
    "AUTH_ADDRESS_FAILURE_LIMIT": env_int("HUBSERVER_AUTH_ADDRESS_FAILURE_LIMIT", 30),
    "AUTH_FAILURE_WINDOW": env_float("HUBSERVER_AUTH_FAILURE_WINDOW", 60),
    "METRICS_PUBLIC": env_bool("HUBSERVER_METRICS_PUBLIC", False),
    "HTTP_MAX_BODY_SIZE": env_int("HUBSERVER_HTTP_MAX_BODY_SIZE", 1024 * 1024),
    "HTTP_BODY_LIMITS": env_sizes("HUBSERVER_HTTP_BODY_LIMITS", {}),
    "METRICS_ALLOWED_NETWORKS": env_list("HUBSERVER_METRICS_ALLOWED_NETWORKS", []),
    "MQTT_TLS_PORT": env_int("HUBSERVER_MQTT_TLS_PORT", 0),
    "MQTT_TLS_CERTFILE": os.environ.get("HUBSERVER_MQTT_TLS_CERTFILE", ""),
    "MQTT_TLS_KEYFILE": os.environ.get("HUBSERVER_MQTT_TLS_KEYFILE", ""),
    "EVENT_LOOP": os.environ.get("HUBSERVER_EVENT_LOOP", "uvloop").strip().lower(),
    **lifecycle_settings(),
}
# Limits (docs/limits.md): only those set in the environment, so that the defaults live in one place.
for _variable, _key, _read in (
    ("HUBSERVER_MAX_CONNECTIONS", "MAX_CONNECTIONS", env_int),
    ("HUBSERVER_MAX_PAYLOAD_SIZE", "MAX_PAYLOAD_SIZE", env_int),
    ("HUBSERVER_MAX_PACKET_SIZE", "MAX_PACKET_SIZE", env_int),
    ("HUBSERVER_MAX_CONNECT_SIZE", "MAX_CONNECT_SIZE", env_int),
    ("HUBSERVER_CONNECT_TIMEOUT", "CONNECT_TIMEOUT", env_float),
    ("HUBSERVER_MAX_KEEPALIVE", "MAX_KEEPALIVE", env_int),
    ("HUBSERVER_MAX_INFLIGHT_MESSAGES", "MAX_INFLIGHT_MESSAGES", env_int),
    ("HUBSERVER_MAX_AWAITING_REL", "MAX_AWAITING_REL", env_int),
    ("HUBSERVER_MAX_QUEUED_MESSAGES", "MAX_QUEUED_MESSAGES", env_int),
    ("HUBSERVER_CLIENT_MESSAGE_RATE", "CLIENT_MESSAGE_RATE", env_float),
    ("HUBSERVER_CLIENT_MESSAGE_BURST", "CLIENT_MESSAGE_BURST", env_int),
    ("HUBSERVER_CLIENT_BYTE_RATE", "CLIENT_BYTE_RATE", env_float),
    ("HUBSERVER_CLIENT_BYTE_BURST", "CLIENT_BYTE_BURST", env_int),
    ("HUBSERVER_CLIENT_QUEUE_SHARE", "CLIENT_QUEUE_SHARE", env_int),
    ("HUBSERVER_TIMESTAMP_MAX_PAST", "TIMESTAMP_MAX_PAST", env_float),
    ("HUBSERVER_TIMESTAMP_MAX_FUTURE", "TIMESTAMP_MAX_FUTURE", env_float),
    ("HUBSERVER_WEBSOCKET_SEND_BUFFER", "WEBSOCKET_SEND_BUFFER", env_int),
):
    if os.environ.get(_variable, "").strip():
        HUBSERVER[_key] = _read(_variable, None)
if _brokers() is not None:  # HUBSERVER_BROKER_URL: the default broker is an external one
    HUBSERVER["BROKERS"] = _brokers()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "hubserver": {"level": os.environ.get("HUBSERVER_LOG_LEVEL", "INFO")},
        "amqtt": {"level": "WARNING"},
        "transitions": {"level": "WARNING"},
    },
}

# The DASF topic broker (hubserver.dasf): dasf-broker-django's setting names and defaults.
DASF_STORE_MESSAGES = os.environ.get("HUBSERVER_DASF_STORE_MESSAGES", "cache")
DASF_STORE_SOURCE_MESSAGES = os.environ.get("HUBSERVER_DASF_STORE_SOURCE_MESSAGES") or None
DASF_STORE_RESPONSE_MESSAGES = os.environ.get("HUBSERVER_DASF_STORE_RESPONSE_MESSAGES") or None
DASF_CREATE_TOPIC_ON_MESSAGE = env_bool("HUBSERVER_DASF_CREATE_TOPIC_ON_MESSAGE", True)
DASF_WEBSOCKET_URL_ROUTE = os.environ.get("HUBSERVER_DASF_WEBSOCKET_URL_ROUTE", "ws/")
ROOT_URL = os.environ.get("HUBSERVER_ROOT_URL") or None
DASF_PING_INTERVAL = env_float("HUBSERVER_DASF_PING_INTERVAL", 60)
DASF_PONG_TIMEOUT = env_float("HUBSERVER_DASF_PONG_TIMEOUT", 10)
DASF_GARBAGE_COLLECT_AFTER = env_float("HUBSERVER_DASF_GARBAGE_COLLECT_AFTER", 600)
DASF_CONSUMER_QUEUE_SIZE = env_int("HUBSERVER_DASF_CONSUMER_QUEUE_SIZE", 1000)
DASF_MAX_MESSAGE_SIZE = env_int("HUBSERVER_DASF_MAX_MESSAGE_SIZE", 1024 * 1024)
DASF_MQTT_PREFIX = os.environ.get("HUBSERVER_DASF_MQTT_PREFIX", "dasf")
