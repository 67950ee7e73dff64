"""How the hub reaches an external broker: one ``BROKERS`` entry turned into an address, credentials and a
TLS context, with every problem reported as ``BrokerError`` naming the broker and the key.

Shared by the external engine (its subscriber connection) and the dynamic-security administration (its
short-lived admin connections), so both read the entry the same way.
"""

import os
import socket
import ssl
import uuid
from dataclasses import dataclass

from ..conf import SETTINGS_NAME, hub_settings
from ..exceptions import ConfigurationError, HubserverError


class BrokerError(HubserverError):
    """An external broker cannot be used as configured (unreachable, refused, TLS files missing...)."""


def where(name, key=None):
    """``HUBSERVER['BROKERS']['name']['KEY']``: how errors name a setting."""
    text = f"{SETTINGS_NAME}['BROKERS'][{name!r}]"
    return f"{text}[{key!r}]" if key else text


@dataclass(frozen=True)
class BrokerAddress:
    """One ``BROKERS`` entry, as a client needs it."""

    name: str
    host: str
    port: int
    username: str
    password: str
    client_id: str
    keepalive: int
    use_tls: bool
    ca_certs: str
    certfile: str
    keyfile: str

    def __str__(self):
        return f"broker {self.name!r} ({'mqtts' if self.use_tls else 'mqtt'}://{self.host}:{self.port})"

    def ssl_context(self):
        """The client TLS context (None without USE_TLS); BrokerError naming the key of a missing file."""
        if not self.use_tls:
            return None
        for key, path in (("CA_CERTS", self.ca_certs), ("CERTFILE", self.certfile), ("KEYFILE", self.keyfile)):
            if path and not os.path.isfile(path):
                raise BrokerError(f"{self}: {where(self.name, key)}: {path} does not exist or is not a file")
        if bool(self.certfile) != bool(self.keyfile):
            missing = "KEYFILE" if self.certfile else "CERTFILE"
            raise BrokerError(f"{self}: {where(self.name, missing)} is empty: mutual TLS needs CERTFILE and KEYFILE")
        try:
            context = ssl.create_default_context(cafile=self.ca_certs or None)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise BrokerError(f"{self}: cannot load the TLS files of {where(self.name)}: {exc}") from exc
        return context

    def admin_client_id(self):
        """A throw-away client id for administration (never the worker's persistent session)."""
        return f"hubserver-admin-{uuid.uuid4().hex[:12]}"


def default_client_id(name):
    """The worker's client id when ``CLIENT_ID`` is empty: stable across restarts of the same host (its
    persistent session, and what the broker holds for it, must survive a restart), one per broker entry."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"hubserver-{host}-{name}"


def broker_address(name, client_id=None):
    """The ``BrokerAddress`` of entry ``name``; ConfigurationError if there is no such entry."""
    brokers = hub_settings.BROKERS
    if name not in brokers:
        raise ConfigurationError(f"unknown broker {name!r}; configured brokers: {', '.join(sorted(brokers))}")
    entry = brokers[name]
    return BrokerAddress(
        name=name,
        host=entry["HOST"],
        port=entry["PORT"],
        username=entry["USERNAME"],
        password=entry["PASSWORD"],
        client_id=client_id or entry["CLIENT_ID"] or default_client_id(name),
        keepalive=entry["KEEPALIVE"],
        use_tls=entry["USE_TLS"],
        ca_certs=entry["CA_CERTS"],
        certfile=entry["CERTFILE"],
        keyfile=entry["KEYFILE"],
    )


def connect_error(address, exc):
    """A BrokerError saying why a connection to ``address`` failed, in words a user can act on."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, socket.gaierror):
        return BrokerError(f"{address}: cannot resolve host {address.host!r} ({where(address.name, 'HOST')}): {exc}")
    if isinstance(exc, ssl.SSLError):
        return BrokerError(
            f"{address}: TLS handshake failed: {exc.reason or exc} (check {where(address.name, 'CA_CERTS')}, "
            "CERTFILE and KEYFILE, and that PORT is the broker's TLS listener)"
        )
    if isinstance(exc, (ConnectionRefusedError, TimeoutError, OSError)):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return BrokerError(
            f"{address}: cannot connect: {reason} (check {where(address.name, 'HOST')} and "
            f"{where(address.name, 'PORT')}, and that the broker is running)"
        )
    return BrokerError(f"{address}: cannot connect: {type(exc).__name__}: {exc}")
