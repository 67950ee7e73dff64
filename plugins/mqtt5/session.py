"""What an MQTT 5 session keeps beyond a 3.1.1 one (``HubSession.v5``), and the hub's own limits.

A 3.1.1 session has ``v5 = None``; everything here is looked at only for MQTT 5 clients, so the 3.1.1
paths pay nothing for it.
"""

import time

NEVER = 0xFFFFFFFF  # Session Expiry Interval: the session does not expire

# What the hub advertises in CONNACK.
RECEIVE_MAXIMUM = 1024  # QoS 1/2 PUBLISHes a client may have unacknowledged towards the hub
TOPIC_ALIAS_MAXIMUM = 64  # topic aliases a client may define per connection


class SubscriptionOptions:
    """One subscription of an MQTT 5 client: the options it asked for and its Subscription Identifier."""

    __slots__ = ("no_local", "qos", "retain_as_published", "retain_handling", "subscription_id")

    def __init__(self, qos=0, no_local=False, retain_as_published=False, retain_handling=0, subscription_id=None):
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling
        self.subscription_id = subscription_id


class V5State:
    """Per-session MQTT 5 state: what the client asked for in CONNECT and its subscription options.

    ``receive_maximum``, ``maximum_packet_size`` and ``topic_alias_maximum`` are the client's limits on
    what the hub sends it; ``session_expiry`` is in seconds (NEVER: kept until the hub stops)."""

    __slots__ = (
        "expiry_timer",
        "maximum_packet_size",
        "options",
        "receive_maximum",
        "request_problem_information",
        "request_response_information",
        "session_expiry",
        "topic_alias_maximum",
        "will_delay",
        "will_properties",
        "will_timer",
    )

    def __init__(self, properties, will_properties=None):
        self.session_expiry = properties.get("session_expiry_interval", 0)
        self.receive_maximum = properties.get("receive_maximum", 65535)
        self.maximum_packet_size = properties.get("maximum_packet_size", 0)  # 0: no limit beyond the protocol's
        self.topic_alias_maximum = properties.get("topic_alias_maximum", 0)
        self.request_problem_information = properties.get("request_problem_information", 1)
        self.request_response_information = properties.get("request_response_information", 0)
        self.will_properties = message_properties(will_properties or {})
        self.will_delay = (will_properties or {}).get("will_delay_interval", 0)
        self.options = {}  # topic filter -> SubscriptionOptions
        self.expiry_timer = None
        self.will_timer = None

    def take_over(self, newer):
        """A reconnection resumed this session: the new CONNECT's parameters replace the old ones."""
        for name in (
            "session_expiry",
            "receive_maximum",
            "maximum_packet_size",
            "topic_alias_maximum",
            "request_problem_information",
            "request_response_information",
            "will_properties",
            "will_delay",
        ):
            setattr(self, name, getattr(newer, name))
        self.cancel_timers()

    def cancel_timers(self):
        for name in ("expiry_timer", "will_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)


# The properties of an application message that travel with it to every subscriber [MQTT-3.3.2-4]...
FORWARDED = ("payload_format_indicator", "content_type", "response_topic", "correlation_data", "user_property")


def message_properties(properties):
    """The properties of a PUBLISH (or Will) that are the message's own, with its expiry as a deadline.

    Returns None when there are none (the common case: nothing is carried or copied per delivery)."""
    kept = {name: properties[name] for name in FORWARDED if name in properties}
    expiry = properties.get("message_expiry_interval")
    if expiry is not None:
        kept["message_expiry_interval"] = expiry
        kept["expires_at"] = time.monotonic() + expiry
    return kept or None


def outgoing_properties(properties, now=None):
    """The properties to send with a message now, or False when it has expired [MQTT-3.3.2-5]: the
    Message Expiry Interval becomes the time it has left [MQTT-3.3.2-6]."""
    if not properties:
        return {}
    deadline = properties.get("expires_at")
    if deadline is None:
        return {name: value for name, value in properties.items() if name != "expires_at"}
    left = deadline - (time.monotonic() if now is None else now)
    if left <= 0:
        return False
    out = {name: value for name, value in properties.items() if name != "expires_at"}
    out["message_expiry_interval"] = max(1, int(left + 0.999))
    return out
