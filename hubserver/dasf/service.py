"""``DasfService``: the topic broker's engine, one per hub process, on the serving event loop.

It owns the broker's group-commit writer (``store.write_batch``), the in-memory permission snapshot
(``grants``), the connections of this process by topic, and the periodic jobs: pinging every DASF topic
(``DASF_PING_INTERVAL``), deleting expired response topics, writing the ``last_ping`` / ``last_pong`` times
it gathered (twice a second, one UPDATE per batch instead of one per message), and noticing permission
changes made by other processes.

A message's path: the producer's frame is parsed, checked against the snapshot, and (when its topic keeps
messages) queued for the writer; after its batch commits it is sent to the topic's consumers and the
producer gets its acknowledgement. Consumers in this process get it directly (no channel-layer copy per
consumer); with a cross-process channel layer (Redis) each committed batch also goes out once per topic
to the group ``dasf.<slug>``, which the consumers of the other hub processes listen to.
"""

import asyncio
import functools
import logging
import secrets
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import orjson
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.utils import timezone

from ..conf import hub_settings
from ..routing.results import RouterNotRunning
from ..routing.throttle import ThrottledLog
from ..routing.writer import GroupCommitWriter
from . import app_settings, grants, store
from .constants import SLUG_RE, STATUS_PING, MessageType, PropertyKeys, reserved_reason
from .grants import CAN_CONSUME, CAN_PRODUCE, topic_info_from_row
from .models import BrokerTopic

logger = logging.getLogger("hubserver.dasf")

ORIGIN = secrets.token_hex(6)  # this process, in channel-layer messages (its own are already delivered)
GROUP_PREFIX = "dasf."
LAYER_MESSAGE = "dasf.deliver"
TOUCH_SECONDS = 0.5
GC_SECONDS = 60.0
FINGERPRINT_SECONDS = 5.0
REFUSAL_RECHECK_SECONDS = 1.0
DISABLED = BrokerTopic.StoreMessageChoices.DISABLED.value
CACHE = BrokerTopic.StoreMessageChoices.CACHE.value
CACHEALL = BrokerTopic.StoreMessageChoices.CACHEALL.value


class Refused(Exception):
    """A message or connection the broker refuses; ``str()`` is the ``result`` the client gets."""


def group_name(slug):
    return GROUP_PREFIX + slug


class DasfService:
    def __init__(self):
        self.loop = None
        self.writer = None
        self.grants = grants.Snapshot()
        self.connections = {}  # slug -> set of consumer connections in this process
        self.layer = None
        self.remote = False
        self.mqtt = None  # the DasfNamespace, while attached to the hub's MQTT broker
        self.running = False
        self.version = 0  # bumped on every change the topics page shows
        self.counts = Counter()
        self._pings = {}  # topic id -> when (not yet written)
        self._pongs = {}
        self._tasks = []
        self._stale = False
        self._reload = None
        self._last_recheck = 0.0
        self._mutations = 0
        self.epoch = 0  # changes whenever a permission decision may have changed (connections re-check)
        self._reader = None
        self._log = ThrottledLog(logger)

    # Lifecycle ------------------------------------------------------------------------------------

    async def start(self):
        """Start the writer, load the permission snapshot, start the periodic jobs."""
        if self.running:
            return
        app_settings.check()
        self.loop = asyncio.get_running_loop()
        self.layer = get_channel_layer(hub_settings.CHANNEL_LAYER)
        self.remote = self.layer is not None and not isinstance(self.layer, InMemoryChannelLayer)
        self.writer = GroupCommitWriter(
            store.write_batch,
            batch_size=hub_settings.WRITER_BATCH_SIZE,
            queue_size=hub_settings.WRITER_QUEUE_SIZE,
            after_commit=self._after_commit,
            name="hubserver-dasf-writer",
        )
        await self.writer.start()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hubserver-dasf-reader")
        self.grants = await self._read(grants.load)
        _watch_changes(self)
        self.running = True
        self._spawn(self._every(TOUCH_SECONDS, self.flush_touches), "dasf-touches")
        self._spawn(self._every(GC_SECONDS, self.garbage_collect), "dasf-gc")
        self._spawn(self._every(FINGERPRINT_SECONDS, self.check_fingerprint), "dasf-permissions")
        if app_settings.DASF_PING_INTERVAL:
            self._spawn(self._every(app_settings.DASF_PING_INTERVAL, self.ping_all), "dasf-ping")
        logger.info("DASF topic broker: %d topics", len(self.grants.topics))

    async def stop(self):
        """Stop the jobs, then write everything queued (acknowledging it) and the pending ping times."""
        if not self.running:
            return
        self.running = False
        self.detach_mqtt()
        _unwatch_changes(self)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await self.flush_touches()
        except Exception:
            logger.exception("writing the last ping times failed")
        await self.writer.stop()
        if self._reader is not None:
            await self._read(_close_connections)
            self._reader.shutdown(wait=False)

    def _spawn(self, coroutine, name):
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine, name=name))

    async def _every(self, seconds, job):
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except RouterNotRunning:
                return
            except Exception as exc:
                self._log.warning("job", job.__name__, "DASF %s failed: %s", job.__name__, exc)

    # Permissions ----------------------------------------------------------------------------------

    def mark_stale(self):
        """Something the snapshot reads changed in this process (any thread may call this)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._schedule_reload)

    def _schedule_reload(self):
        self._stale = True
        if self.running and (self._reload is None or self._reload.done()):
            self._reload = self.loop.create_task(self._reload_while_stale(), name="dasf-reload")

    async def _reload_while_stale(self):
        while self._stale and self.running:  # a change during a reload asks for one more
            try:
                await self.reload()
            except Exception as exc:
                self._log.warning("reload", "", "DASF: reading the permissions failed: %s", exc)
                return

    def object_permission_changed(self, granted, kind, holder_id, codename, object_pk):
        """(any thread) An object permission on a topic was committed in this process: into the snapshot
        ahead of the full reload already scheduled, on the loop (so it cannot fall between a reload's read
        and its install). The MQTT ACL cannot wait for a reload: it must see a grant as soon as the code
        that made it goes on."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._apply_object_permission, granted, kind, holder_id, codename, object_pk)

    def topic_changed(self, row, saved):
        """(any thread) A topic was saved or deleted in this process: into the snapshot on the loop, ahead of
        the full reload (which brings its permissions along)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply_topic, row, saved)

    def _apply_topic(self, row, saved):
        if saved:
            self.grants.add_topic(topic_info_from_row(row))
        else:
            self.grants.remove_topic(row[0])
        self._mutations += 1
        self.epoch += 1

    def _apply_object_permission(self, granted, kind, holder_id, codename, object_pk):
        try:
            topic_id = int(object_pk)
        except (TypeError, ValueError):
            return
        snapshot = self.grants
        table = snapshot.user_obj if kind == "user" else snapshot.group_obj
        if granted:
            table.setdefault(topic_id, {}).setdefault(codename, set()).add(holder_id)
        else:
            table.get(topic_id, {}).get(codename, set()).discard(holder_id)
        self._mutations += 1
        self.epoch += 1

    def store_rules_changed(self):
        """The server's default store rules changed (tests): recompute every topic's rule now."""
        self.grants.refresh_store_rules()

    async def reload(self):
        """Replace the snapshot with a fresh one (read in the reader thread). A change the service made to the
        snapshot itself while it was being read (a topic it created or deleted) makes it read again, so an
        older view never replaces a newer one."""
        while True:
            self._stale = False
            mark = self._mutations
            try:
                fresh = await self._read(grants.load)
            except Exception:
                self._stale = True
                raise
            if mark == self._mutations:
                break
        fresh.refresh_store_rules()  # the settings of now, not of when the thread read the topics
        self.grants = fresh
        self.epoch += 1
        self.version += 1

    def _mutated(self):
        """The service changed its snapshot directly (after a write of its own)."""
        self._mutations += 1
        self.epoch += 1
        self.version += 1

    async def _read(self, function, *args):
        """Run a read in the reader thread: reads never wait behind a batch being written."""
        return await asyncio.get_running_loop().run_in_executor(self._reader, function, *args)

    async def check_fingerprint(self):
        """Reload when the permission tables changed under us (another process)."""
        if self._stale:
            await self.reload()
            return
        current = await self._read(grants.fingerprint)
        if current != self.grants.fingerprint:
            await self.reload()

    async def recheck(self):
        """Before refusing: make sure the snapshot is fresh. Returns True when it may have changed.

        A reload in flight (or due) is waited for; then, at most once a second, the tables' fingerprint is
        compared, which catches what another process changed since."""
        before = self.grants
        if self._reload is not None and not self._reload.done():
            await asyncio.shield(self._reload)
        elif self._stale:
            await self.reload()
        now = time.monotonic()
        if now - self._last_recheck >= REFUSAL_RECHECK_SECONDS:
            self._last_recheck = now
            await self.check_fingerprint()
        return self.grants is not before

    async def topic(self, slug):
        """The topic named ``slug`` (a TopicInfo), or None; asks the database only when it is not known."""
        topic = self.grants.topics.get(slug)
        if topic is not None:
            return topic
        row = await self._read(store.find_topic, slug)
        if row is None:
            return None
        await self.reload()  # made elsewhere: its grants are not in the snapshot either
        return self.grants.topics.get(slug)

    async def allowed(self, user_id, perm, slug):
        """``(topic, allowed)``: the decision for an existing topic, re-checked once before a refusal."""
        topic = await self.topic(slug)
        if topic is None:
            return None, False
        if self._decide(user_id, perm, topic):
            return topic, True
        if await self.recheck():
            topic = self.grants.topics.get(slug)
            if topic is not None and self._decide(user_id, perm, topic):
                return topic, True
        return topic, False

    async def _may_create_topics(self, user_id):
        if self.grants.may_create_topics(user_id):
            return True
        return await self.recheck() and self.grants.may_create_topics(user_id)

    def _decide(self, user_id, perm, topic):
        if perm == CAN_PRODUCE:
            return self.grants.may_produce(user_id, topic)
        return self.grants.allows(user_id, perm, topic)

    # Producing ------------------------------------------------------------------------------------

    async def produce(self, producer, content):
        """Take one message from ``producer`` (a connection with ``principal``, ``slug`` and
        ``acknowledge(ack)``): refuse it, or deliver and acknowledge it (after its commit when stored)."""
        ack = {"messageId": content.get("messageId")}
        if "context" in content:
            ack["context"] = content["context"]
        try:
            await self._produce(producer, content, ack)
        except Refused as exc:
            self.counts["refused"] += 1
            ack["result"] = str(exc)
            producer.acknowledge(ack)
        except RouterNotRunning:
            ack["result"] = "error: the hub is stopping; send the message again"
            producer.acknowledge(ack)
        except Exception:
            logger.exception("DASF: a message to %s failed", producer.slug)
            ack["result"] = "error: internal error in the broker (logged); the message was not taken"
            producer.acknowledge(ack)

    async def _produce(self, producer, content, ack):
        principal = producer.principal
        given = content.get("messageId")
        if given is None:
            message_id = content["messageId"] = ack["messageId"] = str(uuid.uuid4())
        else:
            message_id = _canonical_uuid(given)
            if message_id is None:
                raise Refused(f"error: messageId must be a UUID, got {str(given)[:80]!r}")
        props = content.get("properties")
        if props is None:
            props = {}
        elif not isinstance(props, dict):
            raise Refused("error: 'properties' must be a JSON object")
        topic = await self._producer_topic(producer)
        topic, allowed = await self.allowed(principal.user_id, CAN_PRODUCE, topic.slug)
        if not allowed:
            raise Refused(
                f"error: {principal} may not publish to topic {producer.slug!r} (it needs the can_produce "
                "permission on the topic, or a public topic)"
            )
        response_topic_id = None
        response_slug = props.get(PropertyKeys.RESPONSE_TOPIC.value)
        if response_slug is not None:
            response_topic_id = await self._response_topic(principal, topic, response_slug)
        created = timezone.now()
        content["publishTime"] = created.isoformat()
        payload = orjson.dumps(content).decode()
        self.counts["received"] += 1
        if topic.store == DISABLED:
            self._deliver_everywhere(topic, message_id, payload, created)
            if self.remote:
                await self._send_remote({topic.slug: [(message_id, payload)]})
            ack["result"] = "ok"
            producer.acknowledge(ack)
            return
        context = _int_or_none(props.get(PropertyKeys.REQUEST_CONTEXT.value))
        item = store.StoreItem(
            topic,
            message_id,
            principal.user_id,
            context,
            content,
            payload,
            created,
            response_topic_id,
            producer,
            ack,
            None,
        )
        item.future = _Outcome(item)
        await self.writer.put(item)

    async def _producer_topic(self, producer):
        slug = producer.slug
        topic = await self.topic(slug)
        if topic is not None:
            return topic
        principal = producer.principal
        if not app_settings.DASF_CREATE_TOPIC_ON_MESSAGE:
            raise Refused(f"error: topic {slug!r} does not exist")
        if principal.anonymous or not await self._may_create_topics(principal.user_id):
            raise Refused(
                f"error: topic {slug!r} does not exist, and {principal} may not create topics (that needs "
                "the dasf_broker.add_brokertopic permission)"
            )
        user_id = principal.user_id
        row, created = await self.writer.run_sync(
            store.create_topic, slug, user_id, [(user_id, CAN_PRODUCE), (user_id, CAN_CONSUME)]
        )
        if row is None:
            raise Refused(f"error: topic {slug!r} could not be created")
        if not created:
            await self.reload()
            return self.grants.topics[slug]
        topic = topic_info_from_row(row)
        self.grants.add_topic(topic)
        self.grants.grant_user(user_id, CAN_PRODUCE, topic.id)
        self.grants.grant_user(user_id, CAN_CONSUME, topic.id)
        self._mutated()
        logger.info("%s created DASF topic %s", principal, slug)
        return topic

    async def _response_topic(self, principal, topic, slug):
        """The id of the response topic ``slug`` for requests to ``topic``, created on first use: the
        requester may consume it, the topic's consumers may produce to it. An existing topic is used as it
        is (no grants: naming a topic does not give anyone access to it)."""
        if not isinstance(slug, str) or not _valid_slug(slug):
            raise Refused(f"error: response_topic {str(slug)[:80]!r} is not a valid topic name")
        if slug == STATUS_PING:
            return None
        reason = reserved_reason(slug)
        if reason:
            raise Refused(f"error: response_topic: {reason}")
        existing = await self.topic(slug)
        if existing is not None:
            return existing.id if existing.is_response else None
        snapshot = self.grants
        users = snapshot.user_obj.get(topic.id, {}).get(CAN_CONSUME, set())
        groups = snapshot.group_obj.get(topic.id, {}).get(CAN_CONSUME, set())
        user_perms = [(principal.user_id, CAN_CONSUME)] + [(uid, CAN_PRODUCE) for uid in sorted(users)]
        group_perms = [(gid, CAN_PRODUCE) for gid in sorted(groups)]
        row, created = await self.writer.run_sync(
            functools.partial(
                store.create_topic, slug, principal.user_id, user_perms, response_for=topic.id, group_perms=group_perms
            )
        )
        if not created:
            await self.reload()
            existing = self.grants.topics.get(slug)
            return existing.id if existing is not None and existing.is_response else None
        response = topic_info_from_row(row)
        snapshot = self.grants
        snapshot.add_topic(response)
        for uid, perm in user_perms:
            snapshot.grant_user(uid, perm, response.id)
        for gid, perm in group_perms:
            snapshot.grant_group(gid, perm, response.id)
        self._mutated()
        return response.id

    async def _after_commit(self, batch):
        """Deliver what the batch stored, then acknowledge it to its producers (in the batch's order)."""
        remote = {} if self.remote else None
        for item in batch:
            if type(item) is not store.StoreItem:
                continue
            if item.result == store.STORED:
                self._deliver_everywhere(item.topic, item.message_id, item.payload, item.created)
                if remote is not None:
                    remote.setdefault(item.topic.slug, []).append((item.message_id, item.payload))
            ack = item.ack
            ack["result"] = "ok"
            item.producer.acknowledge(ack)
        self.version += 1
        if remote:
            await self._send_remote(remote)

    # Delivering -----------------------------------------------------------------------------------

    def deliver(self, topic, message_id, payload, when=None):
        """Send one message to the topic's consumers in this process; never waits for them."""
        connections = self.connections.get(topic.slug)
        if not connections:
            return 0
        sent = 0
        for connection in tuple(connections):
            sent += connection.deliver(topic, message_id, payload)
        if sent:
            self._pings[topic.id] = when or timezone.now()
            self.counts["delivered"] += sent
        return sent

    def _deliver_everywhere(self, topic, message_id, payload, when=None):
        """To the topic's consumers here, and to the MQTT clients subscribed to it."""
        sent = self.deliver(topic, message_id, payload, when)
        if self.mqtt is not None:
            self.mqtt.outbound(topic.slug, payload)
        return sent

    async def _send_remote(self, by_slug):
        for slug, messages in by_slug.items():
            try:
                await self.layer.group_send(
                    group_name(slug), {"type": LAYER_MESSAGE, "origin": ORIGIN, "slug": slug, "messages": messages}
                )
            except Exception as exc:
                self._log.warning(
                    "layer", slug, "sending DASF messages of %s over the channel layer failed: %s", slug, exc
                )

    def register(self, connection):
        self.connections.setdefault(connection.slug, set()).add(connection)
        self.version += 1

    def unregister(self, connection):
        connections = self.connections.get(connection.slug)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self.connections[connection.slug]
        self.version += 1

    # Consumers' acknowledgements and backends' answers --------------------------------------------

    async def consumer_ack(self, connection, topic, message_id):
        """A consumer acknowledged ``message_id``: it is alive, and the store rule may let the message go."""
        self._pongs[topic.id] = timezone.now()
        rule = topic.store
        message_id = _canonical_uuid(message_id)
        if rule == DISABLED or message_id is None:
            return
        consumers = self.grants.object_holders(CAN_CONSUME, topic.id) if rule == CACHEALL else None
        await self.writer.put(store.AckItem(topic.id, rule, connection.principal.user_id, [message_id], consumers))

    def pong(self, topic):
        self._pongs[topic.id] = timezone.now()

    async def set_api_info(self, topic, api_info):
        await self.writer.put(store.TopicUpdate(topic.id, api_info=api_info))

    async def outstanding(self, topic, user_id):
        """The messages a (re)connecting consumer still has to get: ``[(message id, JSON text)]``."""
        if topic.store == DISABLED:
            return []
        rows = await self._read(store.outstanding, topic.id, user_id, topic.store)
        return [(message_id, orjson.dumps(content).decode()) for message_id, content in rows]

    async def consumer_connected(self, topic):
        if topic.is_response:
            await self.writer.put(store.TopicUpdate(topic.id, garbage_collect_on=None))

    async def consumer_left(self, topic):
        """A consumer went away: a response topic nobody needs any more is deleted later; a DASF topic is
        pinged, so its availability follows at once."""
        if topic.is_response:
            if topic.store == DISABLED or (
                topic.store == CACHE and not await self._read(store.has_outstanding, topic.id)
            ):
                when = timezone.now() + timedelta(seconds=app_settings.DASF_GARBAGE_COLLECT_AFTER)
                await self.writer.put(store.TopicUpdate(topic.id, garbage_collect_on=when))
        elif topic.supports_dasf:
            self.ping(topic)

    # Pings ----------------------------------------------------------------------------------------

    def ping(self, topic):
        """Send a ping to the topic's consumers here; the backend answers on ``status-ping``."""
        if not topic.supports_dasf:
            return
        now = timezone.now()
        self._pings[topic.id] = now
        message_id = str(uuid.uuid4())
        self.deliver(topic, message_id, broker_request(MessageType.PING, now, message_id), now)

    async def ping_all(self):
        """Note a ping of every DASF topic, and send it to the consumers in this process."""
        now = timezone.now()
        slugs = await self.writer.run_sync(store.ping_all, now)
        for slug in slugs:
            topic = self.grants.topics.get(slug)
            if topic is not None and slug in self.connections:
                message_id = str(uuid.uuid4())
                self.deliver(topic, message_id, broker_request(MessageType.PING, now, message_id), now)
        self.version += 1

    async def flush_touches(self):
        if not (self._pings or self._pongs):
            return
        pings, self._pings = self._pings, {}
        pongs, self._pongs = self._pongs, {}
        await self.writer.put(store.TouchItem(pings, pongs))
        self.version += 1

    async def garbage_collect(self):
        removed = await self.writer.run_sync(store.garbage_collect, timezone.now())
        for topic_id in removed:
            self.grants.remove_topic(topic_id)
        if removed:
            self._mutated()
            logger.info("DASF: deleted %d expired response topic(s)", len(removed))

    # MQTT -------------------------------------------------------------------------------------------------

    def attach_mqtt(self, publishers):
        """Carry DASF topics on the hub's MQTT broker as ``<DASF_MQTT_PREFIX>/<slug>`` (``mqtt.py``):
        ``publishers`` are the engines' ``publish_nowait``."""
        from ..access import namespaces
        from .mqtt import DasfNamespace

        self.detach_mqtt()
        self.mqtt = DasfNamespace(self)
        self.mqtt.publishers = list(publishers)
        namespaces.register(self.mqtt)

    def detach_mqtt(self):
        from ..access import namespaces

        if self.mqtt is not None:
            namespaces.unregister(self.mqtt)
            self.mqtt = None

    def stats(self):
        writer = self.writer
        return {
            **self.counts,
            "connections": sum(len(c) for c in self.connections.values()),
            "topics": len(self.grants.topics),
            "queued": writer.queued if writer is not None else 0,
            "mqtt": dict(self.mqtt.counts) if self.mqtt is not None else {},
        }


def _close_connections():
    from django.db import connections

    connections.close_all()


def broker_request(message_type, when, message_id):
    """A ping or API-info request from the broker to a topic's consumers (answered on ``status-ping``)."""
    return orjson.dumps(
        {
            "properties": {
                PropertyKeys.REQUEST_CONTEXT.value: 1,
                PropertyKeys.MESSAGE_TYPE.value: message_type.value,
                PropertyKeys.RESPONSE_TOPIC.value: STATUS_PING,
            },
            "publishTime": when.isoformat(),
            "messageId": message_id,
            "payload": "",
        }
    ).decode()


class _Outcome:
    """The writer's future for a stored message: success is handled per batch (``_after_commit``); a batch
    that did not commit tells each producer at once why, so it can send the message again."""

    __slots__ = ("_done", "item")

    def __init__(self, item):
        self.item = item
        self._done = False

    def done(self):
        return self._done

    def set_result(self, value):
        self._done = True

    def set_exception(self, exc):
        self._done = True
        ack = self.item.ack
        ack["result"] = f"error: the message was not stored ({exc}); send it again"
        self.item.producer.acknowledge(ack)


def _canonical_uuid(value):
    """``value`` as a UUID's canonical text, or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _valid_slug(slug):
    return bool(SLUG_RE.fullmatch(slug))


# The service of this process ------------------------------------------------------------------------------

_service = None


def get_service():
    """The running service of this process, or None."""
    service = _service
    return service if service is not None and service.running else None


async def ensure_service():
    """The running service, started on this loop if there is none (an ASGI app that embeds the routes
    without ``hubserver run``)."""
    global _service
    loop = asyncio.get_running_loop()
    service = _service
    if service is not None and service.running and service.loop is loop:
        return service
    if service is not None and service.running:
        logger.warning("the DASF service ran on another event loop; starting a new one")
    service = _service = DasfService()
    await service.start()
    return service


async def start_service():
    """Start this process's service (``hubserver run``)."""
    return await ensure_service()


async def stop_service():
    global _service
    service, _service = _service, None
    if service is not None:
        await service.stop()


# Sync entry points (admin actions, the shell) -----------------------------------------------------------


def send_to_topic(slug, content):
    """Send a message (a dict) to a topic's consumers from sync code, in this process or over the layer."""
    message_id = str(content.get("messageId") or uuid.uuid4())
    payload = orjson.dumps(content).decode()
    _from_sync(
        slug,
        lambda service, topic: service._deliver_everywhere(topic, message_id, payload),
        [(message_id, payload)],
    )


def ping_topic(slug):
    """Ping a topic's consumers from sync code."""
    now = timezone.now()
    message_id = str(uuid.uuid4())
    payload = broker_request(MessageType.PING, now, message_id)
    _from_sync(slug, lambda service, topic: service.ping(topic), [(message_id, payload)])


def _from_sync(slug, local, messages):
    service = get_service()
    if service is not None and service.loop is not None and not service.loop.is_closed():

        def run():
            topic = service.grants.topics.get(slug)
            if topic is not None:
                local(service, topic)

        service.loop.call_soon_threadsafe(run)
        if not service.remote:
            return
    layer = get_channel_layer(hub_settings.CHANNEL_LAYER)
    if layer is None or isinstance(layer, InMemoryChannelLayer):
        return
    origin = ORIGIN if service is not None else "sync"
    async_to_sync(layer.group_send)(
        group_name(slug), {"type": LAYER_MESSAGE, "origin": origin, "slug": slug, "messages": messages}
    )


# Change notifications -----------------------------------------------------------------------------------


def _watch_changes(service):
    from .signals import connect, connect_grants, connect_settings, connect_topics

    connect(service.mark_stale)
    connect_grants(service.object_permission_changed)
    connect_topics(service.topic_changed)
    connect_settings(service.store_rules_changed)


def _unwatch_changes(service):
    from .signals import disconnect, disconnect_grants, disconnect_settings, disconnect_topics

    disconnect(service.mark_stale)
    disconnect_grants(service.object_permission_changed)
    disconnect_topics(service.topic_changed)
    disconnect_settings(service.store_rules_changed)
