"""Who may produce to, consume from and view which topic: an in-memory index, so that no permission decision
on a message's path (WebSocket or MQTT) touches the database.

``Snapshot.load()`` reads everything the decisions need in a handful of queries: the topics, the object
permissions of users and groups on them (django-guardian's tables), the global ``dasf_broker.can_*``
permissions, the memberships of the groups that hold any of them, and the active superusers. The service
keeps one snapshot and replaces it (off the event loop) when something changes:

- in this process, Django signals on topics, guardian's permission rows, users, groups and memberships mark
  it stale; a decision that would refuse waits for the fresh one, so a grant takes effect at once;
- in another process (``hubserver dasf_topic`` while the hub runs), a cheap fingerprint of those tables,
  checked every few seconds and before a refusal, tells the hub to reload.

The hub's own writes (response topics and their grants, topics created on first message) are applied to
the snapshot directly, without a reload.
"""

import hashlib
from dataclasses import dataclass, field

from .models import PERMISSIONS, effective_store

CAN_PRODUCE, CAN_CONSUME, CAN_VIEW_STATUS = PERMISSIONS
ADD_TOPIC = "add_brokertopic"  # a global permission only: who may create topics by sending to them


@dataclass(slots=True)
class TopicInfo:
    """What the message path needs to know of a topic."""

    id: int
    slug: str
    is_public: bool
    supports_dasf: bool
    store_messages: str | None
    is_response: bool
    response_for: int | None = None
    store: str = ""  # the effective store rule, filled in by ``refresh_store``

    def refresh_store(self):
        self.store = effective_store(self.store_messages, self.is_response).value
        return self


@dataclass
class Snapshot:
    topics: dict = field(default_factory=dict)  # slug -> TopicInfo
    by_id: dict = field(default_factory=dict)  # id -> TopicInfo
    user_obj: dict = field(default_factory=dict)  # topic id -> {perm: set(user ids)}
    group_obj: dict = field(default_factory=dict)  # topic id -> {perm: set(group ids)}
    global_users: dict = field(default_factory=dict)  # perm -> set(user ids)
    global_groups: dict = field(default_factory=dict)  # perm -> set(group ids)
    groups_of: dict = field(default_factory=dict)  # user id -> frozenset(group ids), relevant groups only
    members_of: dict = field(default_factory=dict)  # group id -> set(user ids)
    superusers: frozenset = frozenset()
    anonymous_id: int | None = None
    fingerprint: str = ""

    # Decisions ------------------------------------------------------------------------------------

    def allows(self, user_id, perm, topic):
        """Does the user hold ``perm`` on ``topic`` (directly, through a group, globally, or as superuser)?"""
        if user_id in self.superusers or user_id in self.global_users.get(perm, ()):
            return True
        direct = self.user_obj.get(topic.id)
        if direct is not None and user_id in direct.get(perm, ()):
            return True
        groups = self.groups_of.get(user_id)
        if groups:
            if not groups.isdisjoint(self.global_groups.get(perm, ())):
                return True
            by_group = self.group_obj.get(topic.id)
            if by_group is not None and not groups.isdisjoint(by_group.get(perm, ())):
                return True
        return False

    def may_produce(self, user_id, topic):
        return topic.is_public or self.allows(user_id, CAN_PRODUCE, topic)

    def may_create_topics(self, user_id):
        """Does the user hold ``dasf_broker.add_brokertopic`` (directly, through a group, as superuser)?"""
        if user_id in self.superusers or user_id in self.global_users.get(ADD_TOPIC, ()):
            return True
        groups = self.groups_of.get(user_id)
        return bool(groups) and not groups.isdisjoint(self.global_groups.get(ADD_TOPIC, ()))

    def object_holders(self, perm, topic_id):
        """User ids holding ``perm`` on the topic as an object permission (directly or through a group):
        the topic's ``consumers`` / ``producers`` as the model defines them."""
        users = set(self.user_obj.get(topic_id, {}).get(perm, ()))
        for group_id in self.group_obj.get(topic_id, {}).get(perm, ()):
            users |= self.members_of.get(group_id, set())
        return users

    # The hub's own changes --------------------------------------------------------------------------

    def add_topic(self, topic):
        old = self.topics.get(topic.slug)
        if old is not None and old.id != topic.id:
            self.remove_topic(old.id)
        self.topics[topic.slug] = topic
        self.by_id[topic.id] = topic

    def remove_topic(self, topic_id):
        topic = self.by_id.pop(topic_id, None)
        if topic is not None and self.topics.get(topic.slug) is topic:
            del self.topics[topic.slug]
        self.user_obj.pop(topic_id, None)
        self.group_obj.pop(topic_id, None)

    def grant_user(self, user_id, perm, topic_id):
        self.user_obj.setdefault(topic_id, {}).setdefault(perm, set()).add(user_id)

    def grant_group(self, group_id, perm, topic_id):
        self.group_obj.setdefault(topic_id, {}).setdefault(perm, set()).add(group_id)

    def refresh_store_rules(self):
        for topic in self.by_id.values():
            topic.refresh_store()


def topic_info_from_row(row):
    """A TopicInfo from ``(id, slug, is_public, supports_dasf, store_messages, response ptr, response_for)``."""
    topic_id, slug, is_public, supports_dasf, store_messages, response_ptr, response_for = row
    return TopicInfo(
        topic_id, slug, is_public, supports_dasf, store_messages or None, response_ptr is not None, response_for
    ).refresh_store()


TOPIC_FIELDS = (
    "id",
    "slug",
    "is_public",
    "supports_dasf",
    "store_messages",
    "responsetopic__brokertopic_ptr_id",
    "responsetopic__is_response_for_id",
)


def load():
    """(sync, in a thread) A fresh Snapshot of every topic and every grant that decides on them."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group, Permission
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from .models import BrokerTopic

    user_model = get_user_model()
    snapshot = Snapshot()
    # First: a change made while the tables are read then shows as a different fingerprint next time.
    snapshot.fingerprint = fingerprint()
    for row in BrokerTopic.objects.values_list(*TOPIC_FIELDS):
        snapshot.add_topic(topic_info_from_row(row))

    content_type = _content_type()
    for user_id, object_pk, codename in UserObjectPermission.objects.filter(
        content_type=content_type, permission__codename__in=PERMISSIONS
    ).values_list("user_id", "object_pk", "permission__codename"):
        snapshot.grant_user(user_id, codename, int(object_pk))
    for group_id, object_pk, codename in GroupObjectPermission.objects.filter(
        content_type=content_type, permission__codename__in=PERMISSIONS
    ).values_list("group_id", "object_pk", "permission__codename"):
        snapshot.grant_group(group_id, codename, int(object_pk))

    permissions = Permission.objects.filter(content_type=content_type, codename__in=(*PERMISSIONS, ADD_TOPIC))
    for user_id, codename in user_model.user_permissions.through.objects.filter(permission__in=permissions).values_list(
        "user_id", "permission__codename"
    ):
        snapshot.global_users.setdefault(codename, set()).add(user_id)
    for group_id, codename in Group.permissions.through.objects.filter(permission__in=permissions).values_list(
        "group_id", "permission__codename"
    ):
        snapshot.global_groups.setdefault(codename, set()).add(group_id)

    relevant_groups = set()
    for grants in snapshot.group_obj.values():
        for group_ids in grants.values():
            relevant_groups |= group_ids
    for group_ids in snapshot.global_groups.values():
        relevant_groups |= group_ids
    groups_of = {}
    for user_id, group_id in user_model.groups.through.objects.filter(group_id__in=relevant_groups).values_list(
        "user_id", "group_id"
    ):
        groups_of.setdefault(user_id, set()).add(group_id)
        snapshot.members_of.setdefault(group_id, set()).add(user_id)
    snapshot.groups_of = {user_id: frozenset(groups) for user_id, groups in groups_of.items()}
    snapshot.superusers = frozenset(
        user_model.objects.filter(is_superuser=True, is_active=True).values_list("pk", flat=True)
    )
    snapshot.anonymous_id = anonymous_user().pk
    return snapshot


def fingerprint():
    """(sync) A short digest that changes whenever anything ``load()`` reads may have changed.

    Counts and highest ids catch inserted and deleted rows; the flags of topics that are not response topics
    (few, and changed by people) are hashed whole. Response topics change only through the hub itself."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models import Count, Max
    from guardian.models import GroupObjectPermission, UserObjectPermission

    from .models import BrokerTopic

    user_model = get_user_model()
    content_type = _content_type()
    parts = []
    for queryset in (
        UserObjectPermission.objects.filter(content_type=content_type),
        GroupObjectPermission.objects.filter(content_type=content_type),
        user_model.groups.through.objects.all(),
        user_model.user_permissions.through.objects.filter(permission__content_type=content_type),
        Group.permissions.through.objects.filter(permission__content_type=content_type),
        BrokerTopic.objects.all(),
    ):
        parts.append(tuple(queryset.aggregate(n=Count("pk"), top=Max("pk")).values()))
    parts.append(
        tuple(
            BrokerTopic.objects.filter(responsetopic__isnull=True)
            .order_by("pk")
            .values_list("pk", "slug", "is_public", "supports_dasf", "store_messages")
        )
    )
    parts.append(tuple(user_model.objects.filter(is_superuser=True, is_active=True).order_by("pk").values_list("pk")))
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def _content_type():
    from django.contrib.contenttypes.models import ContentType

    from .models import BrokerTopic

    return ContentType.objects.get_for_model(BrokerTopic)


def anonymous_user():
    """(sync) django-guardian's anonymous user (the row that holds the anonymous user's permissions)."""
    from django.contrib.auth import get_user_model
    from guardian.conf import settings as guardian_settings
    from guardian.utils import get_anonymous_user

    user_model = get_user_model()
    try:
        return get_anonymous_user()
    except user_model.DoesNotExist:
        user, _ = user_model.objects.get_or_create(**{user_model.USERNAME_FIELD: guardian_settings.ANONYMOUS_USER_NAME})
        return user
