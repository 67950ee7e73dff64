"""Device accounts on external Mosquitto brokers, kept by the hub through the dynamic-security plugin.

A ``BROKERS`` entry with an external ``ENGINE`` and ``DYNAMIC_SECURITY`` on (the default unless
``AUTH_BACKEND`` is on) is *managed*: the hub is the source of truth for the device clients on it.

- Provisioning (``device_provisioned``, inside the provisioning transaction) creates the device's role and
  client with its new password, or sets the new password, which makes Mosquitto end the live session.
  If the broker cannot be updated the provisioning fails and is rolled back: the old credentials keep
  working on both sides. ``batch()`` groups the commands of a bulk provisioning into few messages.
- Deactivating disables the client (Mosquitto ends its session), reactivating enables it, deleting the
  device deletes its client and role (``credentials_revoked`` / ``access_restored``, after commit).
- ``sync(name)`` makes a broker match the registry (idempotent): for existing fleets and after restores.

Mosquitto cannot check the hub's argon2 hashes, so a device whose client is missing on the broker (a new
broker, a lost plugin file) gets a client it cannot log in to until it is provisioned again; ``sync``
lists those devices.
"""

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field

from ..conf import EMBEDDED_ENGINE, hub_settings
from ..registry import registry
from .connection import broker_address
from .dynsec import (
    DEVICE_ROLE_PREFIX,
    DEVICE_TEXTNAME,
    SERVICE_ROLE,
    SERVICE_TEXTNAME,
    DynsecAdmin,
    delete_commands,
    device_acls,
    device_commands,
    device_role,
    same_acls,
    service_acls,
)

logger = logging.getLogger("hubserver.brokers")

_pending = contextvars.ContextVar("hubserver_dynsec_batch", default=None)


def managed(name):
    """Whether the hub keeps device accounts on broker ``name`` (an external Mosquitto with dynsec)."""
    entry = hub_settings.BROKERS.get(name)
    return bool(entry) and entry["ENGINE"] != EMBEDDED_ENGINE and entry["DYNAMIC_SECURITY"]


def managed_brokers():
    return [name for name in hub_settings.BROKERS if managed(name)]


def _acls(device_type, device_id):
    return device_acls(hub_settings.TOPIC_PREFIX, device_type.type_name(), device_id)


def run(name, commands):
    """Send ``commands`` to broker ``name`` now, or add them to the current ``batch()``."""
    pending = _pending.get()
    if pending is not None:
        pending.setdefault(name, []).extend(commands)
        return
    with DynsecAdmin(broker_address(name)) as admin:
        admin.execute(commands)


@contextlib.contextmanager
def batch():
    """Collect the commands sent inside the block and send them at its end, in a few messages per broker.
    Nested blocks join the outer one. An error (from the block or the broker) propagates."""
    if _pending.get() is not None:
        yield
        return
    pending = {}
    token = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(token)
    for name, commands in pending.items():
        with DynsecAdmin(broker_address(name)) as admin:
            admin.execute(commands)


# Signal receivers ------------------------------------------------------------------------------------


def on_provisioned(sender, device=None, credentials=None, **kwargs):
    """New credentials: the device's client and role on its broker, with the new password."""
    name = sender._meta.broker
    if not managed(name) or not credentials:
        return
    username = credentials["mqtt_username"]
    commands = device_commands(
        username, _acls(sender, device.device_id), password=credentials["mqtt_password"], enabled=device.is_active
    )
    run(name, commands)


def on_revoked(sender, device_id=None, mqtt_username=None, reason=None, **kwargs):
    """Deactivated: disable the client; deleted: delete it and its role. Mosquitto ends the session."""
    from ..access.revocation import DEACTIVATED, DELETED

    name = sender._meta.broker
    if not managed(name) or not mqtt_username:
        return
    if reason == DEACTIVATED:
        commands = [{"command": "disableClient", "username": mqtt_username}]
    elif reason == DELETED:
        commands = delete_commands(mqtt_username)
    else:
        return  # rotated: the provisioning that rotated the credentials already set the new password
    try:
        run(name, commands)
    except Exception:
        logger.exception(
            "could not %s %s on broker %r; run 'hubserver broker sync --broker %s'", reason, mqtt_username, name, name
        )


def on_restored(sender, device_id=None, mqtt_username=None, **kwargs):
    """Reactivated: enable the client again."""
    name = sender._meta.broker
    if not managed(name) or not mqtt_username:
        return
    try:
        run(name, [{"command": "enableClient", "username": mqtt_username}])
    except Exception:
        logger.exception("could not enable %s on broker %r; run 'hubserver broker sync'", mqtt_username, name)


def connect_signals():
    from ..access.revocation import access_restored, credentials_revoked
    from ..signals import device_provisioned

    device_provisioned.connect(on_provisioned, dispatch_uid="hubserver.brokers.accounts.provisioned")
    credentials_revoked.connect(on_revoked, dispatch_uid="hubserver.brokers.accounts.revoked")
    access_restored.connect(on_restored, dispatch_uid="hubserver.brokers.accounts.restored")


# Set-up and sync -------------------------------------------------------------------------------------


def setup_service_account(name, username, password, admin_address):
    """Create (or update) the hub's own client on broker ``name`` with the ``hubserver-service`` role,
    logged in as an admin account (``admin_address``); returns the ACL list it was given."""
    entry = hub_settings.BROKERS[name]
    acls = service_acls(hub_settings.TOPIC_PREFIX, entry["SHARE_GROUP"] if entry["USE_SHARED_SUBSCRIPTIONS"] else "")
    commands = [
        {"command": "createRole", "rolename": SERVICE_ROLE, "textname": SERVICE_TEXTNAME, "acls": acls},
        {"command": "modifyRole", "rolename": SERVICE_ROLE, "acls": acls},
        {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": SERVICE_TEXTNAME,
            "roles": [{"rolename": SERVICE_ROLE}],
        },
        {"command": "modifyClient", "username": username, "password": password, "roles": [{"rolename": SERVICE_ROLE}]},
        {"command": "enableClient", "username": username},
    ]
    with DynsecAdmin(admin_address) as admin:
        admin.execute(commands)
    return acls


@dataclass
class SyncReport:
    """What ``sync`` found and changed on one broker."""

    broker: str
    devices: int = 0
    created: list = field(default_factory=list)  # usernames whose client was missing (need provisioning)
    updated: list = field(default_factory=list)  # usernames whose role, client id, roles or state changed
    deleted: list = field(default_factory=list)  # usernames of clients the registry no longer has
    service_role: str = "unchanged"

    @property
    def changed(self):
        return bool(self.created or self.updated or self.deleted) or self.service_role != "unchanged"


def _registry_devices(name):
    """``{username: (DeviceType, device_id, is_active)}`` of provisioned devices whose type uses ``name``."""
    wanted = {}
    for device_type, device_model, _, _ in registry.all_with_models():
        if device_type._meta.broker != name:
            continue
        rows = device_model._default_manager.exclude(mqtt_username="").values_list(
            "device_id", "mqtt_username", "is_active"
        )
        for device_id, username, is_active in rows.iterator():
            wanted[username] = (device_type, device_id, is_active)
    return wanted


def sync(name, *, dry_run=False, admin=None):
    """Make broker ``name`` hold exactly the registry's device accounts; returns a SyncReport."""
    report = SyncReport(name)
    own = admin is None
    admin = admin or DynsecAdmin(broker_address(name))
    if own:
        admin.connect()
    try:
        clients, roles = admin.clients(), admin.roles()
        wanted = _registry_devices(name)
        report.devices = len(wanted)
        commands = []
        for username, (device_type, device_id, is_active) in wanted.items():
            acls = _acls(device_type, device_id)
            role = roles.get(device_role(username))
            client = clients.get(username)
            if client is None:
                report.created.append(username)
                commands += device_commands(username, acls, enabled=is_active)
                continue
            changes = []
            if role is None or not same_acls(role.get("acls"), acls):
                changes += [
                    {"command": "createRole", "rolename": device_role(username), "acls": acls},
                    {"command": "modifyRole", "rolename": device_role(username), "acls": acls},
                ]
            roles_held = [r.get("rolename") for r in client.get("roles", [])]
            if roles_held != [device_role(username)] or client.get("clientid") != username:
                changes.append(
                    {
                        "command": "modifyClient",
                        "username": username,
                        "clientid": username,
                        "roles": [{"rolename": device_role(username)}],
                    }
                )
            if bool(client.get("disabled")) == is_active:
                changes.append({"command": "enableClient" if is_active else "disableClient", "username": username})
            if changes:
                report.updated.append(username)
                commands += changes
        for username, client in clients.items():
            ours = client.get("textname") == DEVICE_TEXTNAME or any(
                r.get("rolename", "").startswith(DEVICE_ROLE_PREFIX) for r in client.get("roles", [])
            )
            if ours and username not in wanted:
                report.deleted.append(username)
                commands += delete_commands(username)
        entry = hub_settings.BROKERS[name]
        service = service_acls(
            hub_settings.TOPIC_PREFIX, entry["SHARE_GROUP"] if entry["USE_SHARED_SUBSCRIPTIONS"] else ""
        )
        if SERVICE_ROLE in roles and not same_acls(roles[SERVICE_ROLE].get("acls"), service):
            report.service_role = "updated"
            commands.append({"command": "modifyRole", "rolename": SERVICE_ROLE, "acls": service})
        elif SERVICE_ROLE not in roles:
            report.service_role = "missing"
        if commands and not dry_run:
            admin.execute(commands)
    finally:
        if own:
            admin.close()
    return report
