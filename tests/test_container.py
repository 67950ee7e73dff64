"""The container files as a deployer reads them: compose.yaml parses and runs the Dockerfile's image with its
ports, volume and documented variables; the image runs the hub unprivileged with a health check. (The health
check itself runs against a real hub in tests/test_run.py.)"""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def dockerfile():
    """The Dockerfile's instructions as ``[(INSTRUCTION, arguments)]``, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_the_image_runs_the_hub_unprivileged_with_a_health_check():
    instructions = dockerfile()
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0"), "the hub must not run as root"
    created = next(args for name, args in instructions if name == "RUN" and "useradd" in args)
    assert f" {users[-1]}" in created and "--create-home" in created
    health = [args for name, args in instructions if name == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["python", "-m", "hubserver.healthcheck"]')
    assert ("CMD", '["hubserver", "run"]') in instructions
    env = " ".join(args for name, args in instructions if name == "ENV")
    assert "HUBSERVER_DATA_DIR=/data" in env
    assert ("VOLUME", "/data") in instructions
    assert {"1883", "8000"} <= set(" ".join(a for n, a in instructions if n == "EXPOSE").split())


def test_compose_runs_the_image_with_ports_volume_and_documented_settings():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    hub = compose["services"]["hub"]
    assert hub["build"] == "."
    assert {"1883:1883", "8000:8000"} <= {str(port) for port in hub["ports"]}
    volume, target = hub["volumes"][0].split(":")
    assert target == "/data" and volume in compose["volumes"]
    documented = (ROOT / "docs" / "configuration.md").read_text()
    for name in hub["environment"]:
        assert f"| `{name}` |" in documented, f"{name} is not in docs/configuration.md"
    assert "HUBSERVER_PUBLIC_HOST" in hub["environment"] and "HUBSERVER_ALLOWED_HOSTS" in hub["environment"]


def test_the_image_is_built_from_the_package_sources_alone():
    """A clone holds what its user made there (device.py, plugs.csv with device passwords, a venv): the image
    copies only what the package is built from, and all of that, so nothing else lands in its layers."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set()
    for name, args in dockerfile():
        if name == "COPY":
            *sources, target = args.split()
            assert target.startswith("/src"), args
            copied.update(sources)
    assert "." not in copied, "COPY . would put the whole build context into the image"
    assert copied == package_dirs | {"pyproject.toml", project["project"]["readme"]}
    for ignored in ("*.csv", "**/*.sqlite3*", ".venv"):
        assert ignored in (ROOT / ".dockerignore").read_text().split()
