"""The dashboard's DASF topics page: who sees which topics, and the live stream that keeps it current."""

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from guardian.shortcuts import assign_perm

from tests.dasf import make_topic, make_user, open_ws, produce, request
from tests.realtime_urls import SSEClient, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def dasf():
    from hubserver.dasf.service import start_service, stop_service

    service = await start_service()
    try:
        yield service
    finally:
        await stop_service()


@database_sync_to_async
def _page(user):
    client = Client()
    client.force_login(user)
    return client.get("/topics/")


async def test_the_page_lists_the_topics_the_user_may_see_the_status_of(dasf):
    viewer = await make_user("viewer")
    await make_topic("seen", viewers=[viewer])
    await make_topic("hidden")
    page = await _page(viewer)
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-topic="seen"' in html and 'data-topic="hidden"' not in html
    assert Client().get("/topics/").status_code == 302  # log in first


@pytest.mark.slow  # follows a stream for seconds
async def test_the_stream_follows_consumers_and_outstanding_messages(dasf):
    viewer = await make_user("viewer")
    backend = await make_user("backend")
    client = await make_user("client")
    await make_topic("calc", viewers=[viewer], consumers=[backend], producers=[client])
    stream = SSEClient("/topics/stream/", headers=[await session_cookie(viewer)])
    assert await stream.start() == 200
    (first,) = await stream.events(1)
    assert [(t["slug"], t["consumers"], t["outstanding"], t["availability"]) for t in first["topics"]] == [
        ("calc", 0, 0, "unknown")
    ]

    producer = await open_ws("/ws/calc/", client)
    await produce(producer, request())  # nobody listens: it waits
    rows = await _next_rows(stream, lambda t: t["outstanding"] == 1)
    assert rows["consumers"] == 0 and rows["last_activity"] is not None

    consumer = await open_ws("/ws/calc/b/", backend)
    await _next_rows(stream, lambda t: t["consumers"] == 1)
    await consumer.disconnect()
    await _next_rows(stream, lambda t: t["consumers"] == 0 and t["availability"] == "offline")
    await producer.disconnect()
    await stream.close()


async def _next_rows(stream, wanted, attempts=20):
    for _ in range(attempts):
        (event,) = await stream.events(1, timeout=5)
        (row,) = event["topics"]
        if wanted(row):
            return row
    raise AssertionError("the stream never showed the expected row")


async def test_the_stream_needs_a_login(dasf):
    stream = SSEClient("/topics/stream/")
    assert await stream.start() == 401


@database_sync_to_async
def _grant_globally(user):
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="can_view_status"))


async def test_a_global_permission_shows_every_topic_but_response_topics(dasf):
    viewer = await make_user("viewer")
    await _grant_globally(viewer)
    topic = await make_topic("calc")

    @database_sync_to_async
    def response_topic():
        from hubserver.dasf.models import ResponseTopic

        assign_perm("can_view_status", viewer, ResponseTopic.objects.create(slug="calc_r", is_response_for=topic))

    await response_topic()
    html = (await _page(viewer)).content.decode()
    assert 'data-topic="calc"' in html and 'data-topic="calc_r"' not in html
