"""Real servers for the tests: PostgreSQL, Redis and Mosquitto (with its dynamic-security plugin), each
started from Debian's binaries on a free local port in a directory of its own, and stopped again.

Standard library only, so that ``.ci/run`` can start them before any virtual environment exists::

    python3 tests/services.py up DIR        # prints KEY=VALUE lines (the URLs) and leaves the servers running
    python3 tests/services.py down DIR      # stops what ``up`` started in DIR

The test fixtures (``tests/conftest.py``) use the servers named by the environment variables ``up`` prints
(``HUBSERVER_TEST_POSTGRES_URL``, ``HUBSERVER_TEST_REDIS_URL``, ``HUBSERVER_TEST_MOSQUITTO_URL``) and start
their own when a variable is not set. A missing binary is an error that says which Debian package to
install: a test that needs a server never passes without one.
"""

import contextlib
import functools
import glob
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ENV_POSTGRES = "HUBSERVER_TEST_POSTGRES_URL"
ENV_REDIS = "HUBSERVER_TEST_REDIS_URL"
ENV_MOSQUITTO = "HUBSERVER_TEST_MOSQUITTO_URL"

MOSQUITTO_ADMIN = "hub-admin"


class ServiceUnavailable(RuntimeError):
    """A server the test needs cannot be started here (binary missing, failed start)."""


@dataclass
class Server:
    """A running server: its URL and how to stop it."""

    name: str
    url: str
    directory: Path
    pid: int | None = None
    extra: dict = field(default_factory=dict)
    _stop: object = None

    def stop(self):
        if self._stop is not None:
            self._stop()
            self._stop = None


@functools.cache
def _listen_ports():
    """The ports servers under test listen on: just below the range the kernel draws outgoing connections'
    ports from, which any client may take between the moment a test picks a port and the moment its server
    binds it. Each pytest-xdist worker gets a slice of its own, so two workers never pick the same port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_start = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32768
    ports = range(max(1024, ephemeral_start - 12000), ephemeral_start)
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    index = int(worker) % workers if worker.isdigit() else 0
    size = len(ports) // workers
    return range(ports.start + index * size, ports.start + (index + 1) * size)


_next_port = None


def free_port():
    """A port nothing listens on now, taken in turn from this process's slice (a port just used by a
    stopped server comes back only after the whole slice)."""
    global _next_port
    ports = _listen_ports()
    if len(ports) < 100:  # an unusual port range: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    if _next_port is None:
        _next_port = random.randrange(len(ports))
    for _ in range(len(ports)):
        port = ports[_next_port % len(ports)]
        _next_port += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def wait_for_port(port, process=None, timeout=20.0, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(f"{what} exited with status {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _need(path_or_name, package):
    found = shutil.which(path_or_name) if "/" not in path_or_name else path_or_name
    if not found or not os.path.exists(found):
        raise ServiceUnavailable(f"{path_or_name} not found: install Debian's {package} (apt-get install {package})")
    return found


def _terminate(pid, timeout=10.0):
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                finished, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (stopped by ``down``): poll its existence
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                finished = 0
            if finished:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


# --- PostgreSQL ---------------------------------------------------------------------------------------


def _postgres_bin():
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise ServiceUnavailable("PostgreSQL's initdb not found: install Debian's postgresql")
    return Path(candidates[-1]).parent


def _as_postgres_user():
    """PostgreSQL refuses to run as root: run its programs as the ``postgres`` account Debian creates."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceUnavailable("running as root and no 'postgres' account: install Debian's postgresql") from exc


def _run_pg(args, account, **kwargs):
    if account is not None:

        def demote():
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

        kwargs["preexec_fn"] = demote
        kwargs.setdefault("env", {**os.environ, "HOME": account.pw_dir})
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def start_postgres(directory):
    """A throw-away cluster (trust authentication on 127.0.0.1, no fsync) with a superuser and database
    ``hub``. Returns a Server whose url is ``postgres://hub@127.0.0.1:<port>/hub``."""
    bin_dir = _postgres_bin()
    account = _as_postgres_user()
    directory = Path(directory)
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(directory, account.pw_uid, account.pw_gid)
    port = free_port()
    try:
        _run_pg([str(bin_dir / "initdb"), "-D", str(data), "-U", "hub", "-A", "trust", "-E", "UTF8"], account)
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        _run_pg(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"],
            account,
        )
        _run_pg([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hub", "hub"], account)
    except subprocess.CalledProcessError as exc:
        log = directory / "log"
        detail = log.read_text()[-2000:] if log.exists() else ""
        raise ServiceUnavailable(f"PostgreSQL did not start: {exc.stderr or exc}\n{detail}") from exc

    def stop():
        with contextlib.suppress(subprocess.CalledProcessError):
            _run_pg([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], account)

    pid = int((data / "postmaster.pid").read_text().split()[0])
    return Server("postgres", f"postgres://hub@127.0.0.1:{port}/hub", directory, pid, {"bin": str(bin_dir)}, stop)


def create_postgres_database(url, name):
    """Create database ``name`` on the server of ``url`` (dropping an older one); returns its URL."""
    _postgres_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _postgres_admin(url, f'CREATE DATABASE "{name}"')
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path="/" + name))


def drop_postgres_database(url, name):
    _postgres_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres_admin(url, sql):
    parts = urllib.parse.urlsplit(url)
    env = {**os.environ}
    if parts.password:
        env["PGPASSWORD"] = urllib.parse.unquote(parts.password)
    psql = _need("psql", "postgresql-client")
    args = [psql, "-h", parts.hostname, "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    subprocess.run(
        [*args, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )


# --- Redis --------------------------------------------------------------------------------------------


def start_redis(directory):
    """redis-server on a free port, nothing persisted. Returns a Server whose url is ``redis://127.0.0.1:<port>/0``."""
    binary = _need("redis-server", "redis-server")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--logfile",
        str(directory / "log"),
    ]
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_for_port(port, process, what="redis-server")
    return Server("redis", f"redis://127.0.0.1:{port}/0", directory, process.pid, {}, lambda: _stop_process(process))


def _stop_process(process):
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- Mosquitto ----------------------------------------------------------------------------------------


def dynamic_security_plugin():
    found = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob("/usr/lib/mosquitto_dynamic_security.so")
    if not found:
        raise ServiceUnavailable("mosquitto_dynamic_security.so not found: install Debian's mosquitto")
    return found[0]


def start_mosquitto(directory, *, dynamic_security=True, admin_password="hub-admin-secret", listeners=None, extra=""):
    """Mosquitto 2 on a free port. With ``dynamic_security`` its plugin is loaded with a fresh configuration
    whose admin client (``hub-admin``) may administer it over ``$CONTROL/dynamic-security/v1``; anonymous
    clients are refused. ``listeners`` is a list of extra listener blocks (each a string of mosquitto.conf
    lines whose first line is ``listener <port> ...``), e.g. for TLS. Returns a Server whose url is
    ``mqtt://hub-admin:<password>@127.0.0.1:<port>`` (no credentials without dynamic security)."""
    binary = _need("mosquitto", "mosquitto")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        "per_listener_settings false",
        "user root" if os.geteuid() == 0 else "",
        f"log_dest file {directory / 'log'}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "persistence false",
        "max_queued_messages 100000",
        f"listener {port} 127.0.0.1",
    ]
    url = f"mqtt://127.0.0.1:{port}"
    extra_info = {"port": port}
    if dynamic_security:
        config = directory / "dynamic-security.json"
        config.unlink(missing_ok=True)
        ctrl = _need("mosquitto_ctrl", "mosquitto-clients")
        subprocess.run(
            [ctrl, "dynsec", "init", str(config), MOSQUITTO_ADMIN, admin_password],
            check=True,
            capture_output=True,
            text=True,
        )
        lines += ["allow_anonymous false", f"plugin {dynamic_security_plugin()}", f"plugin_opt_config_file {config}"]
        url = f"mqtt://{MOSQUITTO_ADMIN}:{urllib.parse.quote(admin_password, safe='')}@127.0.0.1:{port}"
        extra_info.update(admin_username=MOSQUITTO_ADMIN, admin_password=admin_password, config=str(config))
    else:
        lines.append("allow_anonymous true")
    for block in listeners or ():
        lines.append(block)
    lines.append(extra)
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join(line for line in lines if line) + "\n")
    process = subprocess.Popen(
        [binary, "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process, what="mosquitto")
    except ServiceUnavailable as exc:
        log = directory / "log"
        detail = (log.read_text() if log.exists() else "") + (process.stderr.read().decode() if process.stderr else "")
        raise ServiceUnavailable(f"{exc}\n{detail[-2000:]}") from exc
    return Server("mosquitto", url, directory, process.pid, extra_info, lambda: _stop_process(process))


# --- up / down, for .ci/run -------------------------------------------------------------------------

STARTERS = {
    "postgres": (ENV_POSTGRES, start_postgres),
    "redis": (ENV_REDIS, start_redis),
    "mosquitto": (ENV_MOSQUITTO, start_mosquitto),
}


def up(directory, names):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)  # the postgres account must reach its own subdirectory
    state = {}
    try:
        for name in names:
            variable, start = STARTERS[name]
            server = start(directory / name)
            state[name] = {"pid": server.pid, "url": server.url, **server.extra}
            print(f"{variable}={server.url}")
    finally:
        (directory / "services.json").write_text(json.dumps(state))


def down(directory):
    directory = Path(directory)
    state_file = directory / "services.json"
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    if "postgres" in state:
        account = _as_postgres_user()
        with contextlib.suppress(subprocess.CalledProcessError, ServiceUnavailable):
            _run_pg(
                [
                    str(Path(state["postgres"]["bin"]) / "pg_ctl"),
                    "-D",
                    str(directory / "postgres" / "data"),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                account,
            )
    for name in ("redis", "mosquitto"):
        if name in state and state[name].get("pid"):
            _terminate(state[name]["pid"])
    state_file.unlink()


def main(argv):
    if len(argv) < 2 or argv[0] not in ("up", "down"):
        print("usage: services.py up DIR [postgres redis mosquitto] | down DIR", file=sys.stderr)
        return 2
    try:
        if argv[0] == "up":
            up(argv[1], argv[2:] or list(STARTERS))
        else:
            down(argv[1])
    except ServiceUnavailable as exc:
        print(f"services.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
