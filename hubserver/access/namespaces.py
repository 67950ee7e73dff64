"""Topic namespaces that belong to an application carried by the hub's broker (the DASF topic broker's
``dasf/``): there, who may publish, subscribe and receive is the application's decision, not the rules for
service and anonymous clients, and a PUBLISH is handed to the application instead of passed on as it is.

An application registers an object with ``prefix`` (a topic without wildcards), ``can_publish(principal,
topic)``, ``can_subscribe(principal, topic_filter)``, ``can_receive(principal, topic)`` and ``async
inbound(principal, topic, payload)``. The decisions must be as cheap as the ACL's own: in memory, never a
database query. ``inbound`` returns once the message is taken (the broker then acknowledges it) and raises
when it was not (no acknowledgement: the client sends it again). Devices never reach a namespace: the ACL
refuses them before asking the application.
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
