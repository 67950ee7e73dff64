"""HUBSERVER settings: defaults, validation naming the key, caching and reload on override_settings."""

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from hubserver.conf import EMBEDDED_ENGINE, EXTERNAL_ENGINE, hub_settings, validate


def test_defaults():
    values = validate({})
    assert values["TOPIC_PREFIX"] == "things"
    assert values["AUTO_ADMIN"] is True and values["AUTO_API"] is True
    assert values["BROKERS"]["default"]["ENGINE"] == EMBEDDED_ENGINE
    assert values["MAX_PAYLOAD_SIZE"] == 256 * 1024


def test_seed_minimal_broker_config_is_completed_with_defaults():
    values = validate({"BROKERS": {"default": {"HOST": "localhost", "PORT": 1883}}, "TOPIC_PREFIX": "myproject"})
    broker = values["BROKERS"]["default"]
    assert broker["ENGINE"] == EXTERNAL_ENGINE
    assert broker["KEEPALIVE"] == 60 and broker["USE_SHARED_SUBSCRIPTIONS"] is True


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"TOPIC_PREFX": "x"}, "TOPIC_PREFX"),
        ({"AUTO_ADMIN": "yes"}, "AUTO_ADMIN"),
        ({"MAX_PAYLOAD_SIZE": True}, "MAX_PAYLOAD_SIZE"),
        ({"ANONYMOUS_DENY": "a/#"}, "ANONYMOUS_DENY"),
        ({"BROKERS": {"default": {"PORT": "1883"}}}, "['default']['PORT']"),
        ({"BROKERS": {"default": {"HOSTNAME": "x"}}}, "HOSTNAME"),
        ({"TOPIC_PREFIX": "things/#"}, "TOPIC_PREFIX"),
        ({"WRITER_BATCH_SIZE": 0}, "WRITER_BATCH_SIZE"),
        ({"METRICS_ALLOWED_NETWORKS": ["172.16.0.0/33"]}, "METRICS_ALLOWED_NETWORKS"),
        ({"PUBLIC_MQTT_PORT": 70000}, "PUBLIC_MQTT_PORT"),
    ],
)
def test_invalid_settings_name_the_key(user, named):
    with pytest.raises(ImproperlyConfigured) as caught:
        validate(user)
    assert named in str(caught.value)


def test_cached_and_reloaded_on_override_settings():
    assert hub_settings.TOPIC_PREFIX == "things"
    with override_settings(HUBSERVER={"TOPIC_PREFIX": "plant1"}):
        assert hub_settings.TOPIC_PREFIX == "plant1"
    assert hub_settings.TOPIC_PREFIX == "things"


def test_invalid_override_raises_on_access():
    with override_settings(HUBSERVER={"NOPE": 1}), pytest.raises(ImproperlyConfigured, match="NOPE"):
        hub_settings.TOPIC_PREFIX  # noqa: B018
    assert hub_settings.TOPIC_PREFIX == "things"


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        hub_settings.NOT_A_SETTING  # noqa: B018


def test_every_environment_variable_of_the_binary_is_documented():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    read = set()
    for source in (root / "settings").glob("*.py"):
        read |= set(re.findall(r"[\"'](HUBSERVER_[A-Z0-9_]+|DATABASE_URL)[\"']", source.read_text()))
    doc = (root / "docs" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", doc, flags=re.MULTILINE))
    assert sorted(read - rows) == [], "add a row to docs/configuration.md for each"
    assert sorted(rows - read) == [], "docs/configuration.md documents variables nobody reads"
    readme = (root / "README.md").read_text()
    assert "(docs/configuration.md)" in readme
