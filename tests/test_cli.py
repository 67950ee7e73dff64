"""The ``hubserver`` binary, run as a user would: a subprocess on a fresh data directory."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert {
        "userdevices_soilprobedevice",
        "userdevices_irrigationvalvereading",
        "devicetypes_smartplugdevice",
    } <= tables

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


def test_provision_works_as_the_first_command_on_a_new_data_directory(tmp_path):
    out = hubserver("provision", "smartplug", "plug-1", "--format", "json", data_dir=tmp_path).stdout
    assert json.loads(out)["mqtt_username"] == "smartplug.plug-1"
