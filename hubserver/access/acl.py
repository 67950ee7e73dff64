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
"""

from ..conf import hub_settings
from .principals import AnonymousPrincipal, DevicePrincipal, HubPrincipal, ServicePrincipal
from .topics import filter_within, has_wildcards, in_namespace, is_valid_filter, is_valid_topic, topic_matches

DEVICE_PUBLISH_SUFFIXES = frozenset({"data", "status", "reply"})
DEVICE_SUBSCRIBE_SUFFIX = "cmd"


def _prefix():
    return hub_settings.TOPIC_PREFIX


def _device_base(principal, prefix):
    """``{prefix}/{type}/{id}/``, or None if the principal's names cannot form topics safely."""
    type_name, device_id = principal.type_name, principal.device_id
    for level in (type_name, device_id):
        if not level or "/" in level or "+" in level or "#" in level or "\x00" in level:
            return None
    return f"{prefix}/{type_name}/{device_id}/"


def _is_cmd_topic(topic, prefix):
    return topic.endswith("/cmd") and in_namespace(topic, prefix)


def _denied_for_anonymous(topic):
    return any(topic_matches(pattern, topic) for pattern in hub_settings.ANONYMOUS_DENY)


def can_publish(principal, topic):
    """May ``principal`` put a message on ``topic`` (a PUBLISH, a Last Will, a retained message)?"""
    if not is_valid_topic(topic):
        return False
    if isinstance(principal, HubPrincipal):
        return True
    prefix = _prefix()
    if topic.startswith("$") or _is_cmd_topic(topic, prefix):
        return False
    if isinstance(principal, DevicePrincipal):
        base = _device_base(principal, prefix)
        return base is not None and topic.startswith(base) and topic[len(base) :] in DEVICE_PUBLISH_SUFFIXES
    if isinstance(principal, ServicePrincipal):
        return not in_namespace(topic, prefix)
    if isinstance(principal, AnonymousPrincipal):
        return not in_namespace(topic, prefix) and not _denied_for_anonymous(topic)
    return False


def can_subscribe(principal, topic_filter):
    """May ``principal`` subscribe with ``topic_filter``? Delivery is checked again by ``can_receive``."""
    if not is_valid_filter(topic_filter):
        return False
    if isinstance(principal, (HubPrincipal, ServicePrincipal)):
        return True
    prefix = _prefix()
    if isinstance(principal, DevicePrincipal):
        if has_wildcards(topic_filter):
            return False
        base = _device_base(principal, prefix)
        return base is not None and topic_filter == base + DEVICE_SUBSCRIBE_SUFFIX
    if isinstance(principal, AnonymousPrincipal):
        if topic_filter.startswith("$") or filter_within(prefix + "/#", topic_filter):
            return False
        return not any(filter_within(pattern, topic_filter) for pattern in hub_settings.ANONYMOUS_DENY)
    return False


def can_receive(principal, topic):
    """May a message on ``topic`` be delivered to ``principal`` (live or retained)?"""
    if isinstance(principal, (HubPrincipal, ServicePrincipal)):
        return True
    prefix = _prefix()
    if isinstance(principal, DevicePrincipal):
        base = _device_base(principal, prefix)
        return base is not None and topic == base + DEVICE_SUBSCRIBE_SUFFIX
    if isinstance(principal, AnonymousPrincipal):
        return not topic.startswith("$") and not in_namespace(topic, prefix) and not _denied_for_anonymous(topic)
    return False
