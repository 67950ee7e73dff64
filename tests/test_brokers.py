"""BROKERS: each entry's ENGINE is loaded and checked (at start-up and by ``hubserver check``), the hub runs
every engine behind ``BaseBroker``, and a type's commands go through the engine its ``Meta.broker`` names."""

import json

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from hubserver.brokers.loading import check_brokers
from hubserver.conf import EMBEDDED_ENGINE
from hubserver.hub import Hub, running_hub
from tests.conftest import provision_device
from tests.mqtt import free_port, until
from tests.testapp.devices import Thermometer
from tests.testapp.models import ThermometerMessage

RECORDING = "tests.engines.RecordingBroker"


def problems(brokers):
    with override_settings(HUBSERVER={"BROKERS": brokers}):
        found = check_brokers()
        return found.problems + found.unavailable


@pytest.mark.parametrize(
    ("brokers", "named", "says"),
    [
        ({"default": {"ENGINE": "tests.nowhere.Engine"}}, "['default']['ENGINE']", "cannot import"),
        ({"default": {"ENGINE": "hubserver.routing.MessageRouter"}}, "['default']['ENGINE']", "is not a"),
        ({"default": {"ENGINE": EMBEDDED_ENGINE, "HOST": "x"}}, "['default']['HOST']", "does not use HOST"),
        ({"default": {"ENGINE": RECORDING, "KEEPALIVE": 5}}, "['default']['KEEPALIVE']", "does not use KEEPALIVE"),
        ({"default": {"ENGINE": EMBEDDED_ENGINE}, "b": {"ENGINE": EMBEDDED_ENGINE}}, "'b'", "once per process"),
        ({"lorawan": {"ENGINE": EMBEDDED_ENGINE}}, "Thermometer.Meta.broker", "'default'"),
    ],
)
def test_a_broker_entry_the_hub_cannot_run_is_refused_naming_the_broker_and_key(brokers, named, says):
    found = problems(brokers)
    assert any(named in problem and says in problem for problem in found), found


def test_the_default_and_a_second_engine_with_the_keys_it_reads_are_accepted():
    assert problems({"default": {"ENGINE": EMBEDDED_ENGINE}}) == []
    assert problems({"default": {"ENGINE": EMBEDDED_ENGINE}, "lab": {"ENGINE": RECORDING, "HOST": "h"}}) == []


def test_start_up_and_hubserver_check_refuse_it_too(db):
    with override_settings(HUBSERVER={"BROKERS": {"default": {"ENGINE": "tests.nowhere.Engine"}}}):
        with pytest.raises(ImproperlyConfigured, match=r"\['default'\]\['ENGINE'\]: cannot import"):
            Hub()
        with pytest.raises(SystemCheckError, match=r"hubserver.E001.*cannot import"):
            call_command("check")
    call_command("check")  # the default settings pass


def test_an_external_entry_runs_the_external_engine(db, capsys):
    """An entry without ENGINE (only HOST and PORT, the classic configuration) is an external broker: the hub
    builds MQTTBroker for it, and ``hubserver check`` has nothing to say."""
    from hubserver.brokers.mqtt import MQTTBroker

    brokers = {"default": {"HOST": "emqx", "PORT": 1883}}
    with override_settings(HUBSERVER={"BROKERS": brokers}):
        hub = Hub()
        assert isinstance(hub.brokers["default"], MQTTBroker)
        assert (hub.brokers["default"].address.host, hub.brokers["default"].address.port) == ("emqx", 1883)
        call_command("check")
    assert "hubserver.W001" not in capsys.readouterr().err


@pytest.fixture
async def two_engine_hub(transactional_db, monkeypatch):
    """The embedded engine as "default" and a RecordingBroker as "lab"; Thermometer's commands go to "lab"."""
    monkeypatch.setattr(Thermometer._meta, "broker", "lab")
    lab = {"ENGINE": RECORDING, "HOST": "lab.example", "DYNAMIC_SECURITY": False}  # no accounts kept on it
    brokers = {"default": {"ENGINE": EMBEDDED_ENGINE}, "lab": lab}
    with override_settings(HUBSERVER={"BROKERS": brokers}):
        hub = Hub(embedded={"host": "127.0.0.1", "port": free_port()})
        await hub.start()
        try:
            yield hub
        finally:
            await hub.stop()


async def test_the_hub_runs_every_engine_and_feeds_their_messages_to_one_router(two_engine_hub):
    hub = two_engine_hub
    lab = hub.brokers["lab"]
    assert running_hub() is hub and hub.engine is hub.brokers["default"]
    assert (lab.hub, lab.name, lab.settings["HOST"], lab.calls) == (hub, "lab", "lab.example", ["start"])
    await provision_device("thermometer", "t-lab")

    result = await lab.device_message("data", "thermometer", "t-lab", b'{"temperature": 19.5}')
    assert result.stored and result.readings == {"temperature": 19.5}
    message = await database_sync_to_async(ThermometerMessage.objects.get)(pk=result.message_id)
    assert message.topic == "things/thermometer/t-lab/data"  # the Message row names the topic it stands for

    await hub.stop()
    assert lab.calls == ["start", "stop"]
    assert running_hub() is None


async def test_commands_go_through_the_engine_meta_broker_names_and_revocation_reaches_it(two_engine_hub):
    hub = two_engine_hub
    lab = hub.brokers["lab"]
    device, credentials = await provision_device("thermometer", "t-lab")
    lab.online.add(credentials["mqtt_username"])

    message = await Thermometer.asend_command(device, "set_mode", {"mode": "manual"})
    await until(lambda: lab.published, message="the command to reach the lab engine")
    ((client_id, topic, payload, qos, correlation_id),) = lab.published
    expected = (credentials["mqtt_username"], "things/thermometer/t-lab/cmd", Thermometer._commands["set_mode"].qos)
    assert (client_id, topic, qos) == expected
    assert correlation_id == message.correlation_id == json.loads(payload)["correlation_id"]

    await provision_device("thermometer", "t-lab")  # provisioning again rotates the credentials
    await until(lambda: lab.ended, message="the lab engine to end the session")
    assert lab.ended == [credentials["mqtt_username"]]
