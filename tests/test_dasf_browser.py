"""The dashboard's Topics page in a real browser (Debian's chromium driven by Playwright) against
``hubserver run``: a message waiting for its backend shows up, and goes once the backend connects and
acknowledges it, without a reload."""

import json
import re
import uuid

import pytest
import websocket
from playwright.sync_api import expect, sync_playwright

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, LIVE, hubserver
from tests.test_dasf_demessaging import SETUP
from tests.test_run import RunningHub

pytestmark = pytest.mark.slow

USERNAME = "topics-watcher"
PASSWORD = "a-browser-test-password"


@pytest.fixture
def hub(tmp_path):
    hub = RunningHub(tmp_path / "data").start()
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()


def test_the_topics_page_follows_a_waiting_message_and_its_backend(hub):
    tokens = json.loads(hubserver(hub, "shell", "-c", SETUP).stdout.strip().splitlines()[-1])
    hubserver(
        hub,
        "createsuperuser",
        "--noinput",
        "--username",
        USERNAME,
        "--email",
        "w@example.com",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
    )
    base = f"http://127.0.0.1:{hub.http_port}"
    ws = f"ws://127.0.0.1:{hub.http_port}/ws"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(LIVE)
            expect.set_options(timeout=LIVE)
            page.goto(base + "/topics/")
            expect(page).to_have_url(re.compile(r"/login/"))
            page.fill("input[name=username]", USERNAME)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.goto(base + "/topics/")
            expect(page.locator("h1")).to_have_text("Topics")
            expect(page.locator("#live-indicator")).to_have_attribute("data-state", "open")
            row = page.locator('tr.topic-row[data-topic="calc"]')
            expect(row.locator("[data-field=outstanding]")).to_have_text("0")
            expect(row.locator("[data-field=availability]")).to_have_text("unknown")

            producer = websocket.create_connection(
                f"{ws}/calc/", header=[f"Authorization: Token {tokens['client']}"], timeout=20
            )
            message_id = str(uuid.uuid4())
            producer.send(json.dumps({"messageId": message_id, "properties": {"messageType": "request"}}))
            assert json.loads(producer.recv())["result"] == "ok"
            expect(row.locator("[data-field=outstanding]")).to_have_text("1")  # nobody listens: it waits

            backend = websocket.create_connection(
                f"{ws}/calc/backend/", header=[f"Authorization: Token {tokens['backend']}"], timeout=20
            )
            assert json.loads(backend.recv())["messageId"] == message_id  # it was kept for the backend
            expect(row.locator("[data-field=consumers]")).to_have_text("1")
            backend.send(json.dumps({"messageId": message_id}))
            expect(row.locator("[data-field=outstanding]")).to_have_text("0")
            backend.close()
            expect(row.locator("[data-field=consumers]")).to_have_text("0")
            producer.close()
        finally:
            browser.close()
