"""The device simulator: values, state changes, the engine against an in-process hub, and the command line
against a real ``hubserver run``."""

import asyncio
import io
import itertools
import json
import math
import random
import sqlite3
import statistics
import subprocess

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command

from hubserver import Reading, registry
from hubserver.simulator import Simulator, Target, simulated_device_ids
from hubserver.simulator.display import Display, format_values
from hubserver.simulator.profiles import mains_powered, profile_for
from hubserver.simulator.state import apply_command, initial_state
from hubserver.simulator.values import ReadingValues, ValueSource
from tests.mqtt import until
from tests.test_run import BINARY, environment, running  # noqa: F401  (the ``running`` fixture)


def reading(value_type, **kwargs):
    made = Reading(value_type, **kwargs)
    made.name = "r"
    return made


# -- values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("realistic", [False, True])
def test_values_stay_within_declared_ranges_and_types(realistic):
    rng = random.Random(7)
    for declared in (
        reading(float, min_value=-60, max_value=70),
        reading(float, min_value=0, max_value=0.5),
        reading(int, min_value=1, max_value=4),
        reading(float, min_value=0, unit="kWh"),
        reading(float),
    ):
        source = ValueSource(declared, realistic=realistic, rng=rng)
        values = [source.next() for _ in range(2000)]
        assert all(isinstance(v, declared.value_type) and not isinstance(v, bool) for v in values)
        for value in values:
            declared.validate(value)  # raises if out of range
    assert {ValueSource(reading(bool), rng=rng).next() for _ in range(50)} == {True, False}
    assert all(isinstance(ValueSource(reading(str), realistic, rng).next(), str) for _ in range(10))


def test_realistic_values_walk_smoothly_and_counters_only_grow():
    rng = random.Random(1)
    temperature = ValueSource(reading(float, min_value=-60, max_value=70), realistic=True, rng=rng)
    walk = [temperature.next() for _ in range(500)]
    assert max(abs(b - a) for a, b in itertools.pairwise(walk)) < 130 * 0.15
    plain = ValueSource(reading(float, min_value=-60, max_value=70), realistic=False, rng=rng)
    jumps = [plain.next() for _ in range(500)]
    assert max(abs(b - a) for a, b in itertools.pairwise(jumps)) > 130 * 0.5
    energy = ValueSource(reading(float, min_value=0, unit="kWh"), realistic=True, rng=rng)
    counter = [energy.next() for _ in range(200)]
    assert counter == sorted(counter)


CATALOGUE = ("weatherstation", "smartplug", "gpstracker", "energymeter")


def reports(type_name, count, interval, state=None, seed=5):
    values = ReadingValues(registry.get(type_name), realistic=True, rng=random.Random(seed), interval=interval)
    return [values.next(state) for _ in range(count)]


def test_every_catalogue_reading_has_a_realistic_profile_and_stays_valid():
    for type_name in CATALOGUE:
        device_type = registry.get(type_name)
        readings = device_type._readings
        generic = [n for n, r in readings.items() if profile_for(n, r, readings, random.Random(1)) is None]
        assert generic == [], f"{type_name}: no realistic profile for {generic}"
        for row in reports(type_name, 2000, interval=5, state={"relay": "on"}):
            for name, value in row.items():
                readings[name].validate(value)


def test_weather_is_plausible():
    day = reports("weatherstation", 288 * 7, interval=300)  # a week of five-minute reports
    rain = [row["rain"] for row in day]
    assert all(value == round(round(value / 0.2) * 0.2, 1) for value in rain), "a gauge counts 0.2 mm tips"
    assert max(rain) <= 10, "no more than 10 mm in five minutes"
    assert 0 < sum(rain) < 400, "some rain in a week, not a flood"
    assert sum(1 for value in rain if value == 0) > len(rain) / 2, "mostly dry"
    fast = [row["rain"] for row in reports("weatherstation", 1000, interval=2)]
    assert sum(fast) < 5, "reported every 2 s, rain accumulates slowly"
    # Reported every 2 s for an hour, the weather changes as much as in an hour, not as in 1,800 reports.
    hour = reports("weatherstation", 1800, interval=2)
    for name, step, span in (("temperature", 0.5, 8), ("wind_speed", 3, 15), ("pressure", 0.5, 10)):
        values = [row[name] for row in hour]
        assert max(abs(b - a) for a, b in itertools.pairwise(values)) < step, name
        assert max(values) - min(values) < span, name
    wind = [row["wind_speed"] for row in reports("weatherstation", 20_000, interval=60)]
    assert sum(1 for value in wind if value > 24.5) < len(wind) / 500, "storm force is rare"
    assert 2 < statistics.median(wind) < 8
    temperature = [row["temperature"] for row in day]
    assert max(abs(b - a) for a, b in itertools.pairwise(temperature)) < 2.5
    assert min(temperature) > -30 and max(temperature) < 45
    pressure = [row["pressure"] for row in day]
    assert min(pressure) > 940 and max(pressure) < 1070


def test_a_plug_draws_what_its_appliance_does_and_counts_it():
    on = reports("smartplug", 500, interval=10, state={"relay": "on"})
    for row in on:
        assert 220 < row["voltage"] < 240
        assert row["current"] == pytest.approx(row["power"] / row["voltage"], abs=0.01)
    for before, after in itertools.pairwise(on):
        assert after["energy"] - before["energy"] == pytest.approx(after["power"] * 10 / 3_600_000, abs=0.002)
    assert max(row["power"] for row in on) > 5
    off = reports("smartplug", 100, interval=10, state={"relay": "off"})
    assert {row["power"] for row in off} == {0.0} and {row["current"] for row in off} == {0.0}
    assert len({row["energy"] for row in off}) == 1
    # Switched on, it powers what it is plugged into at once (several seeds: never the standby draw).
    for seed in range(20):
        values = ReadingValues(registry.get("smartplug"), realistic=True, rng=random.Random(seed), interval=10)
        state = {"relay": "off"}
        values.next(state)
        state["relay"] = "on"
        assert values.next(state)["power"] >= 5


def test_a_tracker_moves_at_its_speed_and_parks():
    rows = reports("gpstracker", 2000, interval=10)
    for before, after in itertools.pairwise(rows):
        if not after["moving"]:
            assert after["speed"] == 0
            assert (after["latitude"], after["longitude"]) == (before["latitude"], before["longitude"])
        else:
            scale = math.cos(math.radians(after["latitude"]))
            metres = 111_320 * math.dist(
                (after["latitude"], after["longitude"] * scale), (before["latitude"], before["longitude"] * scale)
            )
            assert metres == pytest.approx(after["speed"] / 3.6 * 10, abs=2)
    assert {True, False} == {row["moving"] for row in rows}


def test_a_meter_sums_its_phases_and_counts_imported_energy():
    rows = reports("energymeter", 500, interval=60)
    for row in rows:
        assert row["active_power"] == pytest.approx(row["power_l1"] + row["power_l2"] + row["power_l3"], abs=0.02)
        assert 49.8 < row["frequency"] < 50.2
    imported = [row["import_energy"] for row in rows]
    assert imported == sorted(imported) and imported[-1] > imported[0]


def test_only_battery_powered_types_report_a_battery():
    powered = {name: mains_powered(registry.get(name)._readings) for name in ("smartplug", "energymeter")}
    assert powered == {"smartplug": True, "energymeter": True}
    for name in ("weatherstation", "gpstracker", "thermometer"):
        assert not mains_powered(registry.get(name)._readings), name


def test_state_changes_from_commands():
    plug = registry.get("smartplug")
    state = initial_state(plug)
    assert state == {"relay": "off", "power_on_state": "last"}
    assert apply_command(plug, state, {"state": "on"}) == {"relay": "on"}
    assert apply_command(plug, state, {"state": "toggle"}) == {"relay": "off"}
    station = registry.get("weatherstation")
    state = initial_state(station)
    assert apply_command(station, state, {"seconds": 60}) == {"report_interval": 60}
    tracker = registry.get("gpstracker")
    state = initial_state(tracker)
    assert apply_command(tracker, state, {"mode": "tracking"}) == {"mode": "tracking"}
    assert apply_command(tracker, state, {"mode": "warp"}) == {}  # invalid values are not applied


async def test_simulated_plugs_announce_their_relay_and_switch_it(hub):
    plug = registry.get("smartplug")
    device_model = plug.get_models()[0]
    simulator = Simulator(
        plug, count=6, interval=0.3, realistic=True, target=Target("127.0.0.1", hub.engine.port), seed=4
    )
    run = asyncio.create_task(simulator.run(duration=30))
    try:
        await until(lambda: simulator.devices and all(d.connected for d in simulator.devices), message="connections")
        relays = {d.device_id: d.state["relay"] for d in simulator.devices}
        assert set(relays.values()) == {"on", "off"}, "a fleet starts with some relays on, some off"

        async def stored():
            return {d["device_id"]: d["relay"] for d in await rows(device_model, device_id__startswith="sim-")}

        await until_async(lambda: stored(), relays)
        batteries = {d["battery_level"] for d in await rows(device_model, device_id__startswith="sim-")}
        assert batteries == {None}, "a mains-powered plug reports no battery level"
        off = next(device_id for device_id, relay in relays.items() if relay == "off")
        command = {"command": "switch", "payload": {"state": "on"}, "correlation_id": "c-1"}
        await hub.engine.publish(f"things/smartplug/{off}/cmd", json.dumps(command).encode(), qos=1)
        await until_async(lambda: stored(), {**relays, off: "on"})
    finally:
        simulator.stop()
        await run


async def until_async(read, expected, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (value := await read()) != expected:
        assert loop.time() < deadline, f"{value} != {expected}"
        await asyncio.sleep(0.05)


def test_device_ids_are_zero_padded():
    assert simulated_device_ids("sim-", 3) == ["sim-0001", "sim-0002", "sim-0003"]
    assert simulated_device_ids("x", 12345)[-1] == "x12345"


def test_reading_values_cover_every_reading():
    values = ReadingValues(registry.get("thermometer"), realistic=True).next()
    assert set(values) == {"temperature", "uptime", "door_open", "label"}


# -- the engine against an in-process hub -----------------------------------------------------------------


@database_sync_to_async
def rows(model, **filters):
    return list(model.objects.filter(**filters).values())


@pytest.mark.slow  # simulated devices publish for a few seconds
async def test_simulated_devices_publish_realistic_readings_and_answer_commands(hub):
    thermometer = registry.get("thermometer")
    device_model, reading_model, message_model = thermometer.get_models()
    simulator = Simulator(
        thermometer,
        count=2,
        interval=0.2,
        realistic=True,
        prefix="sim-",
        target=Target("127.0.0.1", hub.engine.port),
        seed=3,
    )
    run = asyncio.create_task(simulator.run(duration=30))
    try:
        await until(lambda: simulator.devices and all(d.connected for d in simulator.devices), message="connections")
        await asyncio.sleep(2)
        devices = await rows(device_model, device_id__startswith="sim-")
        assert sorted(d["device_id"] for d in devices) == ["sim-0001", "sim-0002"]
        assert all(d["status"] == "online" for d in devices)
        assert all(60 <= d["battery_level"] <= 100 for d in devices), "a battery-powered sensor reports its level"

        # A command on the device's cmd topic is answered on its reply topic, correlated.
        command = {"command": "set_mode", "payload": {"mode": "manual"}, "correlation_id": "corr-42"}
        await hub.engine.publish("things/thermometer/sim-0001/cmd", json.dumps(command).encode(), qos=1)
        replies = []

        async def reply_stored():
            replies[:] = await rows(message_model, topic="things/thermometer/sim-0001/reply")
            return bool(replies)

        for _ in range(200):
            if await reply_stored():
                break
            await asyncio.sleep(0.05)
        assert replies, "the reply was not stored"
        reply = replies[0]
        assert reply["direction"] == "inbound" and reply["correlation_id"] == "corr-42"
        assert reply["payload_json"]["status"] == "ok"
        assert reply["payload_json"]["result"]["changed"] == {"mode": "manual"}
        assert simulator.devices[0].state["mode"] == "manual"
        # The reply carries the device's state, which the hub stores.
        assert reply["payload_json"]["state"] == {"mode": "manual", "setpoint": 21.0}
        assert (await rows(device_model, device_id="sim-0001"))[0]["mode"] == "manual"

        # An undeclared command gets an error reply, still correlated.
        bad = {"command": "self_destruct", "payload": {}, "correlation_id": "corr-43"}
        await hub.engine.publish("things/thermometer/sim-0001/cmd", json.dumps(bad).encode(), qos=1)
        await until(lambda: simulator.devices[0].commands == 2, message="second answer")
    finally:
        simulator.stop()
        await run

    totals = simulator.totals()
    assert totals["sent"] >= 10 and totals["acked"] >= 10 and totals["commands"] == 2
    await hub.router.flush()
    readings = await rows(reading_model, device__device_id__startswith="sim-")
    assert len(readings) >= 10
    assert {r["device_id"] for r in readings} == {d["id"] for d in devices}
    for row in readings:
        for name, declared in thermometer._readings.items():
            assert row[name] is not None
            declared.validate(row[name])  # within the declared range
    failed = await rows(message_model, processing_status="failed")
    assert failed == []
    # A clean stop says offline.
    devices = await rows(device_model, device_id__startswith="sim-")
    assert all(d["status"] == "offline" for d in devices)


async def test_an_unreachable_broker_is_reported_not_fatal(transactional_db):
    from tests.mqtt import free_port

    simulator = Simulator(
        registry.get("hygrometer"), count=1, interval=0.2, target=Target("127.0.0.1", free_port()), prefix="gone-"
    )
    await simulator.run(duration=0.5)
    assert not simulator.ever_connected
    assert "cannot connect" in simulator.snapshot()[0]["error"]


async def test_rotated_credentials_are_refused_and_shown(hub):
    """Another simulator with the same prefix takes the devices over: the first one's secrets stop working."""
    first = Simulator(registry.get("hygrometer"), count=1, interval=0.2, target=Target("127.0.0.1", hub.engine.port))
    run = asyncio.create_task(first.run(duration=30))
    try:
        await until(lambda: first.devices and first.devices[0].connected, message="connection")
        second = Simulator(
            registry.get("hygrometer"), count=1, interval=0.2, target=Target("127.0.0.1", hub.engine.port)
        )
        await database_sync_to_async(second.provision)()
        await until(lambda: not first.devices[0].connected, message="the rotated device to be dropped")
        await until(lambda: "refused" in first.devices[0].last_error, message="the refusal")
    finally:
        first.stop()
        await run


def test_display_renders_a_table_and_plain_lines(db):
    simulator = Simulator(registry.get("thermometer"), count=2, target=Target("127.0.0.1", 1))
    simulator.provision()
    from hubserver.simulator.device import SimulatedDevice

    simulator.devices = [
        SimulatedDevice(simulator.device_type, info, simulator.target) for info in simulator.connections
    ]
    simulator.devices[0].connected = simulator.devices[0].ever_connected = True
    simulator.devices[0].sent = 5
    simulator.devices[0].last_values = {"temperature": 21.5, "door_open": False}
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    console.print(Display(simulator, io.StringIO(), live=True).table())
    text = console.file.getvalue()
    assert "sim-0001" in text and "sim-0002" in text and "temperature=21.5" in text and "1/2 connected" in text
    lines = Display(simulator, io.StringIO(), live=False).summary()
    assert lines[0].startswith("sim-0001: ran; sent 5") and "never connected" in lines[1]
    assert format_values({"a": 1.0, "b": True}) == "a=1 b=true"


# -- the command line -------------------------------------------------------------------------------------


def test_command_refuses_unknown_types_and_brokers(db):
    with pytest.raises(CommandError, match="unknown device type"):
        call_command("simulate", "toaster", stdout=io.StringIO())
    with pytest.raises(CommandError, match="unknown broker"):
        call_command("iot_simulate", "thermometer", "--broker", "lora", stdout=io.StringIO())


def test_command_fails_when_no_device_can_connect(db):
    from tests.mqtt import free_port

    out = io.StringIO()
    with pytest.raises(CommandError, match="no simulated device could connect"):
        call_command(
            "simulate", "thermometer", "--duration", "0.3", "--interval", "0.1", "--port", str(free_port()), stdout=out
        )
    assert "simulating 1 thermometer device(s)" in out.getvalue()


def test_iot_provision_is_bulk_provisioning(db):
    out = io.StringIO()
    call_command(
        "iot_provision",
        "hygrometer",
        "--count",
        "2",
        "--prefix",
        "h-",
        "--format",
        "json",
        stdout=out,
        stderr=io.StringIO(),
    )
    infos = json.loads(out.getvalue())
    assert [info["device_id"] for info in infos] == ["h-0001", "h-0002"]
    from hubserver.access import verify_secret

    model = registry.get_models("hygrometer")[0]
    assert verify_secret(model.objects.get(device_id="h-0002").mqtt_password_hash, infos[1]["mqtt_password"])


@pytest.mark.slow  # a hub process and the simulator's
def test_hubserver_simulate_against_a_running_hub(running):  # noqa: F811
    hub = running()
    result = subprocess.run(
        [
            BINARY,
            "simulate",
            "weatherstation",
            "--count",
            "1",
            "--interval",
            "0.2",
            "--duration",
            "2",
            "--port",
            str(hub.mqtt_port),
            "--realistic",
        ],
        env=environment(hub.data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sim-0001: ran" in result.stdout
    assert hub.stop() == 0
    with sqlite3.connect(hub.data_dir / "hubserver.sqlite3") as db:
        count = db.execute(
            "SELECT COUNT(*) FROM devicetypes_weatherstationreading r JOIN devicetypes_weatherstationdevice d "
            "ON r.device_id = d.id WHERE d.device_id = 'sim-0001' AND r.pressure BETWEEN 800 AND 1100"
        ).fetchone()[0]
    assert count >= 5
