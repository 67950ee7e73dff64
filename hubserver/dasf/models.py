"""Topics, their stored messages and response topics.

Who may do what on a topic is an object permission (django-guardian) on ``BrokerTopic``: ``can_produce``
(send messages to it), ``can_consume`` (receive them) and ``can_view_status`` (its availability), held by
users, groups or the anonymous user; a global permission of the same name counts for every topic, and
``is_public`` lets anyone produce. The WebSocket protocol never asks the database for these decisions on
the message path: ``hubserver.dasf.grants`` keeps them in memory.
"""

import datetime as dt
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from django.utils.functional import cached_property

from . import app_settings
from .constants import SLUG_MAX_LENGTH, SLUG_PATTERN, PropertyKeys, reserved_reason

PERMISSIONS = ("can_produce", "can_consume", "can_view_status")


def validate_topic_slug(value):
    reason = reserved_reason(value)
    if reason:
        raise ValidationError(reason)


class BrokerTopicQuerySet(models.QuerySet):
    """Availability filters that match ``BrokerTopic.availability``."""

    @staticmethod
    def _window_start():
        return timezone.now() - dt.timedelta(seconds=app_settings.availability_window())

    @staticmethod
    def _grace():
        return dt.timedelta(seconds=app_settings.DASF_PONG_TIMEOUT)

    def _combine(self, args, query):
        if args:
            query = args[0] & query
            args = args[1:]
        return self.filter(query, *args)

    def filter_online(self, *args, **kwargs):
        """Topics that answered their last ping (pinged within the availability window)."""
        query = (
            models.Q(supports_dasf=True)
            & models.Q(last_ping__gte=self._window_start())
            & models.Q(last_pong__gte=models.F("last_ping") - self._grace())
        )
        return self._combine(args, query).filter(**kwargs)

    def filter_offline(self, *args):
        """Topics that did not answer their last ping (pinged within the availability window)."""
        query = (
            models.Q(supports_dasf=True)
            & models.Q(last_ping__gte=self._window_start())
            & (models.Q(last_pong__isnull=True) | models.Q(last_pong__lt=models.F("last_ping") - self._grace()))
        )
        return self._combine(args, query)

    def filter_unknown_availability(self, *args):
        """Topics that are not DASF topics, were never pinged, or not within the availability window."""
        query = (
            models.Q(supports_dasf=False)
            | models.Q(last_ping__isnull=True)
            | models.Q(last_ping__lt=self._window_start())
        )
        return self._combine(args, query)


class BrokerTopicManager(models.Manager.from_queryset(BrokerTopicQuerySet)):
    """The manager of broker topics (with the availability filters of ``BrokerTopicQuerySet``)."""


class BrokerTopic(models.Model):
    """A named topic producers send messages to and consumers receive them from, over WebSocket."""

    class StoreMessageChoices(models.TextChoices):
        """What the broker keeps of a topic's messages."""

        DISABLED = "disabled", "Do not store messages"
        CACHE = "cache", "Keep a message until one consumer acknowledged it"
        CACHEALL = "cacheall", "Keep a message until every consumer acknowledged it"
        STORE = "store", "Keep messages forever"

    objects = BrokerTopicManager()

    slug = models.SlugField(
        unique=True,
        max_length=SLUG_MAX_LENGTH,
        validators=[RegexValidator(f"^{SLUG_PATTERN}$"), validate_topic_slug],
        help_text="The topic's name: producers connect to ws/<slug>/, consumers to ws/<slug>/<subscription>/.",
    )
    is_public = models.BooleanField(default=False, help_text="May anyone (even anonymous clients) produce to it?")
    date_created = models.DateTimeField(auto_now_add=True, help_text="When the topic was created.")
    last_ping = models.DateTimeField(null=True, blank=True, help_text="When the broker last pinged its consumers.")
    last_pong = models.DateTimeField(null=True, blank=True, help_text="When a consumer last answered.")
    supports_dasf = models.BooleanField(
        default=True, help_text="Do its consumers speak DASF (answer pings and API-info requests)?"
    )
    store_messages = models.CharField(
        max_length=20,
        null=True,
        blank=True,
        choices=[(None, "The server's default"), *StoreMessageChoices.choices],
        help_text="What the broker keeps of its messages (empty: DASF_STORE_SOURCE/RESPONSE_MESSAGES).",
    )
    garbage_collect_on = models.DateTimeField(
        null=True, blank=True, help_text="When the topic is deleted (response topics nobody needs any more)."
    )
    api_info = models.JSONField(
        default=dict, blank=True, encoder=DjangoJSONEncoder, help_text="The API its backend last described."
    )

    class Meta:
        permissions = (
            ("can_produce", "Can publish messages to the topic (Producer)."),
            ("can_consume", "Can consume messages to the topic (Consumer)."),
            ("can_view_status", "Can view the status of the consumer."),
        )

    def __str__(self):
        return self.slug

    # Who -----------------------------------------------------------------------------------------------

    def _users_with(self, perm):
        from guardian.shortcuts import get_users_with_perms

        return get_users_with_perms(self, only_with_perms_in=[perm], with_group_users=True)

    @property
    def consumers(self):
        """Users holding ``can_consume`` on this topic (directly or through a group)."""
        return self._users_with("can_consume")

    @property
    def producers(self):
        """Users holding ``can_produce`` on this topic (directly or through a group)."""
        return self._users_with("can_produce")

    @property
    def status_viewers(self):
        """Users holding ``can_view_status`` on this topic (directly or through a group)."""
        return self._users_with("can_view_status")

    # What ----------------------------------------------------------------------------------------------

    @property
    def is_response_topic(self):
        """Is this topic a ``ResponseTopic`` (made for the answers to a producer's requests)?"""
        return hasattr(self, "responsetopic")

    @property
    def effective_store_messages(self):
        """The store rule in force: the topic's own, else the server's for its kind of topic."""
        return effective_store(self.store_messages, self.is_response_topic)

    @cached_property
    def availability(self):
        """True (answered its last ping), False (did not), or None (unknown: not a DASF topic, never pinged,
        or last pinged longer ago than the availability window)."""
        return availability(self.supports_dasf, self.last_ping, self.last_pong)

    # Messages ------------------------------------------------------------------------------------------

    def get_outstanding_messages(self, user=None):
        """Stored messages still to be delivered: to ``user`` (not yet acknowledged by them), or, without a
        user, those nobody acknowledged yet. Oldest first."""
        messages = self.brokermessage_set.all()
        if user is not None:
            return messages.exclude(delivered_to__pk=user.pk).order_by("date_created", "pk")
        messages = messages.filter(delivered_to=None)
        return messages.order_by("date_created", "pk")

    def create_and_send_message(self, user, content):
        """Store ``content`` (as the topic's rule says) as a message from ``user`` and send it to the
        topic's consumers. For code outside the WebSocket path (the shell, admin actions); returns the
        stored ``BrokerMessage`` or None."""
        from .service import send_to_topic

        content = dict(content)
        message_id = str(content.setdefault("messageId", str(uuid.uuid4())))
        created = timezone.now()
        content["publishTime"] = created.isoformat()
        props = content.get("properties") or {}
        message = None
        if self.effective_store_messages != self.StoreMessageChoices.DISABLED:
            message = BrokerMessage.objects.create(
                message_id=message_id,
                topic=self,
                user=user,
                content=content,
                date_created=created,
                context=_int_or_none(props.get(PropertyKeys.REQUEST_CONTEXT.value)),
            )
        send_to_topic(self.slug, content)
        return message

    def ping(self):
        """Send a ping to the topic's consumers (a DASF backend answers with a pong) and note the time."""
        from .service import ping_topic

        if not self.supports_dasf:
            return
        self.last_ping = timezone.now()
        BrokerTopic.objects.filter(pk=self.pk).update(last_ping=self.last_ping)
        self.__dict__.pop("availability", None)
        ping_topic(self.slug)

    # URLs ----------------------------------------------------------------------------------------------

    @classmethod
    def build_websocket_url(cls, request, route=None):
        """``ws(s)://host/<DASF_WEBSOCKET_URL_ROUTE><route>``, from ``ROOT_URL`` or the request's host."""
        path = "/" + app_settings.DASF_WEBSOCKET_URL_ROUTE + (route or "")
        script_name = getattr(settings, "FORCE_SCRIPT_NAME", None)
        if script_name:
            path = script_name.rstrip("/") + path
        root = app_settings.ROOT_URL
        http_url = root + path if root else request.build_absolute_uri(path)
        return "ws" + http_url[len("http") :]

    def get_websocket_url(self, request):
        """The URL producers connect to for this topic."""
        return self.build_websocket_url(request, self.slug + "/")


def effective_store(store_messages, is_response_topic):
    """The store rule of a topic with this field value: its own, or the server's default for its kind."""
    if store_messages:
        return BrokerTopic.StoreMessageChoices(store_messages)
    option = app_settings.DASF_STORE_RESPONSE_MESSAGES if is_response_topic else app_settings.DASF_STORE_SOURCE_MESSAGES
    return BrokerTopic.StoreMessageChoices(option.value)


def availability(supports_dasf, last_ping, last_pong, now=None):
    """The availability rule (see ``BrokerTopic.availability``) on plain values."""
    now = now or timezone.now()
    if not supports_dasf or last_ping is None:
        return None
    if last_ping < now - dt.timedelta(seconds=app_settings.availability_window()):
        return None
    return last_pong is not None and last_pong >= last_ping - dt.timedelta(seconds=app_settings.DASF_PONG_TIMEOUT)


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class BrokerMessage(models.Model):
    """A message a producer sent to a topic, kept as the topic's store rule says."""

    message_id = models.UUIDField(db_index=True, help_text="The message's id (its messageId).")
    context = models.IntegerField(null=True, blank=True, help_text="The producer's request context, if any.")
    topic = models.ForeignKey(BrokerTopic, on_delete=models.CASCADE, help_text="The topic it was sent to.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, help_text="Who sent it.")
    content = models.JSONField(help_text="The message as it is delivered to consumers.")
    delivered_to = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="brokermessage_set_delivered",
        help_text="The consumers that acknowledged it.",
    )
    date_created = models.DateTimeField(help_text="When the broker received it.")

    class Meta:
        constraints = [models.UniqueConstraint(name="unique_message_id_for_topic", fields=("message_id", "topic"))]

    def __str__(self):
        return f"Message {self.message_id} for topic {self.topic}"

    @property
    def delivered_to_all(self):
        """Has every consumer of its topic (everyone holding can_consume) acknowledged it?"""
        delivered = set(self.delivered_to.values_list("pk", flat=True))
        return not self.topic.consumers.exclude(pk__in=delivered).exists()

    @property
    def is_response(self):
        """Was it sent to a response topic (an answer to a request)?"""
        return self.topic.is_response_topic

    def send(self):
        """Send it to its topic's connected consumers again."""
        from .service import send_to_topic

        send_to_topic(self.topic.slug, self.content)


class ResponseTopic(BrokerTopic):
    """A topic made for the answers to a producer's requests (the ``response_topic`` of its messages).

    Created when first named: the requesting user may consume it, and the consumers of the topic the request
    went to may produce to it."""

    is_response_for = models.ForeignKey(
        BrokerTopic,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="responsetopics",
        help_text="The topic whose requests it answers.",
    )
    source_messages = models.ManyToManyField(
        BrokerMessage, blank=True, help_text="The stored requests whose answers go to this topic."
    )

    @property
    def is_response_topic(self):
        return True

    def __str__(self):
        return f"Response topic {self.slug}"
