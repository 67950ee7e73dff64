"""Device accounts on a real Mosquitto (dynamic security), kept by the hub: setup, provisioning, rotation,
deactivation, deletion and ``hubserver broker sync``, checked with real MQTT 5 clients."""

import io
import threading
import urllib.parse
import uuid

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from hubserver.access.provisioning import provision
from hubserver.brokers.connection import broker_address
from hubserver.brokers.dynsec import DEVICE_TEXTNAME as TEXTNAME
from hubserver.brokers.dynsec import DynsecAdmin, DynsecError
from hubserver.conf import EXTERNAL_ENGINE
from tests.testapp.models import ThermometerDevice

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HUB_USER = "hubserver"
HUB_PASSWORD = "hub-service-secret"


def _entry(url, **extra):
    parts = urllib.parse.urlsplit(url)
    return {
        "ENGINE": EXTERNAL_ENGINE,
        "HOST": parts.hostname,
        "PORT": parts.port,
        "USERNAME": HUB_USER,
        "PASSWORD": HUB_PASSWORD,
        **extra,
    }


@pytest.fixture
def mosquitto(mosquitto_factory):
    """A Mosquitto of this test's own (the accounts created here do not leak into other tests), the hub's
    BROKERS pointing at it, and the hub's service account set up with the plugin's admin account."""
    server = mosquitto_factory()
    with override_settings(HUBSERVER={"BROKERS": {"default": _entry(server.url)}}):
        call_command(
            "broker",
            "setup",
            "--admin-username",
            server.extra["admin_username"],
            "--admin-password",
            server.extra["admin_password"],
            stdout=io.StringIO(),
        )
        yield server


class Device:
    """A paho MQTT 5 client as a device would use it, with what the broker answered."""

    def __init__(self, port, username, password, client_id=None):
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or username, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack = None
        self.disconnect_reason = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code
        self.disconnected.set()
        self.connected.set()

    def accepted(self):
        assert self.connected.wait(5), "no CONNACK"
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic):
        """The PUBACK's reason code of a QoS 1 publish."""
        acked = threading.Event()
        codes = []
        self.client.on_publish = lambda c, u, mid, reason_code, p: (codes.append(reason_code), acked.set())
        self.client.publish(topic, b'{"temperature": 20}', qos=1)
        assert acked.wait(5), "no PUBACK"
        return codes[0]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def _admin_view(server):
    address = broker_address("default")
    return DynsecAdmin(
        type(address)(**{**address.__dict__, "username": "hub-admin", "password": server.extra["admin_password"]})
    )


def test_provisioning_rotation_deactivation_and_deletion_follow_the_registry(mosquitto):
    port = mosquitto.extra["port"]
    device = ThermometerDevice(device_id=f"t-{uuid.uuid4().hex[:6]}")
    credentials = provision(device)
    username = credentials["mqtt_username"]
    base = f"things/thermometer/{device.device_id}/"

    live = Device(port, username, credentials["mqtt_password"])
    assert live.accepted()
    assert not live.publish(base + "data").is_failure
    assert live.publish("things/thermometer/someone-else/data").getName() == "Not authorized"

    wrong = Device(port, username, "not-the-password")
    assert not wrong.accepted()
    wrong.close()

    rotated = provision(device)  # new secrets: Mosquitto ends the live session, the old password is refused
    assert live.disconnected.wait(5)
    live.close()
    old = Device(port, username, credentials["mqtt_password"])
    assert not old.accepted()
    old.close()
    current = Device(port, username, rotated["mqtt_password"])
    assert current.accepted()

    device.is_active = False
    device.save()
    assert current.disconnected.wait(5)
    current.close()
    refused = Device(port, username, rotated["mqtt_password"])
    assert not refused.accepted()
    refused.close()

    device.is_active = True
    device.save()
    again = Device(port, username, rotated["mqtt_password"])
    assert again.accepted()

    device.delete()
    assert again.disconnected.wait(5)
    again.close()
    with _admin_view(mosquitto) as admin:
        assert username not in admin.clients()
        assert f"hubserver-device-{username}" not in admin.roles()


def test_sync_makes_the_broker_match_the_registry_and_is_idempotent(mosquitto):
    kept = ThermometerDevice(device_id="sync-kept")
    kept_credentials = provision(kept)
    lost = ThermometerDevice(device_id="sync-lost")
    provision(lost)
    inactive = ThermometerDevice(device_id="sync-off")
    provision(inactive)
    with _admin_view(mosquitto) as admin:
        admin.execute(
            [
                # A broker restored from an old backup: one device missing, one deleted device still there.
                {"command": "deleteClient", "username": lost.mqtt_username},
                {"command": "createClient", "username": "thermometer.gone", "password": "x", "textname": TEXTNAME},
            ]
        )
    ThermometerDevice.objects.filter(pk=inactive.pk).update(is_active=False)  # no signals: the broker is stale

    out, err = io.StringIO(), io.StringIO()
    call_command("broker", "sync", stdout=out, stderr=err)
    assert "create 1, update 1, delete 1" in out.getvalue()
    assert lost.mqtt_username in err.getvalue()  # it must be provisioned again to log in

    out = io.StringIO()
    call_command("broker", "sync", stdout=out, stderr=io.StringIO())
    assert "create 0, update 0, delete 0" in out.getvalue()
    assert "matches the registry" in out.getvalue()

    with _admin_view(mosquitto) as admin:
        clients = admin.clients()
    assert "thermometer.gone" not in clients
    assert clients[inactive.mqtt_username].get("disabled") is True
    assert lost.mqtt_username in clients
    device = Device(mosquitto.extra["port"], kept.mqtt_username, kept_credentials["mqtt_password"])
    assert device.accepted()
    device.close()


def test_an_account_without_control_permission_is_told_what_to_do(mosquitto):
    with _admin_view(mosquitto) as admin:
        admin.execute([{"command": "createClient", "username": "no-control", "password": "pw"}])
    entry = _entry(mosquitto.url, USERNAME="no-control", PASSWORD="pw")
    denied = pytest.raises(CommandError, match="'no-control' may not administer the dynamic-security plugin")
    with override_settings(HUBSERVER={"BROKERS": {"default": entry}}), denied:
        call_command("broker", "check", stdout=io.StringIO())


def test_a_broker_without_the_plugin_is_named_in_the_error(mosquitto_factory):
    server = mosquitto_factory(dynamic_security=False)
    entry = _entry(server.url, USERNAME="", PASSWORD="")
    with override_settings(HUBSERVER={"BROKERS": {"default": entry}}):
        address = broker_address("default")
        unanswered = pytest.raises(DynsecError, match="dynamic-security plugin loaded")
        with unanswered, DynsecAdmin(address, timeout=1.0) as admin:
            admin.check()


def test_setup_refuses_a_wrong_admin_password(mosquitto_factory):
    server = mosquitto_factory()
    refused = pytest.raises(CommandError, match="refused the hub's account 'hub-admin'")
    with override_settings(HUBSERVER={"BROKERS": {"default": _entry(server.url)}}), refused:
        call_command("broker", "setup", "--admin-username", "hub-admin", "--admin-password", "wrong")
