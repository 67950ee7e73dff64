"""Many devices connecting at once, with real paho clients: their CONNECTs share device lookups, and every
one of them still gets exactly its own identity and nobody else's (bench/storm.py measures the speed)."""

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async

from hubserver.access import authenticate as authenticate_module
from tests.conftest import provision_device

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]  # a storm of connections


@pytest.fixture
def slow_lookups(monkeypatch):
    """Every device query takes 0.3 s longer, so CONNECTs arriving meanwhile gather for the next one."""
    real = authenticate_module._find_devices
    sizes = []

    def slow(keys):
        time.sleep(0.3)
        sizes.append(len(keys))
        return real(keys)

    monkeypatch.setattr(authenticate_module, "_find_devices", slow)
    return sizes


@database_sync_to_async
def deactivate(device):
    device.is_active = False
    device.save()


async def test_a_burst_of_connects_shares_lookups_and_keeps_identities_apart(hub, clients, slow_lookups):
    good = []
    for type_name, count in (("thermometer", 10), ("hygrometer", 4)):
        for i in range(count):
            _, credentials = await provision_device(type_name, f"burst-{i}")
            good.append((type_name, f"burst-{i}", credentials))
    _, old = await provision_device("thermometer", "rotated")
    await provision_device("thermometer", "rotated")  # rotation: the old password is dead
    off, off_credentials = await provision_device("thermometer", "off")
    await deactivate(off)
    victim = good[0][2]
    bad = [
        (victim["mqtt_username"], good[1][2]["mqtt_password"]),  # another device's password
        (old["mqtt_username"], old["mqtt_password"]),
        (off_credentials["mqtt_username"], off_credentials["mqtt_password"]),
        ("thermometer.ghost", victim["mqtt_password"]),
    ]
    accepted = [
        clients(hub.engine.port, c["mqtt_username"], c["mqtt_username"], c["mqtt_password"]) for _, _, c in good
    ]
    refused = [clients(hub.engine.port, username, username, password) for username, password in bad]

    codes = await asyncio.gather(*(client.connect(expect_success=False) for client in accepted + refused))

    assert codes == [0] * len(accepted) + [135] * len(refused)  # 135: paho's "not authorized"
    lookups = authenticate_module.device_lookups()
    assert lookups.batches < len(accepted) + len(refused)  # they shared queries
    assert max(slow_lookups) > 1
    # Each accepted device is itself: its own cmd topic only, and commands reach only it.
    for (type_name, device_id, _), client in zip(good, accepted, strict=True):
        assert await client.subscribe(f"things/{type_name}/{device_id}/cmd") == 1
    other = good[1]
    assert await accepted[0].subscribe(f"things/{other[0]}/{other[1]}/cmd") == 128
    for type_name, device_id, _ in good:
        await hub.engine.publish(f"things/{type_name}/{device_id}/cmd", json.dumps({"to": device_id}).encode(), qos=1)
    for (_, device_id, _), client in zip(good, accepted, strict=True):
        messages = await client.wait_messages(1)
        assert [json.loads(m.payload)["to"] for m in messages] == [device_id]
    await asyncio.sleep(0.2)
    assert all(len(client.messages) == 1 for client in accepted)
    await asyncio.gather(*(client.disconnect() for client in accepted))
