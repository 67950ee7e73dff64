"""Mosquitto's dynamic-security plugin, administered over MQTT (``$CONTROL/dynamic-security/v1``).

``DynsecAdmin`` is a small blocking client (paho-mqtt on its own network thread, so it works from any
thread: a CLI command, a Django view, the ORM thread of ``database_sync_to_async``). It sends a list of
commands in one message (the plugin saves its configuration file once per message, so batching matters
with thousands of devices) and waits for every answer, matched by ``correlationData``.

What the hub keeps on the broker for each device (``device_role``), mirroring the embedded broker's ACL:
a role ``hubserver-device-<username>`` that may publish to the device's own ``data``, ``status`` and
``reply`` topics, subscribe to its own ``cmd`` topic (literally, no wildcards) and receive it; a client
``<username>`` that must use its username as client id, holds that role, and is disabled while the device
is inactive. Anything else is denied by the plugin's default ACL access (publish and subscribe denied).

The hub's own account (``service_role``) may subscribe to every device's data, status and reply topics
(shared, ``$share/<SHARE_GROUP>/...``, and plain), publish commands, and administer the plugin.
"""

import json
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .connection import BrokerError, connect_error, where

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
DEVICE_ROLE_PREFIX = "hubserver-device-"
SERVICE_ROLE = "hubserver-service"
DEVICE_TEXTNAME = "hubserver device"
SERVICE_TEXTNAME = "hubserver service account"
DEVICE_KINDS_PUBLISHED = ("data", "status", "reply")
COMMANDS_PER_MESSAGE = 200

# Answers that mean "already as wanted": a sync or a provisioning that repeats itself is not an error.
HARMLESS = {
    ("createClient", "Client already exists"),
    ("createRole", "Role already exists"),
    ("deleteClient", "Client not found"),
    ("deleteRole", "Role not found"),
}


class DynsecError(BrokerError):
    """The dynamic-security plugin refused a command, or cannot be used (not loaded, no permission)."""


def device_role(username):
    return DEVICE_ROLE_PREFIX + username


def device_acls(prefix, type_name, device_id):
    """The ACL list of one device's role: exactly what the embedded broker allows a device."""
    base = f"{prefix}/{type_name}/{device_id}/"
    acls = [{"acltype": "publishClientSend", "topic": base + kind, "allow": True} for kind in DEVICE_KINDS_PUBLISHED]
    acls += [
        {"acltype": "subscribeLiteral", "topic": base + "cmd", "allow": True},
        {"acltype": "publishClientReceive", "topic": base + "cmd", "allow": True},
    ]
    return acls


def service_acls(prefix, share_group):
    """The ACL list of the hub's own role: its subscriptions (shared and plain), commands, administration."""
    acls = []
    for kind in DEVICE_KINDS_PUBLISHED:
        pattern = f"{prefix}/+/+/{kind}"
        acls.append({"acltype": "subscribePattern", "topic": pattern, "allow": True})
        if share_group:
            acls.append({"acltype": "subscribePattern", "topic": f"$share/{share_group}/{pattern}", "allow": True})
    acls += [
        {"acltype": "publishClientReceive", "topic": f"{prefix}/#", "allow": True},
        {"acltype": "publishClientSend", "topic": f"{prefix}/+/+/cmd", "allow": True},
        {"acltype": "publishClientSend", "topic": CONTROL_TOPIC, "allow": True},
        {"acltype": "subscribeLiteral", "topic": RESPONSE_TOPIC, "allow": True},
        {"acltype": "publishClientReceive", "topic": RESPONSE_TOPIC, "allow": True},
    ]
    return acls


def same_acls(have, want):
    """Whether two ACL lists grant the same (order and priorities aside)."""

    def key(acls):
        return sorted((a.get("acltype"), a.get("topic"), bool(a.get("allow"))) for a in acls or ())

    return key(have) == key(want)


def device_commands(username, acls, *, password=None, enabled=True):
    """Commands that make one device's role and client as wanted, whatever exists already. With a
    ``password`` an existing client gets it (Mosquitto then ends the client's live session)."""
    role = device_role(username)
    client = {"username": username, "clientid": username, "roles": [{"rolename": role}]}
    commands = [
        {"command": "createRole", "rolename": role, "textname": DEVICE_TEXTNAME, "acls": acls},
        {"command": "modifyRole", "rolename": role, "acls": acls},
        {
            "command": "createClient",
            **client,
            "textname": DEVICE_TEXTNAME,
            "password": password or uuid.uuid4().hex + uuid.uuid4().hex,
        },
    ]
    if password is not None:
        commands.append({"command": "modifyClient", **client, "password": password})
    commands.append({"command": "enableClient" if enabled else "disableClient", "username": username})
    return commands


def delete_commands(username):
    return [
        {"command": "deleteClient", "username": username},
        {"command": "deleteRole", "rolename": device_role(username)},
    ]


class DynsecAdmin:
    """A blocking administration session with one broker; use as a context manager.

    ``connect()`` raises BrokerError/DynsecError naming the broker when it is unreachable, refuses the
    account, the account may not use ``$CONTROL``, or the plugin does not answer."""

    def __init__(self, address, timeout=10.0):
        self.address = address
        self.timeout = timeout
        self._client = None
        self._lock = threading.Lock()
        self._waiting = {}  # correlationData -> [Event, response]
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._acked = {}  # mid -> the PUBACK's reason code
        self._acked_changed = threading.Condition(self._lock)
        self._connack = None
        self._suback = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # connection ---------------------------------------------------------------------------------------

    def connect(self):
        address = self.address
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=address.admin_client_id(), protocol=mqtt.MQTTv5
        )
        if address.username:
            client.username_pw_set(address.username, address.password or None)
        context = address.ssl_context()
        if context is not None:
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        try:
            client.connect(address.host, address.port, keepalive=30, clean_start=True, properties=properties)
        except Exception as exc:
            raise connect_error(address, exc) from exc
        self._client = client
        client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise BrokerError(f"{address}: no CONNACK within {self.timeout:.0f} s")
        if self._connack.is_failure:
            self.close()
            account = address.username or "(anonymous)"
            raise BrokerError(
                f"{address} refused the hub's account {account!r}: {self._connack} (check "
                f"{where(address.name, 'USERNAME')} and {where(address.name, 'PASSWORD')})"
            )
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not self._subscribed.wait(self.timeout):
            self.close()
            raise BrokerError(f"{address}: no SUBACK within {self.timeout:.0f} s")
        if self._suback.is_failure:
            self.close()
            raise self._no_permission(f"subscribing to {RESPONSE_TOPIC} was refused: {self._suback}")

    def close(self):
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _no_permission(self, detail):
        return DynsecError(
            f"{self.address}: the account {self.address.username or '(anonymous)'!r} may not administer the "
            f"dynamic-security plugin ({detail}). Give it the plugin's admin role, or run "
            f"'hubserver broker setup --broker {self.address.name}' with an admin account"
        )

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = reason_code
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if not self._connected.is_set():
            self._connack = reason_code
            self._connected.set()
        with self._lock:
            waiting = list(self._waiting.values())
        for entry in waiting:
            entry[0].set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._suback = reason_codes[0]
        self._subscribed.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            self._acked[mid] = reason_code
            self._acked_changed.notify_all()

    def _on_message(self, client, userdata, message):
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        for response in responses:
            with self._lock:
                entry = self._waiting.pop(response.get("correlationData"), None)
            if entry is not None:
                entry[1] = response
                entry[0].set()

    # commands -----------------------------------------------------------------------------------------

    def execute(self, commands, *, harmless=HARMLESS):
        """Run ``commands`` (in order, ``COMMANDS_PER_MESSAGE`` a message); return their responses.

        Raises DynsecError for the first error that is not in ``harmless`` (pass ``harmless=None`` to get
        every response back unchecked)."""
        responses = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            responses += self._execute_chunk(commands[start : start + COMMANDS_PER_MESSAGE])
        if harmless is not None:
            for command, response in zip(commands, responses, strict=True):
                error = response.get("error")
                if error and (command["command"], error) not in harmless:
                    subject = command.get("username") or command.get("rolename") or ""
                    raise DynsecError(f"{self.address}: {command['command']} {subject}: {error}")
        return responses

    def _execute_chunk(self, commands):
        if self._client is None:
            raise BrokerError(f"{self.address}: not connected")
        entries, sent = [], []
        with self._lock:
            for command in commands:
                correlation = uuid.uuid4().hex
                entry = [threading.Event(), None]
                self._waiting[correlation] = entry
                entries.append(entry)
                sent.append({**command, "correlationData": correlation})
        info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": sent}), qos=1)
        with self._lock:
            if not self._acked_changed.wait_for(lambda: info.mid in self._acked, self.timeout):
                raise BrokerError(f"{self.address}: no PUBACK for {CONTROL_TOPIC} within {self.timeout:.0f} s")
            code = self._acked.pop(info.mid)
        if getattr(code, "is_failure", False):
            raise self._no_permission(f"publishing to {CONTROL_TOPIC} was refused: {code}")
        for entry in entries:
            if not entry[0].wait(self.timeout) or entry[1] is None:
                if self._client is None or not self._client.is_connected():
                    raise BrokerError(f"{self.address}: the connection closed while waiting for the plugin's answer")
                raise DynsecError(
                    f"{self.address}: no answer on {RESPONSE_TOPIC} within {self.timeout:.0f} s: is Mosquitto's "
                    "dynamic-security plugin loaded? (mosquitto.conf: plugin .../mosquitto_dynamic_security.so "
                    f"and plugin_opt_config_file ...; or set {where(self.address.name, 'DYNAMIC_SECURITY')} "
                    "False when the hub does not keep device accounts on this broker)"
                )
        return [entry[1] for entry in entries]

    # queries ------------------------------------------------------------------------------------------

    def check(self):
        """Prove the plugin answers this account (a harmless read); DynsecError otherwise."""
        self.execute([{"command": "getDefaultACLAccess"}])

    def clients(self):
        """``{username: client}`` of every client (verbose: roles, disabled, textname, clientid)."""
        (response,) = self.execute([{"command": "listClients", "verbose": True, "count": -1, "offset": 0}])
        return {client["username"]: client for client in response.get("data", {}).get("clients", [])}

    def roles(self):
        """``{rolename: role}`` of every role (verbose: its ACLs)."""
        (response,) = self.execute([{"command": "listRoles", "verbose": True, "count": -1, "offset": 0}])
        return {role["rolename"]: role for role in response.get("data", {}).get("roles", [])}
