"""examples/scale-out: the Compose files name the services the deployment needs, every hub setting they
use is documented, every file they mount exists, and the Mosquitto configuration starts a real Mosquitto."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scale-out"


@pytest.mark.parametrize(
    ("compose", "broker"), [("compose.yaml", "mosquitto"), ("emqx/compose.yaml", "emqx")], ids=["mosquitto", "emqx"]
)
def test_the_compose_files_are_complete(compose, broker):
    path = EXAMPLE / compose
    services = yaml.safe_load(path.read_text())["services"]
    assert {broker, "postgres", "redis", "web", "worker-1", "worker-2", "setup"} <= set(services)
    for name in (broker, "postgres", "redis", "web"):
        assert "healthcheck" in services[name], f"{name} has no health check"
    workers = [services[f"worker-{n}"]["command"] for n in (1, 2)]
    assert workers[0][:2] == ["hubserver", "listen"] and workers[0] != workers[1]  # one client id each
    documented = (ROOT / "docs" / "configuration.md").read_text()
    for variable in services["web"]["environment"]:
        if variable.startswith("HUBSERVER_") or variable == "DATABASE_URL":
            assert f"| `{variable}` |" in documented, f"{variable} is not in docs/configuration.md"
    for service in services.values():
        for volume in service.get("volumes", ()):
            source = volume.split(":")[0]
            if source.startswith("."):
                mounted = (path.parent / source).resolve()
                assert mounted.exists() or (mounted.parent / (mounted.name + ".example")).exists(), source


@pytest.mark.slow
def test_the_mosquitto_configuration_runs_with_debians_mosquitto(tmp_path):
    """The example's mosquitto.conf, its paths moved to a temporary directory and Debian's plugin path, starts,
    loads the dynamic-security plugin and refuses anonymous clients."""
    import subprocess

    from tests import services

    conf = (EXAMPLE / "mosquitto" / "mosquitto.conf").read_text()
    port = services.free_port()
    conf = conf.replace("/usr/lib/mosquitto_dynamic_security.so", services.dynamic_security_plugin())
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/")
    conf = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", conf, flags=re.MULTILINE)
    conf = conf.replace("log_dest stdout", f"log_dest file {tmp_path}/log") + "\nuser root\n"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", f"{tmp_path}/dynamic-security.json", "admin", "admin-pw"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "mosquitto.conf").write_text(conf)
    process = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        services.wait_for_port(port, process, what="mosquitto")
        refused = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "x", "-C", "1", "-W", "2"],
            capture_output=True,
            text=True,
        )
        assert "not authori" in (refused.stdout + refused.stderr).lower()
        listed = subprocess.run(
            [
                "mosquitto_ctrl",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-u",
                "admin",
                "-P",
                "admin-pw",
                "dynsec",
                "listClients",
            ],
            capture_output=True,
            text=True,
        )
        assert "admin" in listed.stdout
    finally:
        process.terminate()
        process.wait(10)
