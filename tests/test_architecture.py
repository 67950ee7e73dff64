"""The import rules of docs/architecture.md (``[tool.importlinter]`` in pyproject.toml), checked with
import-linter on the package as it is installed: pyproject maps plugins/, devicetypes/ and settings/ into
``hubserver``, so the check runs on a tree of links laid out the same way. An import that runs up a layer
fails here, naming the chain of imports."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def installed_layout(into):
    """``into/hubserver``: links to every entry of hubserver/, plus each mapped package where it installs."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    package = into / "hubserver"
    package.mkdir()
    for entry in (ROOT / mapping["hubserver"]).iterdir():
        (package / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name != "hubserver":
            (into / name.replace(".", "/")).symlink_to(ROOT / folder)
    return into


def lint_imports(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed_layout(tmp_path))}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # runs lint-imports
def test_every_import_follows_the_layers(tmp_path):
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    # The rules are about the real tree: the mapped packages are in it (else they would pass vacuously).
    assert "Only plugins/ imports amqtt KEPT" in result.stdout


@pytest.mark.slow  # runs mypy
def test_the_public_api_type_checks():
    """mypy on the files ``[tool.mypy]`` lists: DeviceType and its declarations, the registry, the router's
    entry point, BaseBroker, the Hub and the vocabulary."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues found in" in result.stdout
