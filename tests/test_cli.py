"""The ``hubserver`` binary, run as a user would: a subprocess on a fresh data directory."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs the hubserver binary

EXAMPLE_DEVICES = Path(__file__).resolve().parent.parent / "examples" / "greenhouse_devices.py"


def hubserver(*args, data_dir, env=None, check=True):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_"))}
    environ.update(env or {})
    binary = shutil.which("hubserver") or str(Path(sys.executable).parent / "hubserver")
    result = subprocess.run(
        [binary, "--data-dir", str(data_dir), *args], env=environ, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"hubserver {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_help_lists_hub_commands_first(tmp_path):
    out = hubserver("--help", data_dir=tmp_path).stdout
    assert out.index("Hub commands:") < out.index("[auth]")
    hub_section = out.split("Hub commands:")[1].split("Every Django management command")[0]
    assert "types" in hub_section
    assert "createsuperuser" in out and "migrate" in out


def test_management_commands_run_with_the_binary_settings(tmp_path):
    hubserver("migrate", "--no-input", data_dir=tmp_path)
    out = hubserver(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings; print(settings.DEBUG, settings.DATA_DIR)",
        data_dir=tmp_path,
    ).stdout
    assert out.split() == ["False", str(tmp_path.resolve())]


def test_secret_key_is_generated_once_and_kept(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    first = hubserver("shell", "-v", "0", "-c", code, data_dir=tmp_path).stdout.strip()
    second = hubserver("shell", "-v", "0", "-c", code, data_dir=tmp_path).stdout.strip()
    assert first == second and len(first) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    given = hubserver("shell", "-v", "0", "-c", code, data_dir=tmp_path, env={"HUBSERVER_SECRET_KEY": "k" * 60}).stdout
    assert given.strip() == "k" * 60


def test_default_database_is_sqlite_in_wal_mode(tmp_path):
    hubserver("migrate", "--no-input", data_dir=tmp_path)
    out = hubserver(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.db import connection; c = connection.cursor(); "
        "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0], connection.settings_dict['CONN_MAX_AGE'])",
        data_dir=tmp_path,
    ).stdout
    assert out.split() == ["wal", "None"]
    assert (tmp_path / "hubserver.sqlite3").exists()


def test_database_url_is_honoured(tmp_path):
    other = tmp_path / "elsewhere.sqlite3"
    hubserver("migrate", "--no-input", data_dir=tmp_path / "data", env={"DATABASE_URL": f"sqlite:///{other}"})
    assert other.exists()
    assert not (tmp_path / "data" / "hubserver.sqlite3").exists()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_devices_file_without_a_project(tmp_path, how):
    devices = tmp_path / "src" / "greenhouse_devices.py"
    devices.parent.mkdir()
    shutil.copy(EXAMPLE_DEVICES, devices)
    data_dir = tmp_path / "data"
    args, env = (["--devices", str(devices)], None) if how == "flag" else ([], {"HUBSERVER_DEVICES": str(devices)})
    out = hubserver(*args, "types", "soil_probe", data_dir=data_dir, env=env).stdout
    assert json.loads(out)["readings"]["moisture"]["unit"] == "%"
    migration = data_dir / "migrations" / "userdevices_migrations" / "0001_initial.py"
    assert migration.exists(), "the user's migrations are written into the data directory"
    with sqlite3.connect(data_dir / "hubserver.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"userdevices_soilprobedevice", "userdevices_irrigationvalvereading"} <= tables
    assert not any(table.startswith("devicetypes_") for table in tables), "a devices file leaves the catalogue out"

    # A new Reading in the file gives a second migration on the next command; then nothing changes.
    devices.write_text(
        devices.read_text().replace(
            "    conductivity = Reading(", '    salinity = Reading(float, unit="ppt")\n    conductivity = Reading('
        )
    )
    hubserver(*args, "types", data_dir=data_dir, env=env)
    assert len(list(migration.parent.glob("0*.py"))) == 2
    with sqlite3.connect(data_dir / "hubserver.sqlite3") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(userdevices_soilprobereading)")}
    assert "salinity" in columns
    hubserver(*args, "types", data_dir=data_dir, env=env)
    assert len(list(migration.parent.glob("0*.py"))) == 2


def test_devices_file_errors_are_clear(tmp_path):
    missing = hubserver("--devices", str(tmp_path / "nope.py"), "types", data_dir=tmp_path, check=False)
    assert missing.returncode != 0 and "is not a file" in missing.stderr
    empty = tmp_path / "empty_devices.py"
    empty.write_text("X = 1\n")
    result = hubserver("--devices", str(empty), "types", data_dir=tmp_path, check=False)
    assert result.returncode != 0 and "declares no DeviceType subclass" in result.stderr


def test_catalogue_can_be_left_out(tmp_path):
    out = hubserver("types", data_dir=tmp_path, env={"HUBSERVER_CATALOGUE": "0"}).stdout
    assert "weatherstation" not in out
    out = hubserver("types", data_dir=tmp_path).stdout
    assert "weatherstation" in out and "smartplug" in out


README_TYPE = """from hubserver import Command, DeviceType, Reading, StateField


class WeatherStation(DeviceType):
    temperature = Reading(float, unit="°C", min_value=-60, max_value=70)
    humidity = Reading(float, unit="%", min_value=0, max_value=100)
    report_interval = StateField(int, default=300)
    reboot = Command(description="Restart the station", timeout=60)
"""


def test_a_devices_file_may_declare_a_type_named_like_one_of_the_catalogue(tmp_path):
    devices = tmp_path / "my_devices.py"
    devices.write_text(README_TYPE)
    out = hubserver("--devices", str(devices), "types", data_dir=tmp_path / "data").stdout
    assert "readings: temperature (°C), humidity (%)" in out
    assert "smartplug" not in out and "pressure" not in out, "the catalogue is left out"
    provisioned = hubserver("--devices", str(devices), "provision", "weatherstation", "ws-1", "--format", "json",
                            data_dir=tmp_path / "data")  # fmt: skip
    assert json.loads(provisioned.stdout)["mqtt_username"] == "weatherstation.ws-1"
    with sqlite3.connect(tmp_path / "data" / "hubserver.sqlite3") as db:
        assert db.execute("SELECT device_id FROM userdevices_weatherstationdevice").fetchall() == [("ws-1",)]

    # Both, on request: a one-paragraph error naming both definitions and the ways out, no traceback.
    both = hubserver("--devices", str(devices), "types", data_dir=tmp_path / "data",
                     env={"HUBSERVER_CATALOGUE": "1"}, check=False)  # fmt: skip
    assert both.returncode == 1
    assert "Traceback" not in both.stderr
    error = both.stderr.strip().splitlines()[-1]
    assert error.startswith("hubserver: error: Two device types are named 'weatherstation': my_devices.WeatherStation")
    assert f"({devices}:4)" in error
    assert "hubserver.devicetypes.devices.WeatherStation (" in error
    assert "rename your class, or leave the catalogue out" in error and "HUBSERVER_CATALOGUE=1" in error


def test_a_devices_file_on_a_database_with_catalogue_devices_says_how_to_keep_them(tmp_path):
    hubserver("provision", "smartplug", "plug-1", "--format", "json", data_dir=tmp_path)
    devices = tmp_path / "greenhouse_devices.py"
    shutil.copy(EXAMPLE_DEVICES, devices)
    result = hubserver("--devices", str(devices), "types", data_dir=tmp_path)
    assert "set HUBSERVER_CATALOGUE=1 to keep using those devices" in result.stderr
    both = hubserver("--devices", str(devices), "types", data_dir=tmp_path, env={"HUBSERVER_CATALOGUE": "1"})
    assert "smartplug" in both.stdout and "soilprobe" in both.stdout
    assert "HUBSERVER_CATALOGUE" not in both.stderr


def test_configuration_errors_are_one_line_without_a_traceback(tmp_path):
    result = hubserver("types", data_dir=tmp_path, env={"HUBSERVER_ALLOW_ANONYMOUS": "maybe"}, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "hubserver: error: HUBSERVER_ALLOW_ANONYMOUS must be one of 1/0, true/false, yes/no, on/off; got 'maybe'"
    )


def test_version_is_the_hub_s(tmp_path):
    from importlib.metadata import version

    import django

    out = hubserver("--version", data_dir=tmp_path).stdout
    assert out.startswith(f"hubserver {version('hubserver')} (Django {django.get_version()}, amqtt 0.12.1, Python ")
    assert hubserver("version", data_dir=tmp_path).stdout == out


def without_data_dir(*args, home, cwd, env=None):
    """The binary as a user runs it: no --data-dir, no HUBSERVER_DATA_DIR, HOME=home, from directory cwd."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_", "XDG_"))}
    environ.update({"HOME": str(home), **(env or {})})
    binary = shutil.which("hubserver") or str(Path(sys.executable).parent / "hubserver")
    return subprocess.run([binary, *args], env=environ, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_default_data_directory_is_the_user_s_whatever_the_current_directory(tmp_path):
    home, first, second = tmp_path / "home", tmp_path / "a", tmp_path / "b"
    for folder in (home, first, second):
        folder.mkdir()
    created = without_data_dir("provision", "smartplug", "plug-1", "--format", "json", home=home, cwd=first)
    expected = home / ".local" / "share" / "hubserver"
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines()[:2] == [
        f"hubserver: data directory {expected}",
        f"hubserver: creating a new database in {expected}",
    ]
    # From another directory: the same database, which already knows the device.
    again = without_data_dir("provision", "smartplug", "plug-1", "--format", "json", home=home, cwd=second)
    assert again.stderr.splitlines()[0] == f"hubserver: data directory {expected}"
    assert "creating a new database" not in again.stderr and "rotated" in again.stderr
    assert not (first / "hubserver-data").exists() and not (second / "hubserver-data").exists()
    # XDG_DATA_HOME moves it; -v 0 keeps quiet about it.
    elsewhere = without_data_dir("types", "-v", "0", home=home, cwd=first, env={"XDG_DATA_HOME": str(tmp_path / "x")})
    assert elsewhere.stderr == "" and (tmp_path / "x" / "hubserver" / "secret_key").exists()


def test_an_old_data_directory_in_the_current_directory_is_pointed_out(tmp_path):
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    hubserver("migrate", "--no-input", data_dir=project / "hubserver-data")
    result = without_data_dir("types", home=home, cwd=project)
    assert "./hubserver-data here holds a hub database, but this command uses the default data directory" in (
        result.stderr
    )
    assert "--data-dir hubserver-data ..." in result.stderr


def test_provision_works_as_the_first_command_on_a_new_data_directory(tmp_path):
    out = hubserver("provision", "smartplug", "plug-1", "--format", "json", data_dir=tmp_path).stdout
    assert json.loads(out)["mqtt_username"] == "smartplug.plug-1"


def test_redis_url_makes_live_events_go_through_redis(tmp_path, redis_url):
    """HUBSERVER_REDIS_URL selects the Redis channel layer: a message sent in one process reaches another."""
    script = (
        "import asyncio; from channels.layers import get_channel_layer\n"
        "async def main():\n"
        "    layer = get_channel_layer(); print(type(layer).__module__)\n"
        "    channel = await layer.new_channel(); await layer.group_add('probe', channel)\n"
        "    print('READY', flush=True)\n"
        "    print((await asyncio.wait_for(layer.receive(channel), 20))['text'])\n"
        "asyncio.run(main())\n"
    )
    env = {"HUBSERVER_REDIS_URL": redis_url, "HUBSERVER_REDIS_PREFIX": f"test-{tmp_path.name}"}
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_"))}
    environ.update(env, HUBSERVER_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="hubserver.settings")
    receiver = subprocess.Popen(
        [sys.executable, "-c", "import django; django.setup()\n" + script],
        env=environ,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout.readline().strip() == "channels_redis.core"
        assert receiver.stdout.readline().strip() == "READY"
        sender = "from asgiref.sync import async_to_sync; from channels.layers import get_channel_layer\n"
        message = "{'type': 'x', 'text': 'from another process'}"
        sender += f"async_to_sync(get_channel_layer().group_send)('probe', {message})"
        hubserver("shell", "-c", sender, data_dir=tmp_path, env=env)
        assert receiver.stdout.readline().strip() == "from another process"
    finally:
        receiver.kill()
        receiver.wait()


def test_a_redis_url_that_is_not_one_is_refused(tmp_path):
    result = hubserver("check", data_dir=tmp_path, env={"HUBSERVER_REDIS_URL": "localhost:6379"}, check=False)
    assert result.returncode != 0
    assert "HUBSERVER_REDIS_URL must be a redis://" in result.stderr


def test_the_shell_imports_every_model_without_complaint(tmp_path):
    devices = tmp_path / "greenhouse_devices.py"
    shutil.copy(EXAMPLE_DEVICES, devices)
    for args in ([], ["--devices", str(devices)]):
        result = hubserver(*args, "shell", "-c", "print('ready')", data_dir=tmp_path / "data")
        assert "could not be automatically imported" not in result.stdout + result.stderr
        assert result.stdout.strip().endswith("ready")
    from_module = hubserver("shell", "-v", "0", "-c", "from hubserver.devicetypes.models import SmartPlugRollup as R; "
                            "print(R._meta.db_table)", data_dir=tmp_path / "data")  # fmt: skip
    assert from_module.stdout.strip() == "devicetypes_smartplugrollup"
