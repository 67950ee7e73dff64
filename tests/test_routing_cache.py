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
