"""Topic namespaces that belong to an application carried by the hub's broker (the DASF topic broker's
``dasf/``): there, who may publish, subscribe and receive is the application's decision, not the rules for
service and anonymous clients, and a PUBLISH is handed to the application instead of passed on as it is.

An application registers an object with ``prefix`` (a topic without wildcards), ``can_publish(principal,
topic)``, ``can_subscribe(principal, topic_filter)``, ``can_receive(principal, topic)``, ``async
inbound(principal, topic, payload)``, ``refused(principal, topic)`` (the ACL dropped a PUBLISH there: count
it), ``subscription_refused(principal, topic_filter)`` (count and log it) and ``async recheck()`` (asked
before a PUBLISH or SUBSCRIBE there is refused: refresh the decisions, True when they may have changed;
the broker then asks again). The decisions must be as cheap as the ACL's
own: in memory, never a database query. ``inbound`` returns None once the message is taken, or why it
refused it (``"payload"``: not a message the application takes; ``"not_authorized"``; anything else), and
the broker acknowledges it either way (MQTT 5 with the matching reason code); it raises when the message
could not be taken yet (no acknowledgement: the client sends it again). Devices never reach a namespace:
the ACL refuses them before asking the application.
"""

_registered = []


def register(namespace):
    if namespace not in _registered:
        _registered.append(namespace)


def unregister(namespace):
    if namespace in _registered:
        _registered.remove(namespace)


def owner(topic):
    """The namespace ``topic`` lies in, or None."""
    for namespace in _registered:
        prefix = namespace.prefix
        if topic.startswith(prefix) and (len(topic) == len(prefix) or topic[len(prefix)] == "/"):
            return namespace
    return None


def registered():
    return tuple(_registered)
