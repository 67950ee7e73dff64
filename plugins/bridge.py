"""The router bridge: every permitted PUBLISH from a device goes to the MessageRouter, and the broker
acknowledges it only once the router has committed it (a PUBACK before commit loses
acknowledged messages on a crash).

The bridge turns a topic into the router's parts: a device may publish only to its own ``data``,
``status`` and ``reply`` topics, so the ACL check that admits the message also names its kind, and the
type and device id are the device's own (``hubserver.access.acl.device_publish_kind``)."""

import enum
import logging
from collections import Counter

from hubserver.access import namespaces
from hubserver.access.acl import can_publish, device_publish_kind
from hubserver.access.principals import DevicePrincipal
from hubserver.routing.properties import MessageProperties
from hubserver.routing.throttle import ThrottledLog, clip

from .mqtt5 import reasons
from .session import principal_of

# What an application's refusal of a PUBLISH (access/namespaces.py) is as an MQTT 5 reason code.
_REFUSALS = {"payload": reasons.PAYLOAD_FORMAT_INVALID, "not_authorized": reasons.NOT_AUTHORIZED}

logger = logging.getLogger("hubserver.mqtt.bridge")


class Outcome(enum.Enum):
    DELIVER = "deliver"  # acknowledge, and pass on to subscribers
    DROP = "drop"  # acknowledge (MQTT 3.1.1 has no negative ack), store nothing, deliver nothing


class RouterBridge:
    """Decides, per inbound PUBLISH, whether it is stored, delivered and acknowledged.

    An exception out of ``inbound`` means "not stored": the handler sends no acknowledgement and closes the
    connection, so the client sends the message again when it reconnects.
    """

    def __init__(self, router):
        self.router = router
        self.broker = None  # the HubBroker stored messages are delivered through (set once it exists)
        self.refused = Counter()
        self.closing = False
        self._log = ThrottledLog(logger)

    async def submit(self, session, topic, payload, qos, properties=None):
        """The reader's short path for a device's PUBLISH: the router's future, or None when the ACL refuses
        it (acknowledge it, store and deliver nothing). Raises when it cannot be queued (do not acknowledge).
        ``properties``: the message's MQTT 5 properties (``plugins/mqtt5/session.message_properties``), of
        which the router stores content type, correlation data and user properties with it."""
        if self.closing:
            raise ConnectionAbortedError("the hub is stopping")
        principal = principal_of(session)
        kind = device_publish_kind(principal, topic) if isinstance(principal, DevicePrincipal) else None
        if kind is None:
            self._drop(session, topic)
            return None
        return await self.router.submit(
            kind,
            principal.type_name,
            principal.device_id,
            payload,
            qos=qos,
            client_id=session.client_id,
            properties=MessageProperties.from_mqtt(properties) if properties else None,
        )

    def _permitted(self, session, principal, topic):
        """False (counted, logged) when the ACL refuses; raises while the hub stops (do not acknowledge)."""
        if self.closing:
            raise ConnectionAbortedError("the hub is stopping")
        if principal is None or not can_publish(principal, topic):
            self._drop(session, topic)
            return False
        return True

    def _drop(self, session, topic):
        self.refused["acl"] += 1
        application = namespaces.owner(topic)
        if application is not None:  # counted as the application's too (DASF: a dropped message)
            application.refused(principal_of(session), topic)
        self._log.info(
            "acl", session.client_id, "%s may not publish to %s; dropped", clip(session.client_id), clip(topic)
        )

    def application_will(self, session, topic, payload):
        """A service or anonymous client's Last Will on an application's topic (DASF's ``dasf/<slug>``): the
        application takes it like a PUBLISH (checked, stored and delivered its way, never passed on as it is).
        Returns a coroutine, or None when ``topic`` is no application's."""
        principal = principal_of(session)
        if principal is None or isinstance(principal, DevicePrincipal):
            return None
        application = namespaces.owner(topic)
        if application is None:
            return None
        return self._application_will(session, application, principal, topic, bytes(payload or b""))

    async def _application_will(self, session, application, principal, topic, payload):
        try:
            if can_publish(principal, topic):  # again: the permission may have been taken since CONNECT
                await application.inbound(principal, topic, payload)
            else:
                self._drop(session, topic)
        except Exception as exc:
            logger.warning("%s: its Last Will on %s was not taken: %s", clip(session.client_id), clip(topic), exc)

    def deliver(self, session, topic, payload, qos, properties=None):
        """Pass a stored message on to the subscribers whose filters match it (none: nothing to do)."""
        broker = self.broker
        if broker is not None and broker.has_subscribers(topic):
            broker.deliver_nowait(session, topic, payload, qos, properties)

    async def inbound(self, session, message):
        """amqtt's path (QoS 2, RETAIN, service clients): the Outcome, once the message is committed."""
        principal = principal_of(session)
        topic = message.topic
        if principal is not None and not isinstance(principal, DevicePrincipal) and not can_publish(principal, topic):
            application = namespaces.owner(topic)
            if application is not None:  # before refusing: a grant made elsewhere a moment ago counts
                await application.recheck()
        if not self._permitted(session, principal, topic):
            _refused(message, "acl", "")
            return Outcome.DROP
        if not isinstance(principal, DevicePrincipal):
            application = namespaces.owner(topic)
            if application is not None:  # an application's topic (DASF): it takes the message, or raises
                refusal = await application.inbound(principal, topic, bytes(message.data))
                if refusal is not None and hasattr(message, "refusal"):  # MQTT 5: the PUBACK says why
                    message.refusal = _REFUSALS.get(refusal, reasons.IMPLEMENTATION_SPECIFIC_ERROR)
                return Outcome.DROP  # acknowledged; the application delivers it (to MQTT subscribers too)
            return Outcome.DELIVER  # service and anonymous clients publish outside the device namespace
        properties = getattr(message, "properties", None)  # an MQTT 5 message's own
        future = await self.router.submit(
            device_publish_kind(principal, topic),  # not None: can_publish admitted the device's own topic
            principal.type_name,
            principal.device_id,
            bytes(message.data),
            qos=message.qos or 0,
            client_id=session.client_id,
            properties=MessageProperties.from_mqtt(properties) if properties else None,
        )
        if not message.qos:
            future.add_done_callback(_log_failure)
            return Outcome.DELIVER
        result = await future
        if result.stored:
            return Outcome.DELIVER
        _refused(message, result.reason, result.error)
        return Outcome.DROP


def _refused(message, reason, detail):
    """Tell an MQTT 5 message (which has room for it) why it was refused: its acknowledgement says so."""
    if hasattr(message, "refused"):
        message.refused = (reason, detail)


def _log_failure(future):
    if not future.cancelled() and future.exception() is not None:
        logger.warning("a QoS 0 message was lost: %s", future.exception())
