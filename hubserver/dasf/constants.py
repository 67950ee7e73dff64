"""The vocabulary of the DASF messaging protocol: message types and the keys of a message's ``properties``.

The values are the ones ``demessaging`` puts on the wire; they must not change.
"""

import re
from enum import StrEnum


class PropertyKeys(StrEnum):
    """Keys of a message's ``properties`` object."""

    REQUEST_CONTEXT = "requestContext"
    RESPONSE_TOPIC = "response_topic"
    SOURCE_TOPIC = "source_topic"
    REQUEST_MESSAGEID = "requestMessageId"
    MESSAGE_TYPE = "messageType"
    FRAGMENT = "fragment"
    NUM_FRAGMENTS = "num_fragments"
    STATUS = "status"


class MessageType(StrEnum):
    """Values of ``properties.messageType``."""

    PING = "ping"
    PONG = "pong"
    REQUEST = "request"
    RESPONSE = "response"
    LOG = "log"
    INFO = "info"
    PROGRESS = "progress"
    API_INFO = "api_info"


# The topic name backends answer pings and API-info requests on (``ws/status-ping/``).
STATUS_PING = "status-ping"
# ``ws/hub/`` is the hub's own live stream: no DASF topic may take its name.
HUB = "hub"
RESERVED_SLUGS = frozenset({STATUS_PING, HUB})

# Characters a topic name may have: what the WebSocket routes accept and what an MQTT topic level can carry.
SLUG_PATTERN = r"[-a-zA-Z0-9_]+"
SLUG_MAX_LENGTH = 50
SLUG_RE = re.compile(f"{SLUG_PATTERN}")


def slug_problem(slug):
    """Why ``slug`` cannot name a topic (not a slug, too long, reserved), or None."""
    if not SLUG_RE.fullmatch(slug):
        return f"{slug[:80]!r} is not a topic name (letters, digits, '-' and '_' only)"
    if len(slug) > SLUG_MAX_LENGTH:
        return f"a topic name has at most {SLUG_MAX_LENGTH} characters"
    return reserved_reason(slug)


def reserved_reason(slug):
    """Why ``slug`` cannot be a topic name, or None."""
    if slug == HUB:
        return "the topic name 'hub' is reserved: ws/hub/ is the hub's live stream, not a DASF topic"
    if slug == STATUS_PING:
        return "the topic name 'status-ping' is reserved for the answers to the broker's pings"
    return None
