"""Cross-site WebSocket hijacking, tried the way it happens: a signed-in user's browser visits a page on
another origin of the same machine (another port), and that page opens the hub's ``/ws/hub/``. The
browser sends the session cookie along (cookies ignore ports), so only the hub's Origin check stands in
the way: the page must see the socket closed with 4403, while the hub's own pages keep working."""

import http.server
import subprocess
import threading

import pytest
from playwright.sync_api import sync_playwright

from tests.mqtt import free_port
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_run import BINARY, RunningHub, environment

pytestmark = pytest.mark.slow

USERNAME = "origin-tester"
PASSWORD = "an-origin-test-password"

# Opens the hub's live socket from whatever page runs it and resolves to what the page could observe.
PROBE = """async (url) => new Promise((resolve) => {
    const socket = new WebSocket(url);
    const seen = {opened: false, frames: []};
    socket.onopen = () => { seen.opened = true; socket.send(JSON.stringify({type: "ping", request_id: 1})); };
    socket.onmessage = (event) => { seen.frames.push(JSON.parse(event.data)); socket.close(1000); };
    socket.onclose = (event) => resolve({...seen, code: event.code});
    setTimeout(() => resolve({...seen, code: null}), 10000);
})"""


class ForeignSite:
    """Another origin on this machine: a plain HTTP server on a free port serving one empty page."""

    def __init__(self):
        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"<!doctype html><title>elsewhere</title><p>nothing to see</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Page)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path):
    hub = RunningHub(tmp_path / "data").start()
    subprocess.run(
        [BINARY, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "o@example.com"],
        env=environment(hub.data_dir, DJANGO_SUPERUSER_PASSWORD=PASSWORD),
        capture_output=True,
        check=True,
        timeout=120,
    )
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()


def test_a_page_on_another_port_cannot_use_the_session_socket(hub):
    site = ForeignSite()
    base = f"http://127.0.0.1:{hub.http_port}"
    socket_url = f"ws://127.0.0.1:{hub.http_port}/ws/hub/"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(base + "/")
                page.fill("input[name=username]", USERNAME)
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_selector("#live-indicator[data-subscribed=true]")

                # The hub's own page: the socket opens and answers.
                own = page.evaluate(PROBE, socket_url)
                assert own["opened"] and own["frames"] == [{"type": "pong", "request_id": 1}], own

                # Same browser, same cookie jar, another origin (port): the hub closes the socket with 4403.
                page.goto(f"http://127.0.0.1:{site.port}/")
                foreign = page.evaluate(PROBE, socket_url)
                assert foreign["frames"] == [] and foreign["code"] == 4403, foreign
            finally:
                browser.close()
    finally:
        site.stop()
    assert "foreign origin" in hub.text()
