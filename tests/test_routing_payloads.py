"""The device topic grammar (``hubserver.vocabulary``) and the router's payload parsing: pure functions."""

from datetime import UTC, datetime

import pytest

from hubserver.exceptions import PayloadError
from hubserver.routing.payloads import decode_object, parse_data, parse_reply, parse_status, parse_timestamp
from hubserver.vocabulary import DeviceTopic as Topic
from hubserver.vocabulary import device_topic, device_topics, inbound_kind
from hubserver.vocabulary import parse_device_topic as parse_topic
from tests.testapp.devices import Hygrometer, Thermometer

DEFAULT = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("things/thermometer/t-1/data", Topic("thermometer", "t-1", "data")),
        ("things/Thermometer/t-1/status", Topic("Thermometer", "t-1", "status")),
        ("things/thermometer/t-1/reply", Topic("thermometer", "t-1", "reply")),
        ("things/thermometer/t-1/cmd", None),  # outbound only
        ("things/thermometer/t-1", None),
        ("things/thermometer/t-1/data/extra", None),
        ("things/thermometer//data", None),
        ("things/thermo-meter/t-1/data", None),
        ("other/thermometer/t-1/data", None),
        ("thingsX/thermometer/t-1/data", None),
        ("things/thermometer/" + "x" * 300 + "/data", None),
    ],
)
def test_parse_topic(topic, expected):
    assert parse_topic(topic, "things") == expected


def test_parse_topic_with_a_prefix_containing_slashes():
    topic = device_topic("acme/site-1", "hygrometer", "h1", "data")
    assert topic == "acme/site-1/hygrometer/h1/data"
    assert parse_topic(topic, "acme/site-1") == Topic("hygrometer", "h1", "data")
    assert parse_topic(topic, "acme") is None


def test_a_devices_own_topics_and_the_kind_of_one_it_publishes_to():
    topics = device_topics("things", "thermometer", "t-1")
    assert topics == {kind: f"things/thermometer/t-1/{kind}" for kind in ("data", "status", "cmd", "reply")}
    base = "things/thermometer/t-1/"
    assert [inbound_kind(topics[kind], base) for kind in ("data", "status", "reply", "cmd")] == [
        "data",
        "status",
        "reply",
        None,
    ]
    assert inbound_kind("things/thermometer/t-2/data", base) is None
    assert inbound_kind("things/thermometer/t-1/data/x", base) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-15T12:00:00+00:00", datetime(2025, 1, 15, 12, tzinfo=UTC)),
        ("2025-01-15T12:00:00Z", datetime(2025, 1, 15, 12, tzinfo=UTC)),
        ("2025-01-15T14:00:00+02:00", datetime(2025, 1, 15, 12, tzinfo=UTC)),
        ("2025-01-15T12:00:00", datetime(2025, 1, 15, 12, tzinfo=UTC)),  # naive means UTC
        ("yesterday", None),
        (1736942400, None),
        (None, None),
    ],
)
def test_parse_timestamp(value, expected):
    parsed = parse_timestamp(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "must be a JSON object, got a list"),
        (b'"text"', "got a string"),
        (b"", "invalid JSON"),
        (b'{"label": "a\\u0000b"}', "NUL"),
    ],
)
def test_decode_object_rejects(payload, message):
    with pytest.raises(PayloadError, match=message):
        decode_object(payload)


def test_flat_format_validates_declared_readings_and_ignores_the_rest():
    parsed = parse_data(
        Thermometer,
        {"temperature": 21, "uptime": 3.0, "door_open": True, "label": "x", "pressure": 1013, "mode": "manual"},
        DEFAULT,
    )
    assert parsed.readings == {"temperature": 21.0, "uptime": 3, "door_open": True, "label": "x"}
    assert type(parsed.readings["temperature"]) is float
    assert type(parsed.readings["uptime"]) is int
    assert parsed.errors == []
    assert parsed.timestamp == DEFAULT


def test_readings_list_format():
    parsed = parse_data(
        Hygrometer,
        {
            "readings": [{"type": "temperature", "value": -70}, {"type": "humidity", "value": 80.1}, {"type": "co2"}],
            "timestamp": "2029-12-31T12:00:00+00:00",
        },
        DEFAULT,
    )
    assert parsed.readings == {"temperature": -70.0, "humidity": 80.1}
    assert parsed.errors == []
    assert parsed.timestamp == datetime(2029, 12, 31, 12, tzinfo=UTC)


def test_invalid_values_are_reported_per_field():
    parsed = parse_data(
        Thermometer, {"temperature": 120, "uptime": "long", "door_open": 1, "label": "ok", "timestamp": "?"}, DEFAULT
    )
    assert parsed.readings == {"label": "ok"}
    assert len(parsed.errors) == 3
    assert [e.split(":")[0] for e in parsed.errors] == ["temperature", "uptime", "door_open"]
    assert parsed.timestamp == DEFAULT


def test_malformed_readings_list_entries():
    parsed = parse_data(
        Thermometer, {"readings": [1, {"value": 2}, {"type": "temperature"}, {"type": "uptime", "value": 5}]}, DEFAULT
    )
    assert parsed.readings == {"uptime": 5}
    assert parsed.errors[:2] == [
        "readings[0]: expected an object with a string 'type' and a 'value'",
        "readings[1]: expected an object with a string 'type' and a 'value'",
    ]
    assert parsed.errors[2] == "temperature: missing 'value'"
    assert parse_data(Thermometer, {"readings": {"temperature": 1}}, DEFAULT).errors == [
        "readings: expected a list, got an object"
    ]


def test_null_means_no_value_and_integers_must_fit_64_bits():
    parsed = parse_data(Thermometer, {"temperature": None, "uptime": 2**64 - 1}, DEFAULT)
    assert parsed.readings == {}
    assert parsed.errors == [f"uptime: {2**64 - 1} does not fit a 64-bit integer"]


def test_status_payload():
    parsed = parse_status({"status": "online", "battery": 85.5, "firmware_version": "2.1.0", "extra": 1})
    assert parsed.fields == {"status": "online", "battery_level": 85.5, "firmware_version": "2.1.0"}
    assert parsed.errors == []
    assert parse_status({"battery_level": 10, "battery": 90}).fields == {"battery_level": 10.0}


def test_status_payload_errors():
    parsed = parse_status({"status": "asleep", "battery_level": 101, "firmware_version": 2})
    assert parsed.fields == {}
    assert [e.split(":")[0] for e in parsed.errors] == ["status", "battery_level", "firmware_version"]
    assert parse_status({"battery": True}).errors == ["battery: expected a number from 0 to 100, got True"]


def test_reply_payload():
    reply = parse_reply({"correlation_id": "abc", "status": "ok", "result": {"x": 1}})
    assert (reply.correlation_id, reply.status, reply.result, reply.errors) == ("abc", "ok", {"x": 1}, [])
    assert parse_reply({"status": "ok"}).errors == ["correlation_id: expected a string of 1 to 64 characters"]


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2030-01-01T02:00:00Z"])
def test_a_timestamp_outside_the_window_around_the_receive_time_is_refused(stamp):
    """A device cannot plant a reading that always sorts newest (or oldest): the receive time is used and
    the message says why (TIMESTAMP_MAX_PAST ten years, TIMESTAMP_MAX_FUTURE 1 hour)."""
    parsed = parse_data(Thermometer, {"temperature": 20.5, "timestamp": stamp}, DEFAULT)
    assert parsed.readings == {"temperature": 20.5}
    assert parsed.timestamp == DEFAULT
    assert len(parsed.errors) == 1 and parsed.errors[0].startswith("timestamp:")


def test_a_timestamp_inside_the_window_is_kept():
    parsed = parse_data(Thermometer, {"temperature": 20.5, "timestamp": "2029-12-20T00:00:00Z"}, DEFAULT)
    assert (parsed.timestamp, parsed.errors) == (datetime(2029, 12, 20, tzinfo=UTC), [])


@pytest.mark.parametrize("number", [b"1e-400", b"-2.5E-999", b"1e400"])
def test_a_number_no_float_holds_is_an_error_not_zero(number):
    obj = decode_object(b'{"temperature": ' + number + b', "uptime": 7}')
    parsed = parse_data(Thermometer, obj, DEFAULT)
    assert parsed.readings == {"uptime": 7}, "the other readings are kept"
    assert parsed.errors == [f"temperature: {number.decode()} is beyond what a 64-bit float holds"]


def test_ordinary_exponents_still_parse():
    obj = decode_object(b'{"temperature": 2.5e1, "uptime": 1e2, "label": "e-400"}')
    assert obj == {"temperature": 25.0, "uptime": 100.0, "label": "e-400"}


def test_a_payload_with_such_a_number_stays_storable_as_json():
    import json

    obj = decode_object(b'{"note": 1e310, "temperature": 20}')
    assert json.loads(json.dumps(obj)) == {"note": "1e310", "temperature": 20}
