"""Where simulated devices connect: a ``BROKERS`` entry (``--broker``), or the hub's own embedded broker.

For the embedded engine (the default entry of ``hubserver run``) the address is ``--host`` / ``--port``,
defaulting to where the hub running on this database listens (else this machine and ``MQTT_PORT``); for an
external broker (EMQX, Mosquitto) its ``HOST``, ``PORT`` and TLS settings, unless ``--host`` / ``--port``
say otherwise.
"""

from dataclasses import dataclass

from ..conf import EMBEDDED_ENGINE, hub_settings
from ..exceptions import ConfigurationError
from ..running import hub_on

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    broker: str = "default"
    tls: bool = False
    ca_certs: str = ""
    certfile: str = ""
    keyfile: str = ""

    def __str__(self):
        return f"{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


def resolve_target(broker="default", host=None, port=None):
    """The ``Target`` for broker ``broker``; raises ConfigurationError naming the configured brokers."""
    brokers = hub_settings.BROKERS
    if broker not in brokers:
        raise ConfigurationError(f"unknown broker {broker!r}; configured brokers: {', '.join(sorted(brokers))}")
    entry = brokers[broker]
    if entry["ENGINE"] == EMBEDDED_ENGINE:
        hub = hub_on()  # ``hubserver run`` on this database, with the ports it was started with
        listen = hub.host if hub else hub_settings.MQTT_HOST
        default_host = "127.0.0.1" if listen in WILDCARD_HOSTS else listen
        return Target(host or default_host, port or (hub.mqtt_port if hub else hub_settings.MQTT_PORT), broker)
    return Target(
        host or entry["HOST"],
        port or entry["PORT"],
        broker,
        tls=entry["USE_TLS"],
        ca_certs=entry["CA_CERTS"],
        certfile=entry["CERTFILE"],
        keyfile=entry["KEYFILE"],
    )
