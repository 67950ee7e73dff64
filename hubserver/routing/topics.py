"""Device topics: ``{prefix}/{type}/{device_id}/{kind}``, parsed without regexes on the hot path.

The prefix comes from settings and may itself contain '/'. Devices publish ``data``, ``status`` and
(command) ``reply``; ``cmd`` is the hub's outbound topic and is never routed.
"""

import re
from dataclasses import dataclass

DATA = "data"
STATUS = "status"
REPLY = "reply"
CMD = "cmd"
INBOUND_KINDS = frozenset({DATA, STATUS, REPLY})

# The Message model's ``topic`` column is a varchar(255): longer topics could not be stored.
MAX_TOPIC_LENGTH = 255
_TYPE_SEGMENT = re.compile(r"\w+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed device topic; ``type_name`` is the segment as sent (the registry normalizes it)."""

    type_name: str
    device_id: str
    kind: str


def parse_topic(topic, prefix, kinds=INBOUND_KINDS):
    """The ``Topic`` of ``topic`` if it is a device topic of one of ``kinds`` under ``prefix``, else None."""
    if len(topic) > MAX_TOPIC_LENGTH or "\x00" in topic or not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 3:
        return None
    type_name, device_id, kind = parts
    if kind not in kinds or not device_id or "+" in device_id or "#" in device_id:
        return None
    if not _TYPE_SEGMENT.fullmatch(type_name):
        return None
    return Topic(type_name, device_id, kind)


def device_topic(prefix, type_name, device_id, kind):
    """The topic a device of ``type_name`` uses for ``kind`` (``data``, ``status``, ``reply`` or ``cmd``)."""
    return f"{prefix}/{type_name}/{device_id}/{kind}"
