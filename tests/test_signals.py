"""The seven signals carry the documented arguments to sync and async receivers alike."""

import pytest

from hubserver import signals
from tests.testapp.devices import Hygrometer, Thermometer

DOCUMENTED = {
    "device_data_received": {"device", "readings", "message"},
    "device_status_changed": {"device", "old_status", "new_status"},
    "device_state_changed": {"device", "changes", "message"},
    "device_connected": {"device"},
    "device_disconnected": {"device"},
    "device_command_sent": {"device", "command", "payload"},
    "device_provisioned": {"device", "credentials"},
}


def test_there_are_exactly_seven_signals():
    from django.dispatch import Signal

    names = {name for name, value in vars(signals).items() if isinstance(value, Signal)}
    assert names == set(DOCUMENTED)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
async def test_sync_and_async_receivers_get_the_arguments(name):
    signal = getattr(signals, name)
    received = []

    def sync_receiver(sender, **kwargs):
        received.append(("sync", sender, set(kwargs) - {"signal"}))

    async def async_receiver(sender, **kwargs):
        received.append(("async", sender, set(kwargs) - {"signal"}))

    signal.connect(sync_receiver, sender=Thermometer)
    signal.connect(async_receiver, sender=Thermometer)
    try:
        kwargs = dict.fromkeys(DOCUMENTED[name], "x")
        await signal.asend(sender=Thermometer, **kwargs)
        await signal.asend(sender=Hygrometer, **kwargs)  # filtered out by sender
        assert sorted(received) == [("async", Thermometer, DOCUMENTED[name]), ("sync", Thermometer, DOCUMENTED[name])]
    finally:
        signal.disconnect(sync_receiver, sender=Thermometer)
        signal.disconnect(async_receiver, sender=Thermometer)


def test_sync_send_reaches_async_receivers_too():
    received = []

    async def async_receiver(sender, device, readings, message, **kwargs):
        received.append((sender, device, readings, message))

    signals.device_data_received.connect(async_receiver, sender=Thermometer)
    try:
        signals.device_data_received.send(sender=Thermometer, device="d", readings={"t": 1}, message="m")
    finally:
        signals.device_data_received.disconnect(async_receiver, sender=Thermometer)
    assert received == [(Thermometer, "d", {"t": 1}, "m")]
