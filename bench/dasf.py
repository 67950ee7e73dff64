"""DASF topic broker: messages per second from producers to a consumer, and latency at a paced rate, for
hubserver and for the reference implementation, dasf-broker-django, in one run on this machine.

Both brokers get the same topic (``cache`` storage: a message is stored until the consumer acknowledges
it), the same users with DRF tokens (``Authorization: Token``), and the same clients: one consumer
(``ws://.../ws/bench/backend/``, acknowledging every message as demessaging does) and ``--producers``
producers (``ws://.../ws/bench/``) that keep at most ``--window`` messages each waiting for their
acknowledgement. All clients run in this process, on one asyncio loop (one clock for both ends).

- hubserver: ``hubserver run`` of this environment, fresh data directory (SQLite), default settings.
- dasf-broker-django: the PyPI package in ``--reference-venv`` (created, with daphne and
  djangorestframework, when it does not exist), served by daphne with a minimal project: SQLite (Django's
  defaults; ``--reference-wal`` for WAL mode as hubserver uses), Django's in-memory channel layer (capacity
  raised so it drops nothing), its TokenAuthMiddlewareStack.

Per broker: ``--seconds`` of throughput (after ``--warmup``), then a paced run at ``--rate`` messages a
second measuring producer-send -> consumer-receive latency. The last lines:

    throughput hubserver=... msg/s reference=... msg/s ratio=...x
    latency rate=1000 msg/s hubserver p50=..ms p99=..ms | reference p50=..ms p99=..ms

``--skip-reference`` measures hubserver alone. Ctrl+C or SIGTERM stops everything it started.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from websockets.asyncio.client import connect as ws_connect

TOPIC = "bench"
DEFAULT_VENV = Path(os.environ.get("DASF_REFERENCE_VENV", "/work/scratch/dasf-venv"))

# Users, tokens and the topic, on either broker (both use django-guardian and DRF tokens).
SETUP = """
import json
from django.contrib.auth.models import User
from guardian.shortcuts import assign_perm
from rest_framework.authtoken.models import Token
from {models} import BrokerTopic

tokens = {{}}
for name in ("producer", "consumer"):
    user = User.objects.create_user(name)
    tokens[name] = Token.objects.create(user=user).key
topic = BrokerTopic.objects.create(slug="{topic}", store_messages="cache")
assign_perm("can_produce", User.objects.get(username="producer"), topic)
assign_perm("can_consume", User.objects.get(username="consumer"), topic)
print("TOKENS " + json.dumps(tokens))
"""

REFERENCE_SETTINGS = """
from pathlib import Path
BASE = Path(__file__).resolve().parent
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
    "channels", "guardian", "rest_framework", "rest_framework.authtoken", "dasf_broker",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "guardian.backends.ObjectPermissionBackend"]
ROOT_URLCONF = "benchref.urls"
ASGI_APPLICATION = "benchref.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE.parent / "db.sqlite3"}}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000000}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
DASF_STORE_MESSAGES = "cache"
"""

# --reference-wal: the same SQLite settings as hubserver's (the package's own default is Django's).
REFERENCE_WAL = """
DATABASES["default"]["OPTIONS"] = {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"}
"""

REFERENCE_ASGI = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchref.settings")
from django.core.asgi import get_asgi_application
django_application = get_asgi_application()
from channels.routing import ProtocolTypeRouter, URLRouter
from dasf_broker.routing import websocket_urlpatterns
from dasf_broker.token_auth_middleware import TokenAuthMiddlewareStack
application = ProtocolTypeRouter(
    {"http": django_application, "websocket": TokenAuthMiddlewareStack(URLRouter(websocket_urlpatterns))}
)
"""

REFERENCE_URLS = """
from django.urls import include, path
urlpatterns = [path("", include("dasf_broker.urls"))]
"""


# The brokers --------------------------------------------------------------------------------------------


class HubBroker(common.Process):
    name_in_report = "hubserver"

    def __init__(self, data_dir):
        super().__init__("hubserver", env=common.hub_environment(data_dir))
        self.data_dir = data_dir
        self.http_port = common.free_port()

    def start(self):
        self.command = [common.hub_binary(), "run", "--host", "127.0.0.1", "--http-port", str(self.http_port)]
        self.command += ["--mqtt-port", str(common.free_port())]
        super().start()
        self.wait_for("hubserver is running")
        return self

    def setup(self):
        return _tokens(
            [common.hub_binary(), "shell", "-c", SETUP.format(models="hubserver.dasf.models", topic=TOPIC)], self.env
        )


class ReferenceBroker(common.Process):
    name_in_report = "dasf-broker-django"

    def __init__(self, directory, venv, wal=False):
        self.directory = Path(directory)
        self.venv = Path(venv)
        self.wal = wal
        self.http_port = common.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "HUBSERVER_", "VIRTUAL_ENV"))}
        env.update({"DJANGO_SETTINGS_MODULE": "benchref.settings", "PYTHONPATH": str(self.directory)})
        env["PYTHONUNBUFFERED"] = "1"
        super().__init__("dasf-broker-django", env=env)

    @property
    def python(self):
        return str(self.venv / "bin" / "python")

    def prepare(self):
        """The scratch environment (made when missing) and a project that serves the package."""
        if not (self.venv / "bin" / "python").exists():
            print(f"creating {self.venv} with dasf-broker-django, daphne and djangorestframework", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
            subprocess.run(
                [self.python, "-m", "pip", "install", "-q", "dasf-broker-django", "daphne", "djangorestframework"],
                check=True,
            )
        else:
            found = subprocess.run([self.python, "-c", "import rest_framework, daphne, dasf_broker"], check=False)
            if found.returncode != 0:
                subprocess.run(
                    [self.python, "-m", "pip", "install", "-q", "dasf-broker-django", "daphne", "djangorestframework"],
                    check=True,
                )
        package = self.directory / "benchref"
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text("")
        (package / "settings.py").write_text(REFERENCE_SETTINGS + (REFERENCE_WAL if self.wal else ""))
        (package / "asgi.py").write_text(REFERENCE_ASGI)
        (package / "urls.py").write_text(REFERENCE_URLS)
        self._manage("migrate", "-v", "0")

    def _manage(self, *args):
        out = subprocess.run(
            [self.python, "-m", "django", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if out.returncode != 0:
            raise common.BenchError(f"dasf-broker-django: django-admin {' '.join(args)} failed:\n{out.stderr[-2000:]}")
        return out.stdout

    def start(self):
        self.command = [self.python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.http_port)]
        self.command += ["benchref.asgi:application"]
        super().start()
        self.wait_for("Listening on TCP address")
        return self

    def setup(self):
        return _tokens(
            [self.python, "-m", "django", "shell", "-c", SETUP.format(models="dasf_broker.models", topic=TOPIC)],
            self.env,
        )


def _tokens(command, env):
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    for line in out.stdout.splitlines():
        if line.startswith("TOKENS "):
            return json.loads(line[len("TOKENS ") :])
    raise common.BenchError(f"setting up the users failed:\n{(out.stderr or out.stdout)[-2000:]}")


# The clients --------------------------------------------------------------------------------------------


class Run:
    """One measurement: producers send, the consumer receives and acknowledges."""

    def __init__(self, url, tokens, producers, window):
        self.url = url
        self.tokens = tokens
        self.producers = producers
        self.window = window
        self.sent = {}  # message id -> send time
        self.latencies = []
        self.received = 0
        self.acked = 0
        self.refused = []
        self.measuring = False
        self.cpu_per_message = None

    def _headers(self, who):
        return {"Authorization": f"Token {self.tokens[who]}"}

    async def consumer(self, ready, stop):
        async with ws_connect(
            f"{self.url}/{TOPIC}/backend/", additional_headers=self._headers("consumer"), max_size=None
        ) as ws:
            ready.set()
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                now = time.perf_counter()
                message = json.loads(text)
                message_id = message.get("messageId")
                sent = self.sent.pop(message_id, None)
                await ws.send(json.dumps({"messageId": message_id}))
                if sent is None:
                    continue  # the broker's own requests (api_info, ping)
                if self.measuring:
                    self.received += 1
                    self.latencies.append(now - sent)

    async def producer(self, stop, rate=None):
        credit = asyncio.Semaphore(self.window)
        async with ws_connect(
            f"{self.url}/{TOPIC}/", additional_headers=self._headers("producer"), max_size=None
        ) as ws:

            async def acks():
                async for text in ws:
                    ack = json.loads(text)
                    if ack.get("result") != "ok":
                        self.refused.append(ack)
                    elif self.measuring:
                        self.acked += 1
                    credit.release()

            reader = asyncio.create_task(acks())
            interval = None if rate is None else self.producers / rate
            next_send = time.perf_counter()
            context = 0
            try:
                while not stop.is_set():
                    if interval is not None:
                        next_send += interval
                        delay = next_send - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await credit.acquire()
                    context += 1
                    message_id = str(uuid.uuid4())
                    message = {
                        "messageId": message_id,
                        "context": context,
                        "properties": {
                            "requestContext": context,
                            "messageType": "request",
                            "response_topic": "bench_r",
                        },
                        "payload": "eyJmdW5jX25hbWUiOiAiYWRkIiwgImEiOiAyLCAiYiI6IDN9",
                    }
                    self.sent[message_id] = time.perf_counter()
                    await ws.send(json.dumps(message))
            finally:
                reader.cancel()

    async def measure(self, warmup, seconds, rate=None, cpu=None):
        stop = asyncio.Event()
        ready = asyncio.Event()
        consumer = asyncio.create_task(self.consumer(ready, stop))
        await asyncio.wait_for(ready.wait(), 30)
        producers = [asyncio.create_task(self.producer(stop, rate)) for _ in range(self.producers)]
        await asyncio.sleep(warmup)
        self.measuring = True
        cpu_started = cpu() if cpu else None
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        self.measuring = False
        elapsed = time.perf_counter() - started
        cpu_ended = cpu() if cpu else None
        if cpu_started is not None and cpu_ended is not None and self.received:
            self.cpu_per_message = (cpu_ended - cpu_started) / self.received
        stop.set()
        await asyncio.gather(*producers, return_exceptions=True)
        await asyncio.gather(consumer, return_exceptions=True)
        if self.refused:
            raise common.BenchError(f"the broker refused messages: {self.refused[:3]}")
        return self.received / elapsed


def latency_text(latencies):
    ordered = sorted(latencies)
    if not ordered:
        return "no messages"
    p50 = common.percentile(ordered, 0.50) * 1000
    p99 = common.percentile(ordered, 0.99) * 1000
    return f"p50={p50:.1f}ms p99={p99:.1f}ms max={ordered[-1] * 1000:.1f}ms n={len(ordered)}"


def measure(broker, args):
    tokens = broker.setup()
    url = f"ws://127.0.0.1:{broker.http_port}/ws"
    throughput_run = Run(url, tokens, args.producers, args.window)
    rate = asyncio.run(throughput_run.measure(args.warmup, args.seconds, cpu=broker.cpu_seconds))
    cpu_per_message = throughput_run.cpu_per_message
    print(
        f"{broker.name_in_report}: {rate:,.0f} msg/s producer->consumer (cache), {args.producers} producers, "
        f"window {args.window}; latency under full load {latency_text(throughput_run.latencies)}"
        + (f"; broker CPU {cpu_per_message * 1e6:.0f} us/msg" if cpu_per_message else ""),
        flush=True,
    )
    paced = Run(url, tokens, args.producers, args.window)
    achieved = asyncio.run(paced.measure(args.warmup, args.seconds, rate=args.rate))
    text = latency_text(paced.latencies)
    print(f"{broker.name_in_report}: at {args.rate} msg/s (achieved {achieved:,.0f}): {text}", flush=True)
    return rate, paced.latencies


def main():
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__.split("\n\n")[0]))
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--producers", type=int, default=4, help="producer connections (default 4)")
    parser.add_argument("--window", type=int, default=50, help="unacknowledged messages per producer (default 50)")
    parser.add_argument("--rate", type=int, default=1000, help="paced rate of the latency run (default 1000)")
    parser.add_argument("--reference-venv", default=str(DEFAULT_VENV), help=f"default {DEFAULT_VENV}")
    parser.add_argument("--skip-reference", action="store_true", help="measure hubserver only")
    parser.add_argument(
        "--reference-wal", action="store_true", help="run the reference on SQLite in WAL mode, as hubserver is"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories (paths printed)")
    args = parser.parse_args()
    common.check_positive(parser, args, "producers", "window", "rate", message="counts must be at least 1")

    with common.Main("dasf") as run:
        hub = run.stop(HubBroker(Path(run.temporary("hubserver-dasf-", keep=args.keep)) / "data"))
        hub.start()
        hub_rate, hub_latencies = measure(hub, args)
        hub.stop()
        ref_rate = ref_latencies = None
        if not args.skip_reference:
            reference = ReferenceBroker(
                run.temporary("dasf-reference-", keep=args.keep), args.reference_venv, wal=args.reference_wal
            )
            reference.prepare()
            run.stop(reference).start()
            ref_rate, ref_latencies = measure(reference, args)
            reference.stop()
        if ref_rate:
            ratio = hub_rate / ref_rate
            print(f"throughput hubserver={hub_rate:,.0f} msg/s reference={ref_rate:,.0f} msg/s ratio={ratio:.1f}x")
            print(
                f"latency rate={args.rate} msg/s hubserver {latency_text(hub_latencies)} | "
                f"reference {latency_text(ref_latencies)}"
            )
        else:
            print(f"throughput hubserver={hub_rate:,.0f} msg/s")
            print(f"latency rate={args.rate} msg/s hubserver {latency_text(hub_latencies)}")
    return run.code or 0


if __name__ == "__main__":
    sys.exit(main())
