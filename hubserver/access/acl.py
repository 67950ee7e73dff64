"""The topic ACL: pure, in memory, O(1) per call, never a database query.

It is asked on every PUBLISH, SUBSCRIBE, delivery (including retained messages) and Last Will, so a
decision only reads the principal fixed at CONNECT and the settings. The device namespace is
``{TOPIC_PREFIX}`` and everything under it.

| principal | publish | subscribe | receive |
|---|---|---|---|
| device | only its own ``data``, ``status``, ``reply`` | exactly its own ``cmd`` (no wildcards) | its own ``cmd`` |
| service | anywhere outside the namespace | any filter | anything |
| anonymous | outside the namespace and ``ANONYMOUS_DENY`` | filters not lying inside either | outside both |
| hub | anything | anything | anything |

Everyone: topics with wildcards are never publishable, no one but the hub publishes on a ``cmd`` topic
of the namespace or on a ``$`` topic (reserved for the broker, MQTT 4.7.2), and anonymous clients never
see ``$`` topics. A broad anonymous filter such as ``#`` is accepted, and delivery (``can_receive``)
then withholds namespace and denied topics from it.

Topics of an application's namespace (``access/namespaces.py``: the DASF topic broker's ``dasf/``) are the
application's to decide for service and anonymous clients, also in memory; devices never reach them.
"""

from ..conf import hub_settings
from ..vocabulary import Kind, device_topic_base, in_namespace, inbound_kind, is_cmd_topic, is_topic_level
from . import namespaces
from .principals import AnonymousPrincipal, DevicePrincipal, HubPrincipal, ServicePrincipal
from .topics import filter_within, has_wildcards, is_valid_filter, is_valid_topic, topic_matches


def _prefix():
    return hub_settings.TOPIC_PREFIX


def _device_base(principal, prefix):
    """``{prefix}/{type}/{id}/``, or None if the principal's names cannot form topics safely."""
    if not is_topic_level(principal.type_name) or not is_topic_level(principal.device_id):
        return None
    return device_topic_base(prefix, principal.type_name, principal.device_id)


def _denied_for_anonymous(topic):
    return any(topic_matches(pattern, topic) for pattern in hub_settings.ANONYMOUS_DENY)


def device_publish_kind(principal, topic):
    """The kind (``data``, ``status`` or ``reply``) of ``topic`` when it is one the device ``principal`` may
    publish to (its own), else None. The broker bridge's one check per device message, which also gives it
    the parts the router takes: the type and id are the principal's own."""
    base = _device_base(principal, _prefix())
    return inbound_kind(topic, base) if base is not None else None


def can_publish(principal, topic):
    """May ``principal`` put a message on ``topic`` (a PUBLISH, a Last Will, a retained message)?"""
    if not is_valid_topic(topic):
        return False
    if isinstance(principal, HubPrincipal):
        return True
    prefix = _prefix()
    if topic.startswith("$") or is_cmd_topic(topic, prefix):
        return False
    if isinstance(principal, DevicePrincipal):
        return device_publish_kind(principal, topic) is not None
    application = namespaces.owner(topic)
    if application is not None:
        return application.can_publish(principal, topic)
    if isinstance(principal, ServicePrincipal):
        return not in_namespace(topic, prefix)
    if isinstance(principal, AnonymousPrincipal):
        return not in_namespace(topic, prefix) and not _denied_for_anonymous(topic)
    return False


def can_subscribe(principal, topic_filter):
    """May ``principal`` subscribe with ``topic_filter``? Delivery is checked again by ``can_receive``."""
    if not is_valid_filter(topic_filter):
        return False
    if isinstance(principal, HubPrincipal):
        return True
    if not isinstance(principal, DevicePrincipal):
        application = namespaces.owner(topic_filter)
        if application is not None:
            return application.can_subscribe(principal, topic_filter)
    if isinstance(principal, ServicePrincipal):
        return True
    prefix = _prefix()
    if isinstance(principal, DevicePrincipal):
        if has_wildcards(topic_filter):
            return False
        base = _device_base(principal, prefix)
        return base is not None and topic_filter == base + Kind.CMD
    if isinstance(principal, AnonymousPrincipal):
        if topic_filter.startswith("$") or filter_within(prefix + "/#", topic_filter):
            return False
        return not any(filter_within(pattern, topic_filter) for pattern in hub_settings.ANONYMOUS_DENY)
    return False


def can_receive(principal, topic):
    """May a message on ``topic`` be delivered to ``principal`` (live or retained)?"""
    if isinstance(principal, HubPrincipal):
        return True
    if not isinstance(principal, DevicePrincipal):
        application = namespaces.owner(topic)
        if application is not None:
            return application.can_receive(principal, topic)
    if isinstance(principal, ServicePrincipal):
        return True
    prefix = _prefix()
    if isinstance(principal, DevicePrincipal):
        base = _device_base(principal, prefix)
        return base is not None and topic == base + Kind.CMD
    if isinstance(principal, AnonymousPrincipal):
        return not topic.startswith("$") and not in_namespace(topic, prefix) and not _denied_for_anonymous(topic)
    return False
