"""``python -m hubserver.healthcheck``: exit 0 when the hub on this machine answers ``/healthz`` (HTTP and its
database) and accepts MQTT connections, else 1 with the reason on stderr. It is the container image's
HEALTHCHECK; the ports are those of the running hub's note (``hubserver.running``), else the defaults."""

import socket
import sys
import urllib.error
import urllib.request

from hubserver.running import running_hubs

DEFAULT_HTTP_PORT, DEFAULT_MQTT_PORT = 8000, 1883
TIMEOUT = 4.0


def local_address(host):
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def check():
    """None when healthy, else what is wrong."""
    hubs = running_hubs()
    hub = hubs[0] if hubs else None
    host = local_address(hub.host) if hub else "127.0.0.1"
    http_port = hub.http_port if hub else DEFAULT_HTTP_PORT
    mqtt_port = hub.mqtt_port if hub else DEFAULT_MQTT_PORT
    url_host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{url_host}:{http_port}/healthz", timeout=TIMEOUT) as response:
            if response.status != 200:
                return f"/healthz answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"/healthz answered {error.code}: {error.read(200).decode(errors='replace')}"
    except OSError as error:
        return f"no HTTP answer on {host}:{http_port}: {error}"
    try:
        socket.create_connection((host, mqtt_port), timeout=TIMEOUT).close()
    except OSError as error:
        return f"no MQTT listener on {host}:{mqtt_port}: {error}"
    return None


def main():
    problem = check()
    if problem:
        sys.stderr.write(f"unhealthy: {problem}\n")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
