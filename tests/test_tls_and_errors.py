"""The TLS listener, and what a client sees when authentication itself breaks."""

import datetime
import ipaddress
import json
import ssl

import pytest
from channels.db import database_sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import provision_device
from tests.mqtt import free_port
from tests.testapp.models import ThermometerReading

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "hub.crt", folder / "hub.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(certfile), str(keyfile)


class TestTLS:
    @pytest.fixture
    def hub_settings_override(self, certificate):
        self.tls_port = free_port()
        return {"MQTT_TLS_PORT": self.tls_port, "MQTT_TLS_CERTFILE": certificate[0], "MQTT_TLS_KEYFILE": certificate[1]}

    async def test_a_device_publishes_over_tls(self, hub, clients, certificate):
        _, credentials = await provision_device("thermometer", "tls-1")
        client = clients(
            self.tls_port, credentials["mqtt_username"], credentials["mqtt_username"], credentials["mqtt_password"]
        )
        client.paho.tls_set(ca_certs=certificate[0], cert_reqs=ssl.CERT_REQUIRED)
        await client.connect()
        await client.publish("things/thermometer/tls-1/data", json.dumps({"temperature": 19.5}))
        await hub.router.flush()
        readings = await database_sync_to_async(list)(ThermometerReading.objects.values_list("temperature", flat=True))
        assert readings == [19.5]


async def test_an_error_inside_authentication_still_answers_with_a_connack(hub, clients, monkeypatch):
    import hubserver.plugins.auth as auth_plugin

    async def broken(*args, **kwargs):
        raise RuntimeError("database is down")

    monkeypatch.setattr(auth_plugin, "authenticate_mqtt", broken)
    _, credentials = await provision_device("thermometer", "err-1")
    client = clients(
        hub.engine.port, credentials["mqtt_username"], credentials["mqtt_username"], credentials["mqtt_password"]
    )
    assert await client.connect(expect_success=False) == 135, "refused with a CONNACK, not left hanging"
