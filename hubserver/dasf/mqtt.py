"""DASF topics over MQTT: the topic ``<DASF_MQTT_PREFIX>/<slug>`` (``dasf/<slug>``) of the hub's MQTT broker
is the DASF topic ``<slug>``, both ways.

- An MQTT client publishing a DASF message (the JSON object a WebSocket producer sends) to ``dasf/<slug>``
  produces it to the topic: stored as the topic's rule says, delivered to its DASF consumers, and the
  PUBLISH acknowledged after the commit. A payload that is not a DASF message is dropped (acknowledged:
  MQTT 3.1.1 has no refusal), counted and logged.
- Every message producers send to the topic (over WebSocket or MQTT) is also published on ``dasf/<slug>``
  to the MQTT clients subscribed to it, when it is delivered to the topic's DASF consumers (after its
  commit), at QoS 1 (or the subscription's lower QoS). The broker's own pings and API-info requests stay
  on the WebSocket side.

Who may do that is the topic's permissions, decided in memory from the service's snapshot: publishing needs
``can_produce`` (or a public topic; a topic that does not exist yet is created for a user with
``dasf_broker.add_brokertopic`` when ``DASF_CREATE_TOPIC_ON_MESSAGE`` allows), receiving needs
``can_consume``. A service client acts as its Django user, an anonymous client (``ALLOW_ANONYMOUS``) as the
anonymous user. Devices never reach DASF topics. MQTT subscribers do not acknowledge in DASF's sense: a
stored message stays stored for the topic's DASF consumers.
"""

import asyncio
import logging

import orjson

from ..access.principals import AnonymousPrincipal, HubPrincipal, ServicePrincipal
from ..conf import hub_settings
from ..exceptions import ConfigurationError
from ..routing.throttle import ThrottledLog
from . import app_settings
from .constants import SLUG_RE
from .grants import CAN_CONSUME

logger = logging.getLogger("hubserver.dasf")


class MqttProducer:
    """What ``DasfService.produce`` needs of a producer, for one MQTT PUBLISH: its principal and topic, and
    the acknowledgement it waits for."""

    __slots__ = ("ack", "future", "principal", "slug")

    def __init__(self, principal, slug, future):
        self.principal = principal
        self.slug = slug
        self.future = future
        self.ack = None

    def acknowledge(self, ack):
        self.ack = ack
        if not self.future.done():
            self.future.set_result(ack)


class DasfNamespace:
    """The ACL and the two directions for ``<prefix>/...``; registered with ``hubserver.access.namespaces``
    while the service runs."""

    def __init__(self, service, prefix=None):
        self.service = service
        self.prefix = prefix or app_settings.DASF_MQTT_PREFIX
        self._base = self.prefix + "/"
        devices = hub_settings.TOPIC_PREFIX
        if self._base.startswith(devices + "/") or self.prefix == devices or devices.startswith(self._base):
            raise ConfigurationError(
                f"DASF_MQTT_PREFIX {self.prefix!r} overlaps the device namespace {devices!r} (TOPIC_PREFIX)"
            )
        self.publishers = []  # callables (topic, payload bytes) of the engines that carry MQTT subscribers
        self.counts = {"received": 0, "dropped": 0, "published": 0, "subscriptions_refused": 0}
        self._log = ThrottledLog(logger)

    def owns(self, topic):
        return topic.startswith(self._base) or topic == self.prefix

    def slug_of(self, topic):
        """The DASF topic of an MQTT topic under the prefix, or None when it names none (``dasf/a/b``)."""
        slug = topic[len(self._base) :] if topic.startswith(self._base) else ""
        return slug if SLUG_RE.fullmatch(slug) else None

    def _user_id(self, principal):
        if isinstance(principal, ServicePrincipal):
            return principal.user_id
        if isinstance(principal, AnonymousPrincipal):
            return self.service.grants.anonymous_id
        return None  # devices, and anything unknown

    # The ACL ----------------------------------------------------------------------------------------------

    def _lookup(self, principal, topic):
        """Who is asking and about which topic: ``(user_id, snapshot, topic or None)``, or None when the
        client is not a DASF user or the MQTT topic is not a DASF one."""
        user_id = self._user_id(principal)
        slug = self.slug_of(topic)
        if user_id is None or slug is None:
            return None
        snapshot = self.service.grants
        return user_id, snapshot, snapshot.topics.get(slug)

    def can_publish(self, principal, topic):
        if isinstance(principal, HubPrincipal):
            return True
        found = self._lookup(principal, topic)
        if found is None:
            return False
        user_id, snapshot, known = found
        if known is None:
            return (
                app_settings.DASF_CREATE_TOPIC_ON_MESSAGE
                and not isinstance(principal, AnonymousPrincipal)
                and snapshot.may_create_topics(user_id)
            )
        return snapshot.may_produce(user_id, known)

    def can_subscribe(self, principal, topic_filter):
        """A filter naming one existing topic needs ``can_consume`` on it (refused, counted and logged
        otherwise). A wildcard filter (``dasf/#``), or a topic that does not exist yet (a response topic about
        to be created), is accepted: what reaches the client is decided per message (``can_receive``)."""
        return self._subscribe_problem(principal, topic_filter) is None

    def _subscribe_problem(self, principal, topic_filter):
        if isinstance(principal, HubPrincipal):
            return None
        user_id = self._user_id(principal)
        if user_id is None:
            return "devices never reach DASF topics"
        if "+" in topic_filter or "#" in topic_filter:
            return None
        slug = self.slug_of(topic_filter)
        if slug is None:
            return "it names no DASF topic"
        snapshot = self.service.grants
        known = snapshot.topics.get(slug)
        if known is None or snapshot.allows(user_id, CAN_CONSUME, known):
            return None
        return "it needs the can_consume permission"

    def subscription_refused(self, principal, topic_filter):
        """The broker refused a SUBSCRIBE here (after ``recheck``): counted and logged."""
        self.counts["subscriptions_refused"] += 1
        who = _name(principal)
        why = self._subscribe_problem(principal, topic_filter) or "refused"
        self._log.warning(
            "subscribe", (who, topic_filter), "DASF over MQTT: %s may not subscribe to %r: %s", who, topic_filter, why
        )

    def can_receive(self, principal, topic):
        if isinstance(principal, HubPrincipal):
            return True
        found = self._lookup(principal, topic)
        if found is None:
            return False
        user_id, snapshot, known = found
        return known is not None and snapshot.allows(user_id, CAN_CONSUME, known)

    async def recheck(self):
        """Before a refusal: make sure the permissions are fresh (a grant another process made a moment ago,
        with ``hubserver dasf_topic`` or a shell). True when the decisions may have changed."""
        return await self.service.recheck()

    # MQTT -> DASF -----------------------------------------------------------------------------------------

    async def inbound(self, principal, topic, payload):
        """Produce an MQTT PUBLISH to its DASF topic; returns None once it is committed, or why it was
        refused (``"payload"``, ``"not_authorized"``: dropped, logged and counted). Raises when it could not
        be taken (the hub is stopping, the batch failed): the PUBLISH is not acknowledged and the client
        sends it again."""
        slug = self.slug_of(topic)
        try:
            content = orjson.loads(payload)
        except orjson.JSONDecodeError:
            content = None
        if slug is None or not isinstance(content, dict):
            self._drop(principal, topic, "the payload is not a DASF message (a JSON object)")
            return "payload"
        producer = MqttProducer(_Principal.of(principal, self._user_id(principal)), slug, None)
        producer.future = asyncio.get_running_loop().create_future()
        await self.service.produce(producer, content)
        ack = await producer.future
        result = str(ack.get("result"))
        if result == "ok":
            self.counts["received"] += 1
            return None
        if "send the message again" in result or "send it again" in result:
            raise ConnectionAbortedError(result)
        self._drop(principal, topic, result)
        return "not_authorized" if " may not " in result else "payload"

    def refused(self, principal, topic):
        """The ACL refused a PUBLISH to ``topic`` (no ``can_produce``, or a device): dropped, counted here (the
        broker's bridge logs it)."""
        self.counts["dropped"] += 1

    def _drop(self, principal, topic, reason):
        self.counts["dropped"] += 1
        who = _name(principal)
        self._log.warning("mqtt", (who, topic), "DASF over MQTT: %s on %r dropped: %s", who, topic, reason)

    # DASF -> MQTT -----------------------------------------------------------------------------------------

    def outbound(self, slug, payload):
        """A message delivered to ``slug``: publish it on ``<prefix>/<slug>`` to the MQTT subscribers."""
        if not self.publishers:
            return
        topic = self._base + slug
        data = payload.encode()
        for publish in self.publishers:
            if publish(topic, data, 1):  # stored and committed: QoS 1 (or the subscription's lower QoS)
                self.counts["published"] += 1


def _name(principal):
    return getattr(principal, "username", None) or getattr(principal, "kind", "?")


class _Principal:
    """The DASF side's view of an MQTT client: ``user_id``, ``anonymous`` and a name for messages."""

    __slots__ = ("anonymous", "user_id", "username")

    def __init__(self, user_id, username, anonymous):
        self.user_id = user_id
        self.username = username
        self.anonymous = anonymous

    @classmethod
    def of(cls, principal, user_id):
        if isinstance(principal, AnonymousPrincipal):
            return cls(user_id, "anonymous", True)
        return cls(user_id, principal.username, False)

    def __str__(self):
        return "the anonymous user" if self.anonymous else f"user {self.username!r}"
