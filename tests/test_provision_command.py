"""``hubserver provision``: one device (table/json), many devices (csv/json), and its errors."""

import csv
import io
import json

import pytest
from django.core.management import CommandError, call_command, load_command_class

from hubserver.access import verify_secret
from tests.testapp.models import HygrometerDevice, ThermometerDevice

INFO_KEYS = {
    "device_id",
    "device_type",
    "client_id",
    "mqtt_username",
    "mqtt_password",
    "api_key",
    "host",
    "mqtt_port",
    "mqtt_tls_port",
    "websocket_url",
    "topics",
}

pytestmark = pytest.mark.django_db


def run(*args, **options):
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command("provision", *args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


def test_one_device_as_json():
    out, _ = run("Thermometer", "kitchen-1", "--name", "Kitchen", "--format", "json")
    info = json.loads(out)
    assert set(info) == INFO_KEYS
    assert info["device_type"] == "thermometer"
    assert info["client_id"] == info["mqtt_username"] == "thermometer.kitchen-1"
    assert set(info["topics"]) == {"data", "status", "cmd", "reply"}
    device = ThermometerDevice.objects.get(device_id="kitchen-1")
    assert device.name == "Kitchen"
    assert verify_secret(device.mqtt_password_hash, info["mqtt_password"])
    assert verify_secret(device.api_key, info["api_key"])


def test_type_in_any_spelling_and_rotation():
    first = json.loads(run("thermometer", "k2", "--format", "json")[0])
    out, err = run("THERMO_METER", "k2", "--format", "json")
    second = json.loads(out)
    assert "rotated" in err
    device = ThermometerDevice.objects.get(device_id="k2")
    assert not verify_secret(device.mqtt_password_hash, first["mqtt_password"])
    assert verify_secret(device.mqtt_password_hash, second["mqtt_password"])
    assert ThermometerDevice.objects.count() == 1


def test_table_is_the_default_for_one_device():
    out, err = run("hygrometer", "cellar")
    device = HygrometerDevice.objects.get(device_id="cellar")
    assert "hygrometer.cellar" in out
    assert "things/hygrometer/cellar/cmd" in out
    # The password is printed whole (never folded across lines) and verifies.
    password = next(line.split()[1] for line in out.splitlines() if line.strip().startswith("mqtt_password"))
    assert verify_secret(device.mqtt_password_hash, password)
    assert "only this once" in err


def test_bulk_csv_has_a_header_and_one_row_per_device():
    out, err = run("hygrometer", "--count", "5", "--prefix", "P")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert out.splitlines()[0].startswith("device_id,device_type,client_id,mqtt_username,mqtt_password,api_key")
    assert len(out.splitlines()) == 6
    assert [row["device_id"] for row in rows] == ["P0001", "P0002", "P0003", "P0004", "P0005"]
    for row in rows:
        device = HygrometerDevice.objects.get(device_id=row["device_id"])
        assert row["mqtt_username"] == f"hygrometer.{row['device_id']}"
        assert row["topic_data"] == f"things/hygrometer/{row['device_id']}/data"
        assert verify_secret(device.mqtt_password_hash, row["mqtt_password"])
    assert "Provisioned 5" in err


def test_bulk_json_is_a_list_and_rotates_existing_devices():
    run("thermometer", "T0002", "--format", "json")
    out, err = run("thermometer", "--count", "3", "--prefix", "T", "--format", "json", "--workers", "2")
    infos = json.loads(out)
    assert [info["device_id"] for info in infos] == ["T0001", "T0002", "T0003"]
    assert all(set(info) == INFO_KEYS for info in infos)
    assert "1 already existed" in err
    assert ThermometerDevice.objects.count() == 3


def test_bulk_default_prefix_and_start():
    out, _ = run("thermometer", "--count", "2", "--start", "9999", verbosity=0)
    assert [row["device_id"] for row in csv.DictReader(io.StringIO(out))] == [
        "thermometer-09999",  # one width for the whole run, so the ids sort
        "thermometer-10000",
    ]


def test_unknown_type_lists_the_known_ones():
    with pytest.raises(CommandError, match=r"unknown device type 'nosuch'.*hygrometer.*thermometer"):
        run("nosuch", "x")


@pytest.mark.parametrize(
    "args",
    [
        ("thermometer",),
        ("thermometer", "x", "--count", "2"),
        ("thermometer", "--count", "0"),
        ("thermometer", "x", "--prefix", "P"),
        ("thermometer", "--count", "2", "--name", "N"),
        ("thermometer", "a/b"),
        ("thermometer", "--count", "2", "--prefix", "bad+"),
    ],
)
def test_usage_errors(args):
    with pytest.raises(CommandError):
        run(*args)
    assert not ThermometerDevice.objects.exists()


def test_help_first_line_for_the_hubserver_command_list():
    command = load_command_class("hubserver", "provision")
    first = command.help.strip().splitlines()[0]
    assert first.startswith("Create a device")
    assert len(first) < 100
