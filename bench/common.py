"""What every benchmark script needs: the hub under test, helper processes, load-generator processes, /proc
figures, the open-files limit, and a ``main`` that always stops what it started.

One copy, so that every benchmark starts, counts and stops things the same way.
"""

import contextlib
import json
import math
import multiprocessing
import os
import queue
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

MESSAGE_TABLE = "devicetypes_weatherstationmessage"
DB_NAME = "hubserver.sqlite3"
HUB_START_TIMEOUT = 90
PROVISION_TIMEOUT = 300


class BenchError(Exception):
    """A failure to report in one clear line (exit status 1)."""


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Main(contextlib.ExitStack):
    """The body of a benchmark's ``main``.

    Ctrl+C (even if our parent ignored SIGINT) and SIGTERM raise KeyboardInterrupt; a BenchError or an
    interruption becomes one line on stderr and ``code`` 1 or 130; then the callbacks registered on it
    (``stop``, ``temporary``) run, last first, so every process and directory we made goes away.
    """

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.code = None

    def __enter__(self):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)
        return super().__enter__()

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, BenchError):
            print(f"{self.name}: {exc}", file=sys.stderr, flush=True)
            self.code = 1
        elif isinstance(exc, KeyboardInterrupt):
            print(f"{self.name}: interrupted; stopping", file=sys.stderr, flush=True)
            self.code = 130
        super().__exit__(None, None, None)
        return self.code is not None

    def stop(self, thing):
        """Call ``thing.stop()`` (or ``close()``) at the end, ignoring its errors; returns ``thing``."""
        method = getattr(thing, "stop", None) or thing.close

        def stop():
            with contextlib.suppress(Exception):
                method()

        self.callback(stop)
        return thing

    def temporary(self, prefix, keep=False):
        """A fresh temporary directory, removed at the end unless ``keep`` (then its path is printed)."""
        path = tempfile.mkdtemp(prefix=prefix)

        def remove():
            if keep:
                print(f"data kept in {path}", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)

        self.callback(remove)
        return path


def stored_time(moment):
    """What the hub stores on SQLite for a message or reading time (``hubserver.fields``): integer
    microseconds since 1970 UTC. For benchmarks that write rows into the tables directly."""
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def check_positive(parser, args, *names, message):
    """``parser.error(message)`` unless every option in ``names`` is at least 1."""
    if min(getattr(args, name) for name in names) < 1:
        parser.error(message)


def hub_binary():
    candidate = Path(sys.executable).parent / "hubserver"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hubserver")
    if not found:
        raise BenchError("cannot find the 'hubserver' command (install the hub in this Python environment)")
    return found


def hub_environment(data_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBSERVER_", "DJANGO_", "DATABASE_URL"))}
    env.update({"HUBSERVER_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"})
    return env


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


# /proc figures (Linux); None where they cannot be read.


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_kb(pid):
    """Resident memory in KB (VmRSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def open_fds(pid):
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def process_nofile_limit(pid):
    """The soft 'Max open files' of a process."""
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                value = line.split()[3]
                return None if value == "unlimited" else int(value)
    except (OSError, ValueError, IndexError):
        pass
    return None


def raise_nofile_limit(needed):
    """Raise this process's soft RLIMIT_NOFILE to at least ``needed`` (up to the hard limit).

    Child processes (the hub, spawned workers) inherit the raised limit. Raises BenchError, naming the fix,
    when the hard limit is too low. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise BenchError(
            f"this needs {needed} open files per process but the hard limit (ulimit -Hn) is {hard}: "
            f"raise it (e.g. 'ulimit -Hn {needed * 2}' as root, or LimitNOFILE= in a systemd unit) and retry"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = hard if hard != resource.RLIM_INFINITY else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class Process:
    """A process of ours (hub, broker, listener): its output kept, stopped with SIGTERM."""

    def __init__(self, name, command=None, env=None):
        self.name = name
        self.command = command
        self.env = env
        self.process = None
        self.output = []

    def start(self):
        # A session of its own: Ctrl+C reaches only the benchmark, which then stops this process.
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.on_line(line)

    def on_line(self, line):
        pass

    def text(self, last=40):
        return "".join(self.output[-last:]).rstrip()

    def wait_for(self, marker, timeout=HUB_START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not any(marker in line for line in self.output):
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not start within {timeout:.0f}s:\n{self.text()}")
            time.sleep(0.05)

    def check_alive(self):
        if self.process is not None and self.process.poll() is not None:
            raise BenchError(f"{self.name} exited (status {self.process.returncode}):\n{self.text()}")

    def cpu_seconds(self):
        return None if self.process is None else cpu_seconds(self.process.pid)

    def stop(self, timeout=60):
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status (None if killed)."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            return None


class Hub(Process):
    """The hub under test: our own ``hubserver run`` on free local ports, or an already running one."""

    def __init__(self, data_dir, host="127.0.0.1", mqtt_port=None, owned=True):
        super().__init__("the hub", env=hub_environment(data_dir))
        self.data_dir = Path(data_dir)
        self.host = host
        self.mqtt_port = mqtt_port
        self.owned = owned

    def start(self):
        self.mqtt_port = free_port()
        self.command = [hub_binary(), "run", "--host", "127.0.0.1"]
        self.command += ["--http-port", str(free_port()), "--mqtt-port", str(self.mqtt_port)]
        super().start()
        self.wait_for("hubserver is running")
        return self

    @property
    def db_path(self):
        return self.data_dir / DB_NAME

    def provision(self, count, prefix):
        command = [hub_binary(), "provision", "weatherstation", "--count", str(count), "--prefix", prefix]
        try:
            out = subprocess.run(
                [*command, "--format", "json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=PROVISION_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"provisioning {count} devices took more than {PROVISION_TIMEOUT}s") from None
        if out.returncode != 0:
            tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-15:])
            raise BenchError(f"hubserver provision failed (status {out.returncode}):\n{tail}")
        try:
            devices = json.loads(out.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"hubserver provision printed no JSON list:\n{out.stdout[:2000]}") from None
        if len(devices) != count:
            raise BenchError(f"asked hubserver provision for {count} devices, got {len(devices)}")
        return devices


def start_hub(main, needed_fds, prefix="hubserver-bench-"):
    """Our own Hub on a fresh temporary data directory, with room for ``needed_fds`` open files (the raised
    RLIMIT_NOFILE is inherited, and checked in the hub's /proc/<pid>/limits); ``main`` stops and removes it."""
    raise_nofile_limit(needed_fds)
    hub = Hub(main.temporary(prefix))
    main.stop(hub).start()
    limit = process_nofile_limit(hub.process.pid)
    if limit is not None and limit < needed_fds:
        raise BenchError(f"the hub runs with an open-files limit of {limit}, below the {needed_fds} needed")
    return hub


def drain(results, timeout):
    """One message from a multiprocessing queue, or None after ``timeout`` seconds."""
    try:
        return results.get(timeout=timeout)
    except queue.Empty:
        return None


def stop_processes(workers):
    """Wait for ``multiprocessing`` workers told to stop; terminate those that do not."""
    for worker in workers:
        worker.join(10)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
            worker.join(5)


class Generators:
    """Load-generator processes (spawn) that share the devices, a results queue and go/stop events.

    ``args(index, share, (go, stop), results)`` gives the arguments of ``target`` for one process."""

    def __init__(self, target, devices, processes, args, name):
        context = multiprocessing.get_context("spawn")
        self.go, self.stop = context.Event(), context.Event()
        self.results = context.Queue()
        shares = [devices[i::processes] for i in range(processes)]
        self.workers = [
            context.Process(
                target=target,
                args=args(index, share, (self.go, self.stop), self.results),
                name=f"{name}-{index}",
                daemon=True,
            )
            for index, share in enumerate(shares)
            if share
        ]

    def __len__(self):
        return len(self.workers)

    def start(self, timeout, check):
        """Start them and wait until each reports it is connected; ``check`` raises if the server died."""
        for worker in self.workers:
            worker.start()
        ready = {}
        deadline = time.monotonic() + timeout
        while len(ready) < len(self.workers):
            report = drain(self.results, 0.2)
            if report is not None:
                if report.get("error"):
                    raise BenchError(f"generator {report['index']} could not connect: {report['error']}")
                ready[report["index"]] = report
            check()
            dead = [w.name for w in self.workers if w.exitcode is not None]
            if dead and len(ready) < len(self.workers) and report is None:
                raise BenchError(f"generator process(es) {', '.join(dead)} exited before connecting")
            if time.monotonic() > deadline:
                raise BenchError(f"the devices did not all connect within {timeout:.0f}s")
        return ready

    def close(self):
        self.stop.set()
        stop_processes(self.workers)
        self.results.close()
