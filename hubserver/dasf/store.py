"""What the DASF broker writes, as items of one group-commit writer: one transaction per batch, whatever
mix of items is queued, and a stored message's future resolved only after its batch committed.

| item | written as |
|---|---|
| ``StoreItem`` | a ``BrokerMessage`` row (one multi-row INSERT per batch), plus its response topic link |
| ``AckItem`` | ``cache``: the message deleted; ``cacheall``/``store``: the consumer added to ``delivered_to`` |
|  | (``cacheall``: a message every consumer acknowledged is then deleted) |
| ``TouchItem`` | ``last_ping`` / ``last_pong`` of the topics pinged or answered since the last one |
| ``TopicUpdate`` | one topic's fields (``api_info``, ``garbage_collect_on``) |

A producer that sends the same ``messageId`` to a topic again while the first is still stored is
acknowledged without storing (or delivering) it twice.
"""

import uuid
from concurrent.futures import Future

from django.db import IntegrityError, transaction

from ..routing.inserts import RowInserter
from .models import BrokerMessage, BrokerTopic, ResponseTopic
from .signals import suppressed

_DONE = Future()
_DONE.set_result(None)

DUPLICATE = "duplicate"
STORED = "stored"


class StoreItem:
    """A message to store; ``producer`` is acknowledged (and the message delivered) after the commit."""

    __slots__ = (
        "ack",
        "content",
        "context",
        "created",
        "error",
        "future",
        "message_id",
        "payload",
        "producer",
        "response_topic_id",
        "result",
        "topic",
        "user_id",
    )

    def __init__(
        self, topic, message_id, user_id, context, content, payload, created, response_topic_id, producer, ack, future
    ):
        self.topic = topic
        self.message_id = message_id
        self.user_id = user_id
        self.context = context
        self.content = content
        self.payload = payload  # the message as JSON text, exactly as consumers get it
        self.created = created
        self.response_topic_id = response_topic_id
        self.producer = producer
        self.ack = ack
        self.future = future
        self.result = None
        self.error = None


class AckItem:
    """Consumer acknowledgements of stored messages on one topic."""

    __slots__ = ("consumers", "error", "future", "message_ids", "result", "rule", "topic_id", "user_id")

    def __init__(self, topic_id, rule, user_id, message_ids, consumers=None):
        self.topic_id = topic_id
        self.rule = rule
        self.user_id = user_id
        self.message_ids = message_ids
        self.consumers = consumers  # cacheall: the user ids that must all have acknowledged
        self.future = _DONE
        self.result = None
        self.error = None


class TouchItem:
    """``{topic id: when}`` for last_ping and last_pong."""

    __slots__ = ("error", "future", "pings", "pongs", "result")

    def __init__(self, pings, pongs):
        self.pings = pings
        self.pongs = pongs
        self.future = _DONE
        self.result = None
        self.error = None


class TopicUpdate:
    __slots__ = ("error", "fields", "future", "result", "topic_id")

    def __init__(self, topic_id, **fields):
        self.topic_id = topic_id
        self.fields = fields
        self.future = _DONE
        self.result = None
        self.error = None


def write_batch(items):
    """(writer thread) Write one batch in one transaction."""
    stores, acks, touches, updates = [], [], [], []
    for item in items:
        kind = type(item)
        if kind is StoreItem:
            stores.append(item)
        elif kind is AckItem:
            acks.append(item)
        elif kind is TouchItem:
            touches.append(item)
        else:
            updates.append(item)
    with transaction.atomic():
        if stores:
            _store(stores)
        if acks:
            _acknowledge(acks)
        if touches:
            _touch(touches)
        for item in updates:
            BrokerTopic.objects.filter(pk=item.topic_id).update(**item.fields)


_MESSAGE_COLUMNS = ("message_id", "context", "topic_id", "user_id", "content", "date_created")
_messages = RowInserter(BrokerMessage, _MESSAGE_COLUMNS)
_links = RowInserter(ResponseTopic.source_messages.through, ("responsetopic_id", "brokermessage_id"))


def _store(items):
    """One multi-row INSERT for the batch. A message id the topic already has (a producer sending it again)
    fails the statement inside its savepoint; then the batch is checked against the table and only the new
    ones are written."""
    try:
        with transaction.atomic(savepoint=True):
            _insert(items)
        return
    except IntegrityError:
        pass
    wanted = {item.message_id for item in items}
    existing = {
        (topic_id, str(message_id))
        for topic_id, message_id in BrokerMessage.objects.filter(message_id__in=wanted).values_list(
            "topic_id", "message_id"
        )
    }
    fresh = []
    for item in items:
        key = (item.topic.id, item.message_id)
        if key in existing:
            item.result = DUPLICATE
            continue
        existing.add(key)
        fresh.append(item)
    if fresh:
        _insert(fresh)


def _insert(items):
    converted = {}
    pks = _messages.insert(
        [(item.message_id, item.context, item.topic.id, item.user_id, item.content, item.created) for item in items],
        converted,
    )
    links = [
        (item.response_topic_id, pk) for item, pk in zip(items, pks, strict=True) if item.response_topic_id is not None
    ]
    if links:
        _links.insert(links)
    for item in items:
        item.result = STORED


def _acknowledge(items):
    """Under ``cache`` the acknowledged messages go; otherwise the consumer joins ``delivered_to`` (and under
    ``cacheall`` a message every consumer acknowledged goes). One statement per topic and kind, per batch."""
    cached = {}
    marked = {}
    for item in items:
        if item.rule == BrokerTopic.StoreMessageChoices.CACHE:
            cached.setdefault(item.topic_id, set()).update(item.message_ids)
        else:
            marked.setdefault(item.topic_id, []).append(item)
    for topic_id, message_ids in cached.items():
        _delete(BrokerMessage.objects.filter(topic_id=topic_id, message_id__in=message_ids))
    through = BrokerMessage.delivered_to.through
    for topic_id, topic_items in marked.items():
        wanted = {message_id for item in topic_items for message_id in item.message_ids}
        pk_of = {
            str(message_id): pk
            for message_id, pk in BrokerMessage.objects.filter(topic_id=topic_id, message_id__in=wanted).values_list(
                "message_id", "pk"
            )
        }
        rows = [
            through(brokermessage_id=pk_of[message_id], user_id=item.user_id)
            for item in topic_items
            for message_id in item.message_ids
            if message_id in pk_of
        ]
        if not rows:
            continue
        through.objects.bulk_create(rows, ignore_conflicts=True)
        cacheall = [item for item in topic_items if item.rule == BrokerTopic.StoreMessageChoices.CACHEALL]
        if not cacheall:
            continue
        consumers = cacheall[-1].consumers or set()
        pks = {row.brokermessage_id for row in rows}
        delivered = {}
        for message_pk, user_id in through.objects.filter(brokermessage_id__in=pks).values_list(
            "brokermessage_id", "user_id"
        ):
            delivered.setdefault(message_pk, set()).add(user_id)
        done = [pk for pk in pks if consumers <= delivered.get(pk, set())]
        if done:
            _delete(BrokerMessage.objects.filter(pk__in=done))


def _delete(messages):
    """Delete messages and their many-to-many rows: three statements, the messages selected by a subquery
    (``QuerySet.delete()`` would first load every row, content and all, to collect what depends on it)."""
    ids = messages.values("pk")
    BrokerMessage.delivered_to.through.objects.filter(brokermessage_id__in=ids)._raw_delete(_DB)
    ResponseTopic.source_messages.through.objects.filter(brokermessage_id__in=ids)._raw_delete(_DB)
    messages._raw_delete(_DB)


_DB = "default"


def _touch(items):
    pings, pongs = {}, {}
    for item in items:
        for topic_id, when in item.pings.items():
            pings[topic_id] = max(when, pings.get(topic_id, when))
        for topic_id, when in item.pongs.items():
            pongs[topic_id] = max(when, pongs.get(topic_id, when))
    by_time = {}
    for topic_id, when in pings.items():
        by_time.setdefault(("last_ping", when), []).append(topic_id)
    for topic_id, when in pongs.items():
        by_time.setdefault(("last_pong", when), []).append(topic_id)
    for (field_name, when), topic_ids in by_time.items():
        BrokerTopic.objects.filter(pk__in=topic_ids).update(**{field_name: when})


# Writer-thread functions for ``writer.run_sync`` ----------------------------------------------------------


def outstanding(topic_id, user_id, rule):
    """The stored messages a consumer (re)connecting to the topic still has to get, as JSON texts."""
    messages = BrokerMessage.objects.filter(topic_id=topic_id)
    if rule != BrokerTopic.StoreMessageChoices.CACHE:
        messages = messages.exclude(delivered_to__pk=user_id)
    rows = messages.order_by("date_created", "pk").values_list("message_id", "content")
    return [(str(message_id), content) for message_id, content in rows]


def has_outstanding(topic_id):
    return BrokerMessage.objects.filter(topic_id=topic_id).exists()


def create_topic(slug, user_id, perms, *, response_for=None, group_perms=()):
    """Create a topic (a ``ResponseTopic`` when ``response_for`` is given) and grant ``perms`` to the user and
    ``group_perms`` (``[(group id, perm)]``); returns the topic's row for the snapshot, or the existing
    topic's row (and no grants) when the slug is taken."""
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from .grants import TOPIC_FIELDS, _content_type

    try:
        with suppressed(), transaction.atomic():
            if response_for is None:
                topic = BrokerTopic.objects.create(slug=slug)
            else:
                topic = ResponseTopic.objects.create(slug=slug, is_response_for_id=response_for, supports_dasf=True)
            content_type = _content_type()
            permissions = _permissions(content_type)
            UserObjectPermission.objects.bulk_create(
                [
                    UserObjectPermission(
                        user_id=uid, permission=permissions[perm], content_type=content_type, object_pk=str(topic.pk)
                    )
                    for uid, perm in perms
                ]
            )
            GroupObjectPermission.objects.bulk_create(
                [
                    GroupObjectPermission(
                        group_id=gid, permission=permissions[perm], content_type=content_type, object_pk=str(topic.pk)
                    )
                    for gid, perm in group_perms
                ]
            )
            created = True
    except IntegrityError:
        created = False
    row = BrokerTopic.objects.filter(slug=slug).values_list(*TOPIC_FIELDS).first()
    return row, created


def _permissions(content_type):
    from django.contrib.auth.models import Permission

    return {p.codename: p for p in Permission.objects.filter(content_type=content_type)}


def find_topic(slug):
    from .grants import TOPIC_FIELDS

    return BrokerTopic.objects.filter(slug=slug).values_list(*TOPIC_FIELDS).first()


def garbage_collect(now):
    """Delete topics whose ``garbage_collect_on`` has passed; returns their ids."""
    expired = list(BrokerTopic.objects.filter(garbage_collect_on__lte=now).values_list("pk", flat=True))
    if expired:
        with suppressed():
            BrokerTopic.objects.filter(pk__in=expired).delete()
    return expired


def ping_all(now):
    """Note a ping of every DASF topic that is not a response topic; returns their slugs."""
    topics = BrokerTopic.objects.filter(supports_dasf=True, responsetopic__isnull=True)
    slugs = list(topics.values_list("slug", flat=True))
    topics.update(last_ping=now)
    return slugs


def new_message_id():
    return str(uuid.uuid4())
