"""Fixtures for tests that need real servers (PostgreSQL, Redis, Mosquitto with dynamic security).

A server named by its ``HUBSERVER_TEST_*`` environment variable (``.ci/run`` starts one of each) is used
as it is; otherwise the fixture starts one from Debian's binaries for the whole test session and stops it
at the end. Tests that use them start servers and are marked ``slow``.
"""

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from tests import services


def _session_server(name, variable, start, request):
    url = os.environ.get(variable)
    if url:
        return url, None
    directory = Path(tempfile.mkdtemp(prefix=f"hubserver-test-{name}-"))
    os.chmod(directory, 0o755)  # PostgreSQL runs as its own account and must reach its directory
    try:
        server = start(directory / name)
    except services.ServiceUnavailable as exc:
        pytest.fail(f"this test needs {name}: {exc}", pytrace=False)
    request.addfinalizer(server.stop)
    return server.url, server


@pytest.fixture(scope="session")
def postgres_server(request):
    """The URL of a PostgreSQL server whose user may create databases."""
    url, _ = _session_server("postgres", services.ENV_POSTGRES, services.start_postgres, request)
    return url


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    url = services.create_postgres_database(postgres_server, name)
    yield url
    services.drop_postgres_database(postgres_server, name)


@pytest.fixture(scope="session")
def redis_url(request):
    """The URL of a Redis server; tests isolate themselves with their own key or channel prefixes."""
    url, _ = _session_server("redis", services.ENV_REDIS, services.start_redis, request)
    return url


@pytest.fixture(scope="session")
def mosquitto_url(request):
    """``mqtt://hub-admin:<password>@127.0.0.1:<port>`` of a Mosquitto with the dynamic-security plugin,
    whose ``hub-admin`` client may administer it; anonymous clients are refused."""
    url, _ = _session_server("mosquitto", services.ENV_MOSQUITTO, services.start_mosquitto, request)
    return url


@pytest.fixture
def mosquitto_factory(tmp_path_factory):
    """Start Mosquittos of a configuration of the test's own (``services.start_mosquitto`` arguments, e.g.
    extra TLS listeners); each is stopped at the end of the test."""
    started = []

    def start(**options):
        directory = tmp_path_factory.mktemp("mosquitto")
        try:
            server = services.start_mosquitto(directory, **options)
        except services.ServiceUnavailable as exc:
            pytest.fail(f"this test needs mosquitto: {exc}", pytrace=False)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
