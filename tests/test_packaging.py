"""A plain ``pip install .`` must ship every package: pyproject lists them explicitly (plugins/, devicetypes/
and settings/ are mapped into the hubserver namespace), so a new subpackage must be listed there too."""

import tomllib
from pathlib import Path

import jsonschema
import pytest

from hubserver import Command, DeviceType, registry

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *parts]))
    missing = sorted(found - set(config["packages"]))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_commands_with_local_refs_keep_them_resolvable():
    class RefDevice(DeviceType):
        configure = Command(
            params={
                "$defs": {"level": {"enum": ["low", "high"]}},
                "type": "object",
                "properties": {"level": {"$ref": "#/$defs/level"}},
            }
        )

    try:
        envelope = RefDevice.command_schemas()["configure"]["command"]
        jsonschema.validate({"command": "configure", "payload": {"level": "low"}, "correlation_id": "x"}, envelope)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"command": "configure", "payload": {"level": "max"}, "correlation_id": "x"}, envelope)
    finally:
        registry.unregister(RefDevice)
