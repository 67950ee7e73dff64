"""Who a connected client is. The broker session keeps one principal from CONNECT on, so every later
decision (publish, subscribe, delivery) is an in-memory check against it: no database on those paths.

Principals are small frozen values: safe to share between tasks and threads, and cheap to compare.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DevicePrincipal:
    """A provisioned device. ``type_name`` is the registry's normalized name; topics use it verbatim."""

    type_name: str
    device_id: str
    device_pk: int | None
    mqtt_username: str

    kind = "device"

    @property
    def username(self):
        return self.mqtt_username


@dataclass(frozen=True, slots=True)
class ServicePrincipal:
    """A Django user with the ``hubserver.mqtt_service`` permission (dashboards, bridges, scripts)."""

    username: str
    user_id: int | None

    kind = "service"


@dataclass(frozen=True, slots=True)
class AnonymousPrincipal:
    """A client without credentials, admitted only when ``ALLOW_ANONYMOUS`` is on."""

    kind = "anonymous"
    username = None


@dataclass(frozen=True, slots=True)
class HubPrincipal:
    """The hub itself (its internal client publishing commands): the only one allowed on ``cmd`` topics."""

    kind = "hub"
    username = None


ANONYMOUS = AnonymousPrincipal()
HUB = HubPrincipal()

Principal = DevicePrincipal | ServicePrincipal | AnonymousPrincipal | HubPrincipal
