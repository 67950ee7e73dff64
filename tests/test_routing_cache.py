"""Devices created by another process (``hubserver provision`` next to a running hub) become routable."""

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from hubserver.routing import MessageRouter
from hubserver.routing.results import Refusal
from tests.testapp.models import ThermometerDevice

pytestmark = pytest.mark.django_db(transaction=True)

LATE = ("data", "thermometer", "late-1")


@database_sync_to_async
def create_without_signals(device_id):
    """What another process's INSERT looks like from here: a row, and no post_save in this process."""
    ThermometerDevice.objects.bulk_create([ThermometerDevice(device_id=device_id)])


@pytest.fixture
async def router():
    router = MessageRouter()
    await router.start()
    yield router
    await router.stop()


async def test_an_unknown_answer_expires(router, monkeypatch):
    monkeypatch.setattr(router.devices, "negative_ttl", 0.2)
    assert (await router.route(*LATE, b'{"temperature": 1}')).reason == Refusal.UNKNOWN_DEVICE
    await create_without_signals("late-1")
    await asyncio.sleep(0.3)
    assert (await router.route(*LATE, json.dumps({"temperature": 2}).encode())).stored


async def test_connecting_drops_what_the_cache_remembered(router):
    assert (await router.route(*LATE, b'{"temperature": 1}')).reason == Refusal.UNKNOWN_DEVICE
    await create_without_signals("late-1")
    await router.device_connected("thermometer", "late-1")
    assert (await router.route(*LATE, b'{"temperature": 3}')).stored


async def test_with_several_processes_a_cached_device_is_read_again(router, monkeypatch):
    """A device deactivated by another process (no signal reaches this one) stops being stored once the
    cached row is older than ``positive_ttl``; without it, the cache keeps the old row."""
    await create_without_signals("late-1")
    assert (await router.route(*LATE, b'{"temperature": 1}')).stored
    await database_sync_to_async(ThermometerDevice.objects.filter(device_id="late-1").update)(is_active=False)
    assert (await router.route(*LATE, b'{"temperature": 2}')).stored  # cached, and no TTL: still stored
    monkeypatch.setattr(router.devices, "positive_ttl", 0.2)
    await asyncio.sleep(0.3)
    assert (await router.route(*LATE, b'{"temperature": 3}')).reason == Refusal.INACTIVE_DEVICE
