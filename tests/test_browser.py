"""The live dashboard in a real browser: Debian's chromium driven by Playwright against ``hubserver run``.

A person signs in, watches a weather station come online on the overview, opens its page, sees a reading
arrive live, and sends a command from the form that the device receives on its ``cmd`` topic; looks at a
station's last hour, day, week, month and year; pages, searches and filters a fleet.
"""

import contextlib
import json
import os
import queue
import re
import subprocess
import time

import paho.mqtt.client as paho
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.test_run import BINARY, RunningHub, environment

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USERNAME = "watcher"
PASSWORD = "a-browser-test-password"
LIVE = 20_000  # ms: how long a live update may take to show


@pytest.fixture
def hub(tmp_path):
    hub = RunningHub(tmp_path / "data").start()
    yield hub
    if hub.process.poll() is None:
        hub.process.kill()
        hub.process.wait()


def hubserver(hub, *args, **env):
    """Run ``hubserver ARGS`` on the running hub's data directory."""
    return subprocess.run(
        [BINARY, *args],
        env=environment(hub.data_dir, **env),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@contextlib.contextmanager
def browser_page():
    """A headless Chromium page, 1280x900, whose waits allow for a live update to arrive."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(LIVE)
            expect.set_options(timeout=LIVE)
            yield page
        finally:
            browser.close()


def sign_in(page, base):
    page.goto(base + "/login/")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


class Device:
    """A paho client standing in for the station: it records what arrives on its ``cmd`` topic."""

    def __init__(self, credentials, port):
        self.credentials = credentials
        self.commands = queue.Queue()
        self.subscribed = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=credentials["client_id"])
        self.client.username_pw_set(credentials["mqtt_username"], credentials["mqtt_password"])
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.put(True)
        self.client.on_message = lambda client, userdata, message: self.commands.put(json.loads(message.payload))
        self.port = port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            client.subscribe(self.credentials["topics"]["cmd"], qos=1)

    def connect(self):
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.subscribed.get(timeout=20)

    def publish(self, kind, payload):
        info = self.client.publish(self.credentials["topics"][kind], json.dumps(payload), qos=1)
        info.wait_for_publish(20)
        assert info.is_published()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow  # a browser
def test_dashboard_shows_devices_readings_and_sends_commands_live(hub, tmp_path):
    hubserver(
        hub,
        "createsuperuser",
        "--noinput",
        "--username",
        USERNAME,
        "--email",
        "watcher@example.com",
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
    )
    provisioned = hubserver(hub, "provision", "weatherstation", "ws-browser", "--name", "Roof", "--format", "json")
    credentials = json.loads(provisioned.stdout)
    credentials = credentials[0] if isinstance(credentials, list) else credentials
    device = Device(credentials, hub.mqtt_port)
    base = f"http://127.0.0.1:{hub.http_port}"
    shots = os.environ.get("HUBSERVER_SCREENSHOTS") or str(tmp_path)

    with browser_page() as page:
        # Signing in: the overview asks for it first.
        page.goto(base + "/")
        expect(page).to_have_url(re.compile(r"/login/"))
        page.fill("input[name=username]", USERNAME)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Devices")

        # The overview: the station is offline until it connects, then online without a reload.
        indicator = page.locator("#live-indicator")
        expect(indicator).to_have_attribute("data-subscribed", "true")
        row = page.locator('tr.device-row[data-device-id="ws-browser"]')
        expect(row).to_contain_text("Roof")
        expect(row.locator("[data-field=status]")).to_have_text("Offline")
        expect(row.locator("[data-field=seen]")).to_have_text("never")
        device.connect()
        try:
            expect(row.locator("[data-field=status]")).to_have_text("Online")
            expect(row.locator("[data-field=seen]")).to_have_text("just now")
            section = page.locator('.type-section[data-device-type="weatherstation"]')
            expect(section.locator("[data-count-online]")).to_have_text("1")
            page.screenshot(path=os.path.join(shots, "overview.png"), full_page=True)

            # The device page: a reading appears live, in its chart and as the latest value.
            row.get_by_role("link", name="Roof").click()
            expect(page.locator("h1")).to_have_text("Roof")
            expect(indicator).to_have_attribute("data-subscribed", "true")
            temperature = page.locator('.chart-card[data-reading="temperature"]')
            expect(temperature).to_have_attribute("data-count", "0")
            device.publish("data", {"temperature": 21.5, "humidity": 40})
            expect(temperature.locator("[data-latest]")).to_have_text("21.5")
            expect(temperature).to_have_attribute("data-count", "1")
            humidity = page.locator('.chart-card[data-reading="humidity"]')
            expect(humidity.locator("[data-latest]")).to_have_text("40")
            device.publish("status", {"status": "low_battery", "battery_level": 15, "firmware_version": "2.1.0"})
            expect(page.locator("#device [data-field=status]")).to_have_text("Low battery")
            expect(page.locator("#device [data-field=battery]")).to_have_text("15%")
            expect(page.locator("#device [data-field=firmware]")).to_have_text("2.1.0")

            # A command from the form reaches the device; its reply shows up in the list.
            form = page.locator('form.command-form[data-command="set_interval"]')
            form.locator("input[name=seconds]").fill("120")
            form.get_by_role("button").click()
            command = device.commands.get(timeout=LIVE / 1000)
            assert command["command"] == "set_interval"
            assert command["payload"] == {"seconds": 120}
            latest = page.locator("#command-rows tr").first
            expect(latest).to_contain_text("set_interval")
            interval = page.locator('#device [data-state-field="report_interval"]')
            expect(interval).to_have_text("300 s")
            reply = {"correlation_id": command["correlation_id"], "status": "ok", "result": {}}
            device.publish("reply", reply | {"state": {"report_interval": 120}})
            expect(latest.locator("[data-field=command-status]")).to_have_text("replied")
            expect(interval).to_have_text("120 s")  # the state the device reported, live
            time.sleep(0.3)  # let the chart settle for the screenshot
            page.screenshot(path=os.path.join(shots, "device.png"), full_page=True)
        finally:
            device.stop()


@pytest.mark.slow
def test_a_fleet_pages_searches_and_filters_live_and_the_admin_lists_fit(hub, tmp_path):
    """50 plugs: the overview pages them, searches and filters by status without a reload, and keeps a
    filtered list live as devices connect; the admin's lists keep every column in view at 1280 px."""
    hubserver(hub, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "w@example.com",
              DJANGO_SUPERUSER_PASSWORD=PASSWORD)  # fmt: skip
    plugs = json.loads(hubserver(hub, "provision", "smartplug", "--count", "50", "--prefix", "plug-",
                                 "--format", "json").stdout)  # fmt: skip
    meter = json.loads(hubserver(hub, "provision", "energymeter", "meter-1", "--name", "Basement meter",
                                 "--format", "json").stdout)  # fmt: skip
    hubserver(hub, "provision", "weatherstation", "ws-1", "--name", "Roof")
    base = f"http://127.0.0.1:{hub.http_port}"
    shots = os.environ.get("HUBSERVER_SCREENSHOTS") or str(tmp_path)
    devices = []
    with browser_page() as page:
        try:
            sign_in(page, base)
            expect(page.locator("#live-indicator")).to_have_attribute("data-subscribed", "true")
            section = page.locator('.type-section[data-device-type="smartplug"]')
            rows = section.locator("tr.device-row")

            # One page of 20, and the pager.
            expect(rows).to_have_count(20)
            expect(section.locator("[data-range]")).to_have_text("1\u201320 of 50")
            expect(rows.first).to_have_attribute("data-device-id", "plug-0001")
            section.get_by_role("link", name="Next").click()
            expect(section.locator("[data-range]")).to_have_text("21\u201340 of 50")
            expect(rows.first).to_have_attribute("data-device-id", "plug-0021")
            expect(page).to_have_url(re.compile(r"\?smartplug-page=2$"))

            # A device on another page connects: the counts follow.
            devices.append(Device(plugs[44], hub.mqtt_port))
            devices[-1].connect()
            expect(section.locator("[data-count-online]")).to_have_text("1")

            # Search as you type, then the status filter, without a reload.
            page.evaluate("window.notReloaded = true")
            section.locator("[data-search]").fill("plug-004")
            expect(rows).to_have_count(10)
            expect(section.locator("[data-range]")).to_have_text("10 of 50 match.")
            section.locator("[data-search]").fill("")
            section.locator("[data-status-filter]").select_option("online")
            expect(rows).to_have_count(1)
            expect(rows.first).to_have_attribute("data-device-id", "plug-0045")
            expect(section.locator("[data-status-filter] option:checked")).to_have_text("Online (1)")

            # The filtered list stays live: a device that comes online joins it, one that leaves is dropped.
            devices.append(Device(plugs[2], hub.mqtt_port))
            devices[-1].connect()
            expect(rows).to_have_count(2)
            expect(rows.first).to_have_attribute("data-device-id", "plug-0003")
            expect(section.locator("[data-count-online]")).to_have_text("2")
            devices.pop(0).stop()
            expect(rows).to_have_count(1)
            expect(section.locator("[data-count-online]")).to_have_text("1")
            assert page.evaluate("window.notReloaded") is True
            page.screenshot(path=os.path.join(shots, "overview-fleet.png"), full_page=True)

            # The state of the URL is the state of the page.
            page.reload()
            expect(section.locator("[data-status-filter]")).to_have_value("online")
            expect(rows).to_have_count(1)

            # The admin's generated lists show every column at 1280 px, next to the filters.
            devices.append(Device(meter, hub.mqtt_port))
            devices[-1].connect()
            reading = {"import_energy": 12345.678, "export_energy": 2345.678, "active_power": -1234.56}
            reading |= {"power_l1": 1234.56, "power_l2": 1234.56, "power_l3": 1234.56, "frequency": 50.012}
            devices[-1].publish("data", reading | {"tariff": 2})
            devices[0].publish("data", {"power": 2000.5, "voltage": 231.2, "current": 8.65, "energy": 1234.567})
            for path in (
                "/admin/devicetypes/smartplugdevice/",
                "/admin/devicetypes/weatherstationdevice/",
                "/admin/devicetypes/energymeterreading/",
                "/admin/devicetypes/smartplugmessage/",
            ):
                page.goto(base + path)
                fits = page.evaluate(
                    "(() => { const box = document.querySelector('#changelist-form .results');"
                    " const table = document.querySelector('#result_list');"
                    " return [table.getBoundingClientRect().right, box.getBoundingClientRect().right,"
                    " box.scrollWidth, box.clientWidth]; })()"
                )
                table_right, box_right, scroll_width, client_width = fits
                assert table_right <= box_right + 0.5 and scroll_width <= client_width, (path, fits)
            page.goto(base + "/admin/devicetypes/smartplugdevice/")
            headers = page.locator("#result_list thead th").all_inner_texts()
            assert [h.strip().lower().replace("\n", " ") for h in headers[-3:]] == [
                "created at",
                "relay",
                "power on state",
            ]
            page.screenshot(path=os.path.join(shots, "admin-smartplugs.png"))
        finally:
            for device in devices:
                device.stop()


HISTORY = """
from datetime import timedelta
from django.utils import timezone
from hubserver.devicetypes.models import WeatherStationDevice, WeatherStationReading
from hubserver.lifecycle.rollups import upsert_readings

device = WeatherStationDevice.objects.get(device_id="ws-history")
now = timezone.now().replace(second=0, microsecond=0)
columns = ("device_id", "timestamp", "received_at", "temperature", "humidity", "pressure", "wind_speed", "rain")
rows = []
for n in range(10 * 24 * 60):  # ten days, a reading a minute, as the writer would store and roll them up
    when = now - timedelta(minutes=n)
    rows.append((device.pk, when, when, 8 + 6 * ((n // 60) % 24) / 24 + (n % 7) / 10, 50.0 + n % 5, 1013.0, 2.0, 0.0))
WeatherStationReading.objects.bulk_create(WeatherStationReading(**dict(zip(columns, row))) for row in rows)
upsert_readings(WeatherStationReading, columns, rows)
"""


@pytest.mark.slow
def test_the_device_page_draws_any_range_from_raw_readings_or_rollups(hub, tmp_path):
    """Ten days of readings a minute: each range of the picker draws from the API what fits (raw readings,
    hourly or daily aggregates with their min-max band), and Live goes back to the socket's window."""
    hubserver(hub, "createsuperuser", "--noinput", "--username", USERNAME, "--email", "w@example.com",
              DJANGO_SUPERUSER_PASSWORD=PASSWORD)  # fmt: skip
    hubserver(hub, "provision", "weatherstation", "ws-history", "--name", "Mast")
    hubserver(hub, "shell", "-c", HISTORY)
    base = f"http://127.0.0.1:{hub.http_port}"
    shots = os.environ.get("HUBSERVER_SCREENSHOTS") or str(tmp_path)
    with browser_page() as page:
        sign_in(page, base)
        page.goto(base + "/devices/weatherstation/ws-history/")
        charts = page.locator("#charts")
        temperature = page.locator('.chart-card[data-reading="temperature"]')
        expect(charts).to_have_attribute("data-range", "live")
        expect(temperature).to_have_attribute("data-count", "100")  # the live window: the latest 100

        expected = {  # range -> (what the hub chose, how many points the temperature chart has)
            "1h": ("raw", range(59, 62)),
            "24h": ("raw", range(1439, 1442)),
            "7d": ("1h", range(168, 170)),
            "30d": ("1h", range(240, 242)),
            "1y": ("1d", range(10, 13)),
        }
        for name, (bucket, points) in expected.items():
            page.click(f'#range-picker button[data-range="{name}"]')
            expect(page.locator(f'#range-picker button[data-range="{name}"]')).to_have_attribute("aria-pressed", "true")
            expect(charts).to_have_attribute("data-range", name)
            expect(charts).to_have_attribute("data-state", "drawn")
            expect(charts).to_have_attribute("data-bucket", bucket)
            expect(temperature).to_have_attribute("data-mode", "raw" if bucket == "raw" else "aggregate")
            assert int(temperature.get_attribute("data-count")) in points, (
                name,
                temperature.get_attribute("data-count"),
            )
            assert float(charts.get_attribute("data-draw-ms")) > 0
            status = page.locator("#range-status")
            expect(status).to_contain_text("readings" if bucket == "raw" else "max band")
            if name in ("24h", "7d", "1y"):
                time.sleep(0.3)  # let the charts settle for the screenshot
                page.screenshot(path=os.path.join(shots, f"device-history-{name}.png"), full_page=True)
        page.click('#range-picker button[data-range="live"]')
        expect(charts).to_have_attribute("data-range", "live")
        expect(temperature).to_have_attribute("data-mode", "live")
        expect(temperature).to_have_attribute("data-count", "100")


# The pages without a browser: permissions and what the server renders (Django's test client).

with_dashboard_urls = pytest.mark.urls("tests.dashboard_urls")


@with_dashboard_urls
def test_pages_need_a_login(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


@with_dashboard_urls
def test_only_viewable_types_are_shown_and_the_device_page_renders_charts_and_forms(client, django_user_model):
    from django.contrib.auth.models import Permission

    from hubserver import registry

    station_model, reading_model, _ = registry.get_models("weatherstation")
    plug_model = registry.get_models("smartplug")[0]
    station = station_model.objects.create(device_id="ws-1", name="Roof", battery_level=64)
    reading_model.objects.create(device=station, temperature=19.5)
    plug_model.objects.create(device_id="plug-1")
    user = django_user_model.objects.create_user("viewer", password="pw")
    user.user_permissions.add(Permission.objects.get(codename="view_weatherstationdevice"))
    client.force_login(user)

    overview = client.get("/").content.decode()
    assert "Weather stations" in overview and 'data-device-id="ws-1"' in overview and "64%" in overview
    assert "Smart plugs" not in overview
    assert client.get("/devices/smartplug/plug-1/").status_code == 403
    assert client.get("/devices/weatherstation/nope/").status_code == 404

    page = client.get("/devices/weatherstation/ws-1/")
    assert page.context["series"]["points"]["temperature"][0][1] == 19.5
    assert "not command it" in page.content.decode()  # view only: no command forms
    user.user_permissions.add(Permission.objects.get(codename="change_weatherstationdevice"))
    user = django_user_model.objects.get(pk=user.pk)
    client.force_login(user)
    html = client.get("/devices/weatherstation/ws-1/").content.decode()
    assert 'data-command="set_interval"' in html and 'data-command="reboot"' in html
    assert re.search(r'<input type="number" name="seconds" data-kind="integer" step="1" min="10" max="86400"', html)


def test_command_forms_follow_the_params_schema():
    from hubserver import Command
    from hubserver.dashboard.views import command_form

    def form(params):
        command = Command(params=params)
        command.name = "configure"
        return command_form(command)

    simple = form(
        {
            "type": "object",
            "properties": {
                "mode": {"enum": ["eco", "boost"]},
                "level": {"type": "number", "minimum": 0},
                "label": {"type": "string", "maxLength": 20},
                "enabled": {"type": "boolean"},
            },
            "required": ["mode"],
        }
    )
    assert not simple["raw"]
    kinds = {field["name"]: (field["kind"], field["required"]) for field in simple["fields"]}
    assert kinds == {
        "mode": ("enum", True),
        "level": ("number", False),
        "label": ("string", False),
        "enabled": ("boolean", False),
    }
    assert form({"type": "object"})["fields"] == [] and not form({"type": "object"})["raw"]
    assert form({"type": "object", "properties": {"at": {"type": "object"}}})["raw"]
    assert form({"type": "array"})["raw"]
    assert form({"oneOf": [{"type": "object"}, {"type": "null"}]})["raw"]


@with_dashboard_urls
def test_the_overview_section_alone_and_its_query(client, django_user_model):
    from hubserver import registry

    plug_model = registry.get_models("smartplug")[0]
    plug_model.objects.bulk_create(
        [plug_model(device_id=f"p-{n:02d}", status="online" if n % 10 == 0 else "offline") for n in range(45)]
    )
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    fragment = client.get("/?section=smartplug&smartplug-status=online&smartplug-q=p-").content.decode()
    assert fragment.lstrip().startswith('<section class="card type-section" data-device-type="smartplug"')
    assert "<html" not in fragment and "weatherstation" not in fragment
    assert re.findall(r'data-device-id="([^"]+)"', fragment) == ["p-00", "p-10", "p-20", "p-30", "p-40"]
    assert ">Online (5)</option>" in fragment and ">Any status (45)</option>" in fragment
    page_three = client.get("/?smartplug-page=3").content.decode()
    assert re.findall(r'data-device-id="(p-[^"]+)"', page_three) == [f"p-{n}" for n in range(40, 45)]
    assert "41\u201345 of 45" in page_three and 'href="?smartplug-page=2" rel="prev"' in page_three
    assert client.get("/?section=ghost").status_code == 404
    nothing = client.get("/?smartplug-q=zzz").content.decode()
    assert "No smart plugs match \u201czzz\u201d." in nothing


@with_dashboard_urls
def test_state_fields_show_their_unit(client, django_user_model):
    from hubserver import registry

    registry.get_models("weatherstation")[0].objects.create(device_id="ws-1", report_interval=60)
    client.force_login(django_user_model.objects.create_superuser("root", password="pw"))
    html = client.get("/devices/weatherstation/ws-1/").content.decode()
    assert re.search(
        r'<dd data-state-field="report_interval"><span data-state-value>60</span> <span class="unit">s</span></dd>',
        html,
    )


def test_favicon_is_served(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200 and response["Content-Type"] == "image/x-icon"
    assert b"".join(response)[:4] == b"\x00\x00\x01\x00"  # an ICO header
