"""MQTT topic names and filters (MQTT 3.1.1 §4.7): validity, matching, and whether one filter lies within
another. The device topic grammar (``{prefix}/{type}/{id}/{kind}``) is ``hubserver.vocabulary``'s.

Pure string functions, used by the ACL on every publish and delivery: no regex, no allocation beyond
one ``split``, and a fast path for filters without wildcards.
"""

MAX_TOPIC_BYTES = 65535


def has_wildcards(topic):
    return "+" in topic or "#" in topic


def is_valid_topic(topic):
    """A topic name a client may publish to: non-empty, no wildcards, no NUL, at most 64 KiB of UTF-8."""
    return (
        isinstance(topic, str)
        and bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and len(topic.encode("utf-8", "surrogatepass")) <= MAX_TOPIC_BYTES
    )


def is_valid_filter(topic_filter):
    """A subscription filter: ``#`` only as the whole last level, ``+`` only as a whole level."""
    if not isinstance(topic_filter, str) or not topic_filter or "\x00" in topic_filter:
        return False
    if len(topic_filter.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter, topic):
    """True if ``topic`` matches ``topic_filter``. ``a/#`` also matches ``a``; a wildcard in the first
    level (``#``, ``+/...``) does not match topics starting with ``$`` (``$SYS/...``), per MQTT 4.7.2."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    depth = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= depth:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == depth


def filter_within(pattern, topic_filter):
    """True if every topic ``topic_filter`` can match is also matched by ``pattern`` (the subscription
    lies entirely inside what the pattern covers; e.g. ``things/a/#`` lies within ``things/#``)."""
    pattern_levels = pattern.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(pattern_levels):
        if level == "#":
            # '#' at the first level does not cover '$' topics, which a filter starting with '$...' matches.
            return not (index == 0 and filter_levels[0].startswith("$"))
        if index >= len(filter_levels):
            return False
        current = filter_levels[index]
        if current == "#":
            return False
        if level == "+":
            if index == 0 and current.startswith("$"):
                return False
            continue
        if current != level:
            return False
    return len(filter_levels) == len(pattern_levels)
