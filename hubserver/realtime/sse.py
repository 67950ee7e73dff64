"""Server-Sent Events (``/iot/stream/{type}/`` and ``/iot/stream/{type}/{id}/``).

Each event is ``id: <cursor>`` (reading and status events only), ``event: <type>``, ``data: <JSON>``, the
same JSON as on the WebSocket. Connection and command events carry no ``id:`` line, so they never move the
client's ``Last-Event-ID``; command events need ``view`` on the Message model too.

Resuming without gaps: a stream joins its channel-layer group FIRST, then, when the request carries
``Last-Event-ID`` (the header EventSource sends on reconnect) or ``?last_event_id=``, replays from the
database every reading/status event stored after that cursor (oldest first, in pages), and only then sends
live events, dropping those the replay already sent. A fresh stream starts with a bare ``id: <newest
message id>`` so the client has a resume point even before its first event. If the channel layer drops a
message (``seq`` jumps), the stream catches up from the database the same way. ``: keepalive`` comments go
out every ``SSE_HEARTBEAT`` seconds.

Several processes (workers, web processes) commit and publish concurrently, so live messages can arrive
out of commit order. A stream never moves its cursor past a row it has not sent: each live message says
which ids its batch spans (``cursors``: the newest id before the batch, the newest of the batch; the
writers commit each table's rows in id order, ``hubserver.routing.batch``). When the batch starts right
after the stream's cursor the message is applied as it is; otherwise some batch in between is still on
its way (or concerned other devices), and the stream first reads what it has not seen from the database.
"""

import asyncio
import logging

import orjson
from channels.db import database_sync_to_async
from django.http import StreamingHttpResponse

from ..conf import hub_settings
from .errors import BAD_REQUEST, INTERNAL_ERROR, EventError
from .events import COMMAND, CURSOR_EVENTS, device_group, latest_cursor, stored_events, type_group
from .fanout import get_layer, last_seq
from .views import authorize, error_response, method_not_allowed, parse_cursor

logger = logging.getLogger("hubserver.realtime")


def sse_frame(event, with_id=True):
    head = f"id: {event['id']}\n" if with_id else ""
    return f"{head}event: {event['type']}\ndata: {orjson.dumps(event).decode()}\n\n"


class EventStream:
    """The state of one SSE response: its group, its cursor and what it already sent."""

    def __init__(self, target, resume, layer):
        self.target = target
        self.layer = layer
        self.resume = resume
        self.group = (
            type_group(target.type_name)
            if target.device_id is None
            else device_group(target.type_name, target.device_id)
        )
        self.cursor = resume  # the last id the client was told
        self.sent_upto = resume  # cursor events with an id <= this were sent (None: no replay yet)
        self.last_seq = {}  # origin -> seq

    async def replay(self):
        """Every stored event after ``self.cursor``, as SSE text, page by page."""
        page = hub_settings.SSE_REPLAY_PAGE
        while True:
            events, cursor = await database_sync_to_async(stored_events)(
                self.target.type_name, self.target.device_id, after=self.cursor, limit=page
            )
            if cursor == self.cursor:
                break
            chunk = "".join(sse_frame(event) for event in events)
            if not events or events[-1]["id"] != cursor:
                chunk += f"id: {cursor}\n\n"  # rows without events (unparseable payloads) still move it
            self.cursor = self.sent_upto = cursor
            yield chunk

    def lost_messages(self, message):
        """True when the channel layer dropped messages of this group before ``message`` (``seq`` jumped)."""
        origin, seq = message.get("origin"), message.get("seq")
        if origin is None or seq is None:
            return False
        last = self.last_seq.get(origin)
        self.last_seq[origin] = seq
        return last is not None and seq > last + 1

    def behind(self, message):
        """True when rows may have been committed between this stream's cursor and ``message``'s batch."""
        cursors = message.get("cursors")
        return self.cursor is not None and cursors is not None and cursors[0] > self.cursor

    def live(self, message):
        """SSE text for one channel-layer message (may be empty), minus what was already sent. Call it once
        the stream is not ``behind`` the message: everything up to its batch has been sent."""
        parts = []
        device_id = self.target.device_id
        for event in message.get("events", ()):
            if device_id is not None and event.get("device_id") != device_id:
                continue
            if event["type"] == COMMAND and not self.target.can_view_commands:
                continue
            if event["type"] not in CURSOR_EVENTS:
                parts.append(sse_frame(event, with_id=False))
                continue
            event_id = event["id"]
            if self.sent_upto is not None and event_id <= self.sent_upto:
                continue  # already replayed
            if self.cursor is None or event_id > self.cursor:
                self.cursor = event_id
                parts.append(sse_frame(event))
            else:
                parts.append(sse_frame(event, with_id=False))  # older than the fresh stream's mark
        cursors = message.get("cursors")
        if cursors is not None and self.cursor is not None and cursors[1] > self.cursor >= cursors[0]:
            # The rest of the batch holds no event for this stream: the client may resume after all of it.
            self.cursor = self.sent_upto = cursors[1]
            parts.append(f"id: {self.cursor}\n\n")
        return "".join(parts)

    async def __aiter__(self):
        layer, channel = self.layer, await self.layer.new_channel()
        await layer.group_add(self.group, channel)
        origin, seq = last_seq(self.group)  # so that even the first message from this process shows a loss
        self.last_seq[origin] = seq
        receiving = None
        try:
            yield f"retry: {hub_settings.SSE_RETRY}\n\n"
            if self.resume is not None:
                async for chunk in self.replay():
                    yield chunk
            else:
                self.cursor = await database_sync_to_async(latest_cursor)(self.target.type_name)
                yield f"id: {self.cursor}\n\n"
            heartbeat = hub_settings.SSE_HEARTBEAT
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(layer.receive(channel))
                done, _ = await asyncio.wait({receiving}, timeout=heartbeat)
                if not done:
                    yield ": keepalive\n\n"
                    continue
                message, receiving = receiving.result(), None
                if message.get("type") != "hub.events":
                    continue
                lost = self.lost_messages(message)
                if lost:
                    logger.warning("SSE stream on %s lost channel-layer messages: catching up", self.group)
                if self.cursor is not None and (lost or self.behind(message)):
                    # Catch up from the database: it holds this message's batch and every one before it.
                    async for chunk in self.replay():
                        yield chunk
                    cursors = message.get("cursors")
                    if cursors is not None and cursors[1] > self.cursor:
                        self.cursor = self.sent_upto = cursors[1]
                        yield f"id: {self.cursor}\n\n"
                text = self.live(message)
                if text:
                    yield text
        finally:
            if receiving is not None:
                receiving.cancel()
            try:
                await layer.group_discard(self.group, channel)
            except Exception:
                logger.exception("leaving %s failed", self.group)


async def sse_stream(request, type_name, device_id=None):
    if request.method != "GET":
        return method_not_allowed()
    target, error = await authorize(request, type_name, device_id)
    if error is not None:
        return error
    try:
        resume = parse_cursor(request.headers.get("Last-Event-ID") or request.GET.get("last_event_id"), "Last-Event-ID")
    except EventError as exc:
        return error_response(exc.code, exc.message)
    layer = get_layer()
    if layer is None:
        return error_response(INTERNAL_ERROR, "no channel layer is configured", status=503)
    if not hasattr(layer, "group_add"):
        return error_response(BAD_REQUEST, "the channel layer does not support groups", status=503)
    response = StreamingHttpResponse(EventStream(target, resume, layer), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
