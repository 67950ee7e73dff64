"""``hubserver run``: the whole hub in one process and one asyncio loop (daphne for HTTP and WebSocket, the
embedded amqtt broker for MQTT), after migrating the database and making sure an admin account exists."""

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ... import running
from ...brokers.connection import BrokerError
from ...brokers.embedded import PortInUse
from ...cli import program_name
from ...conf import EMBEDDED_ENGINE, EVENT_LOOPS, hub_settings
from ...dasf import app_settings as dasf_settings
from ...hub import Hub
from ..database import BINARY_SETTINGS, migrate_quietly
from ..gc_tuning import tune_for_serving
from ..location import is_new_database, new_database_notices

logger = logging.getLogger("hubserver")


class Command(BaseCommand):
    help = "Run the hub: MQTT broker, storage, admin, API and live views in one process."
    requires_migrations_checks = False

    def run_from_argv(self, argv):
        """From the command line the process ends with the command: make sure it does (``call_command`` from
        a longer-lived process does not come here)."""
        code = 1
        try:
            super().run_from_argv(argv)
            code = 0
        finally:
            exit_even_if_a_request_thread_hangs(code)

    def add_arguments(self, parser):
        parser.add_argument("--host", default="0.0.0.0", help="address to listen on (HTTP and MQTT)")
        parser.add_argument("--http-port", type=int, default=8000, help="HTTP, WebSocket and MQTT-over-WebSocket")
        parser.add_argument(
            "--mqtt-port", type=int, default=None, help=f"MQTT over TCP (default {hub_settings.MQTT_PORT})"
        )
        parser.add_argument(
            "--data-dir",
            help="where the database, secret key and migrations live (HUBSERVER_DATA_DIR; read before start-up)",
        )
        parser.add_argument("--devices", help="a devices.py of your own (HUBSERVER_DEVICES; read before start-up)")
        parser.add_argument(
            "--event-loop",
            choices=EVENT_LOOPS,
            default=None,
            help="uvloop (the default; asyncio's own loop where uvloop is not installed) or asyncio "
            "(HUBSERVER_EVENT_LOOP)",
        )

    def handle(self, *args, host, http_port, mqtt_port, event_loop=None, **options):
        install_reactor(event_loop or hub_settings.EVENT_LOOP)  # first: before anything imports Twisted's reactor
        self.raise_open_files_limit()
        embedded = any(entry["ENGINE"] == EMBEDDED_ENGINE for entry in hub_settings.BROKERS.values())
        if not embedded and mqtt_port is not None:
            raise CommandError(
                "--mqtt-port is for the embedded broker; the brokers of HUBSERVER['BROKERS'] are all external "
                "(devices connect to them)"
            )
        mqtt_port = hub_settings.MQTT_PORT if mqtt_port is None else mqtt_port
        tls_port = hub_settings.MQTT_TLS_PORT if embedded else 0
        # Every port before anything is created: a start that fails leaves no database and no admin account.
        ports = [(http_port, "HTTP", "--http-port")]
        if embedded:
            ports.append((mqtt_port, "MQTT", "--mqtt-port"))
        if tls_port:
            ports.append((tls_port, "MQTT over TLS", "HUBSERVER_MQTT_TLS_PORT"))
        problems = [problem for port, what, option in ports if (problem := port_problem(host, port, what, option))]
        if problems:
            raise CommandError(" ".join(problems))
        self.prepare_database()

        from twisted.internet import defer, reactor

        from ...asgi import application

        BoundedServer = _bounded_server_class()

        loop = reactor._asyncioEventloop
        asyncio.set_event_loop(loop)
        hub = Hub(embedded={"host": host, "port": mqtt_port})
        try:
            loop.run_until_complete(hub.start())
        except PortInUse as exc:
            raise CommandError(f"{exc}. Is another hub or MQTT broker running? Use --mqtt-port.") from exc
        except BrokerError as exc:
            raise CommandError(str(exc)) from exc
        # Only once the broker listens: an account whose password was printed by a start that then failed
        # would be lost.
        self.ensure_admin(host, http_port)
        tune_for_serving()
        running.record(
            running.this_hub(host, http_port, mqtt_port if embedded else 0, tls_port, hub_settings.MQTT_WEBSOCKET_PATH)
        )

        def stop_hub():
            self.stdout.write("Stopping: no new connections; committing what is queued...")
            running.forget()
            return defer.Deferred.fromFuture(asyncio.ensure_future(hub.stop()))

        reactor.addSystemEventTrigger("before", "shutdown", stop_hub)
        server = BoundedServer(
            application=application,
            endpoints=[f"tcp:port={http_port}:interface={_twisted_interface(host)}"],
            signal_handlers=True,
            websocket_timeout=-1,  # MQTT sessions over WebSocket last as long as the device wants
            application_close_timeout=10,
            ready_callable=lambda: self.print_ready(host, http_port, mqtt_port if embedded else None, hub),
        )
        failed = []
        original_listen_error = server.listen_error
        server.listen_error = lambda failure: (failed.append(failure.getErrorMessage()), original_listen_error(failure))
        try:
            server.run()
            finish_pending_tasks(loop)
        finally:
            running.forget()
        if failed:
            raise CommandError(f"cannot listen for HTTP on {host}:{http_port}: {failed[0]}")
        self.stdout.write("Stopped.")

    def raise_open_files_limit(self):
        """Each connection is a file descriptor: lift the soft limit (often 1,024) to the hard limit."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
        needed = hub_settings.MAX_CONNECTIONS + 256
        if soft != resource.RLIM_INFINITY and hub_settings.MAX_CONNECTIONS and soft < needed:
            self.stderr.write(
                self.style.WARNING(
                    f"The open-files limit is {soft}: fewer than MAX_CONNECTIONS ({hub_settings.MAX_CONNECTIONS}) "
                    f"devices can connect. Raise it (ulimit -n {needed}) or lower MAX_CONNECTIONS."
                )
            )

    def prepare_database(self):
        """Bring the database up to date, with the migrations of a devices file of the user's."""
        if settings.SETTINGS_MODULE == BINARY_SETTINGS and is_new_database():
            for line in new_database_notices(program_name(sys.argv[0])):
                self.stderr.write(line, style_func=self.style.WARNING if "warning:" in line else str)
        if os.environ.get("HUBSERVER_DEVICES") and settings.SETTINGS_MODULE == BINARY_SETTINGS:
            from ...cli import sync_user_migrations, warn_about_catalogue_data

            sync_user_migrations(self.stdout)
            warn_about_catalogue_data(self.stderr)
        else:
            migrate_quietly()

    def ensure_admin(self, host, http_port):
        """On first start, create an ``admin`` account and print its password, once."""
        from django.contrib.auth import get_user_model

        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "", password)
        self.stdout.write(
            self.style.WARNING(
                f"Created the admin account. Log in at http://{_shown(host)}:{http_port}/admin/ as  admin  with "
                f"password  {password}\n"
                f"This password is shown only once. To set a new one: {reset_command()}"
            )
        )

    def print_ready(self, host, http_port, mqtt_port, hub=None):
        shown = _shown(host)
        if mqtt_port is not None:
            mqtt = (
                f"  MQTT                     mqtt://{shown}:{mqtt_port}\n"
                f"  MQTT over WebSocket      ws://{shown}:{http_port}{hub_settings.MQTT_WEBSOCKET_PATH}\n"
            )
        else:  # every broker is external: devices connect to it, this process takes a share of the messages
            mqtt = "".join(
                f"  MQTT (external)          {getattr(engine, 'address', name)}\n"
                for name, engine in (hub.brokers.items() if hub is not None else ())
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"hubserver is running (data in {settings.DATA_DIR})\n"
                f"  dashboard                http://{shown}:{http_port}/\n"
                f"  admin, API               http://{shown}:{http_port}/admin/  http://{shown}:{http_port}/api/docs/\n"
                + mqtt
                + f"  DASF topics (WebSocket)  ws://{shown}:{http_port}/{dasf_settings.DASF_WEBSOCKET_URL_ROUTE}<topic>\n"
                "Press Ctrl+C to stop."
            )
        )
        sys.stdout.flush()


def _bounded_server_class():
    from daphne.server import Server
    from twisted.internet import defer

    from ...web.bodies import bounded_http_factory

    class BoundedServer(Server):
        """daphne's Server, whose HTTP requests have their bodies limited before they are read
        (``hubserver.web.bodies``; daphne builds its HTTP factory inside ``run()``, this takes its place),
        and which cancels every application when it stops."""

        @property
        def http_factory(self):
            return self._bounded_http_factory

        @http_factory.setter
        def http_factory(self, factory):
            self._bounded_http_factory = bounded_http_factory(self)

        # Upstream (Server.kill_all_applications): a connection whose request is not complete yet has no
        # application, and the KeyError it raised ended the loop: the applications after it were never
        # cancelled, and a traceback was logged on every such stop.
        def kill_all_applications(self):
            running = [details.get("application_instance") for details in self.connections.values()]
            running = [instance for instance in running if instance is not None and not instance.done()]
            for instance in running:
                instance.cancel()
            logger.debug("cancelled %d pending application instances", len(running))
            if not running:
                return None
            # Wait for all of them, for a while (asyncio.gather gave up at the first one that ended cancelled).
            waiting = asyncio.ensure_future(asyncio.wait(running, timeout=PENDING_TASKS_TIMEOUT))
            return defer.Deferred.fromFuture(waiting)

    return BoundedServer


# Seconds the tasks left on the loop when the server has stopped get to end once cancelled.
PENDING_TASKS_TIMEOUT = 10.0
# Once those have ended, the loop keeps running until no thread has handed it a new task for this long.
QUIET_AFTER_STOP = 0.3
# Seconds the interpreter may spend joining the threads that served requests before the stopped hub exits
# anyway (everything queued was committed before it printed "Stopped.").
EXIT_TIMEOUT = 10.0


def finish_pending_tasks(loop, timeout=PENDING_TASKS_TIMEOUT):
    """Cancel the tasks still on the loop after the server stopped, and run it until they have ended.

    daphne cancels each connection's application at shutdown, but not the tasks that application started,
    and the reactor stops the loop as soon as its shutdown triggers are done. An HTTP request being served
    at that moment is split between its thread and the loop (Django runs a sync middleware in the thread,
    which hands the rest of the request to a task on the loop and waits for it): with the loop stopped,
    that thread waited for ever, and since Python joins every executor thread at exit, a hub sent SIGTERM
    while serving HTTP printed "Stopped." and never exited. Cancelled here, each such task ends and wakes
    its thread; a thread woken that way may hand the loop one more task on its way out, so the loop keeps
    running (and cancelling) until none has come for ``QUIET_AFTER_STOP`` seconds."""
    deadline = time.monotonic() + timeout
    quiet_until = time.monotonic() + QUIET_AFTER_STOP
    # A request cut short here ends its tasks with RequestAborted or CancelledError, some before this
    # function sees them: that is the stop, not an error worth a traceback.
    loop.set_exception_handler(lambda loop, context: logger.debug("while the hub stopped: %s", context))
    while True:
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if pending:
            for task in pending:
                task.cancel()
            done, left = loop.run_until_complete(asyncio.wait(pending, timeout=max(0.01, deadline - time.monotonic())))
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.debug("a task ended with %r while the hub stopped", task.exception())
            if left:
                logger.warning("%d tasks did not end within %.0f s of the hub stopping: %s", len(left), timeout, left)
                return
            quiet_until = time.monotonic() + QUIET_AFTER_STOP
        elif time.monotonic() >= quiet_until or time.monotonic() >= deadline:
            return
        else:
            loop.run_until_complete(asyncio.sleep(0.02))


def exit_even_if_a_request_thread_hangs(code, timeout=EXIT_TIMEOUT):
    """Before it exits, Python joins every thread that served a request; one still blocked (a request
    thread waiting on the stopped loop after all) would keep a stopped hub alive for ever. A watchdog
    thread ends the process with ``code`` ``timeout`` seconds from now, whatever is still being joined; an
    exit that joins nothing stuck is over long before."""

    def watch():
        time.sleep(timeout)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"a thread that served a request did not end within {timeout:.0f} s; exiting\n")
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(code)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


def install_reactor(event_loop):
    """Install Twisted's asyncio reactor on the chosen loop, then import daphne.server (which otherwise installs
    it on a new stock asyncio loop). Twisted's AsyncioSelectorReactor accepts any asyncio loop but a proactor
    one: it only uses add_reader/add_writer, call_at and call_soon_threadsafe. Logs the loop that runs."""
    if "twisted.internet.reactor" not in sys.modules and event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            logger.warning("uvloop is not installed: running on asyncio's own event loop")
        else:
            from twisted.internet import asyncioreactor

            loop = uvloop.new_event_loop()
            if "ASGI_THREADS" in os.environ:  # as daphne.server does for its own loop
                loop.set_default_executor(ThreadPoolExecutor(max_workers=int(os.environ["ASGI_THREADS"])))
            asyncioreactor.install(loop)
    import daphne.server
    from twisted.internet import reactor

    if daphne.server.twisted_loop is not reactor._asyncioEventloop:
        daphne.server.twisted_loop.close()  # created at import, and unused: its reactor was already installed
    loop = reactor._asyncioEventloop
    if type(loop).__module__.startswith("uvloop"):
        logger.info("Event loop: uvloop %s", sys.modules["uvloop"].__version__)
    else:
        logger.info("Event loop: asyncio (%s)", type(loop).__name__)
    return loop


def _shown(host):
    return "localhost" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)


def reset_command():
    """The command that sets a new admin password, as this user runs the binary, on this data directory."""
    if settings.SETTINGS_MODULE != BINARY_SETTINGS:
        return "python manage.py changepassword admin"
    from ...settings.environment import default_data_dir  # the binary's settings are loaded already

    where = f" --data-dir {settings.DATA_DIR}" if Path(settings.DATA_DIR) != default_data_dir().resolve() else ""
    return f"{program_name(sys.argv[0])}{where} changepassword admin"


def _twisted_interface(host):
    return host.replace(":", r"\:")


def port_problem(host, port, what, option):
    """Why ``port`` cannot be listened on (one sentence naming it, and the hub holding it if one does), or None."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        return None
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return f"cannot listen for {what} on {host}:{port}: {exc.strerror}."
    finally:
        probe.close()
    holder = next(
        (hub for hub in running.running_hubs() if port in (hub.http_port, hub.mqtt_port, hub.mqtt_tls_port)), None
    )
    if holder is None:
        hint = " Is another hub or MQTT broker running?" if what.startswith("MQTT") else ""
        return f"cannot listen for {what} on {host}:{port}: already in use.{hint} Use {option}."
    if holder.database == running.database_key():
        return (
            f"cannot listen for {what} on {host}:{port}: hubserver (pid {holder.pid}) is already running on this "
            f"database and listens there; stop it first (Ctrl+C in its terminal, or kill {holder.pid})."
        )
    return (
        f"cannot listen for {what} on {host}:{port}: hubserver (pid {holder.pid}) on another database "
        f"({holder.data_dir or holder.database}) listens there; stop it, or use {option}."
    )
