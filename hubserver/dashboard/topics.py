"""The dashboard's DASF topics page: every topic the user may see the status of (``can_view_status`` on it,
or globally), with its availability, outstanding messages, connected consumers and last activity, kept
live by a Server-Sent Events stream (``topics/stream/``) that sends the table again whenever the broker
changed something (checked every second) and a keep-alive comment otherwise."""

import asyncio

import orjson
from channels.db import database_sync_to_async
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max, Q
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from ..dasf.models import BrokerTopic, availability
from ..realtime.auth import authenticate_request
from .views import LOGIN_URL

CHECK_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
LABELS = {True: "online", False: "offline", None: "unknown"}


def visible_topics(user):
    """The topics (not response topics) whose status ``user`` may view."""
    from guardian.shortcuts import get_objects_for_user

    topics = get_objects_for_user(user, "dasf_broker.can_view_status", klass=BrokerTopic, accept_global_perms=True)
    return topics.filter(responsetopic__isnull=True)


def topic_rows(user):
    """(sync) The table: one dict per topic, ordered by name."""
    from ..dasf.service import get_service

    service = get_service()
    connections = service.connections if service is not None else {}
    rows = []
    queryset = visible_topics(user).annotate(
        outstanding=Count("brokermessage", filter=Q(brokermessage__delivered_to__isnull=True), distinct=True),
        last_message=Max("brokermessage__date_created"),
    )
    for topic in queryset.order_by("slug"):
        state = availability(topic.supports_dasf, topic.last_ping, topic.last_pong)
        times = [t for t in (topic.last_ping, topic.last_pong, topic.last_message) if t is not None]
        rows.append(
            {
                "slug": topic.slug,
                "availability": LABELS[state] if topic.supports_dasf else "not pinged",
                "outstanding": topic.outstanding,
                "consumers": len(connections.get(topic.slug, ())),
                "store": topic.effective_store_messages.value,
                "last_activity": max(times).isoformat() if times else None,
            }
        )
    return rows


@login_required(login_url=LOGIN_URL)
def topics(request):
    return render(request, "hubserver/dashboard/topics.html", {"rows": topic_rows(request.user), "page": "topics"})


async def topics_stream(request):
    """``event: topics`` with ``{"type": "topics", "topics": [rows]}`` now and after every change."""
    user, _ = await authenticate_request(request)
    if not user.is_authenticated:
        return HttpResponse("log in first", status=401, content_type="text/plain")
    response = StreamingHttpResponse(_events(user), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _events(user):
    from ..dasf.service import get_service

    last_rows = None
    last_version = None
    quiet = 0.0
    while True:
        service = get_service()
        version = service.version if service is not None else None
        if version != last_version or last_version is None or quiet >= KEEPALIVE_SECONDS:
            last_version = version
            rows = await database_sync_to_async(topic_rows)(user)
            if rows != last_rows:
                last_rows = rows
                quiet = 0.0
                yield f"event: topics\ndata: {orjson.dumps({'type': 'topics', 'topics': rows}).decode()}\n\n"
            elif quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keepalive\n\n"
        await asyncio.sleep(CHECK_SECONDS)
        quiet += CHECK_SECONDS
