"""Where devices reach this hub, as printed by provisioning: ``PUBLIC_HOST``, ``PUBLIC_MQTT_PORT``,
``PUBLIC_MQTT_TLS_PORT`` and ``PUBLIC_WEBSOCKET_URL`` when set (a hub behind NAT, a container's published
ports, a TLS-terminating proxy), else what the hub running on this database listens on, else the
settings ``hubserver run`` would start with."""

import socket
from typing import NamedTuple

from .conf import hub_settings
from .running import hub_on

# ``hubserver run --http-port``'s default: the port of the dashboard, API and MQTT over WebSocket.
DEFAULT_HTTP_PORT = 8000
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


class Endpoints(NamedTuple):
    host: str
    mqtt_port: int
    mqtt_tls_port: int | None  # None: the hub has no TLS listener
    websocket_url: str
    running: bool  # False: no hub runs on this database, the ports are the defaults it would start with


def _url_host(host):
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_endpoints():
    hub = hub_on()
    listen_host = hub.host if hub else hub_settings.MQTT_HOST
    host = hub_settings.PUBLIC_HOST or (socket.gethostname() if listen_host in WILDCARD_HOSTS else listen_host)
    mqtt_port = hub_settings.PUBLIC_MQTT_PORT or (hub.mqtt_port if hub else hub_settings.MQTT_PORT)
    tls_port = hub_settings.PUBLIC_MQTT_TLS_PORT or (hub.mqtt_tls_port if hub else hub_settings.MQTT_TLS_PORT)
    websocket_url = hub_settings.PUBLIC_WEBSOCKET_URL
    if not websocket_url:
        http_port = hub.http_port if hub else DEFAULT_HTTP_PORT
        path = hub.websocket_path if hub else hub_settings.MQTT_WEBSOCKET_PATH
        websocket_url = f"ws://{_url_host(host)}:{http_port}{path}"
    return Endpoints(host, mqtt_port, tls_port or None, websocket_url, hub is not None)
