"""The amqtt topic plugin: publish, subscribe and delivery decisions from ``hubserver.access.acl``.

In memory and O(1): it never touches the database. ``check()`` is also called directly by the hub's broker
on the delivery path, which skips amqtt's per-call task fan-out.
"""

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin

from hubserver.access.acl import can_publish, can_receive, can_subscribe

from .session import principal_of

_RULES = {Action.PUBLISH: can_publish, Action.SUBSCRIBE: can_subscribe, Action.RECEIVE: can_receive}


def check(session, topic, action):
    """True when the session's principal may ``action`` on ``topic``; unauthenticated sessions may nothing."""
    principal = principal_of(session)
    if principal is None or topic is None:
        return False
    return _RULES[action](principal, topic)


class HubTopicPlugin(BaseTopicPlugin):
    async def topic_filtering(self, *, session=None, topic=None, action=None):
        return check(session, topic, action)
