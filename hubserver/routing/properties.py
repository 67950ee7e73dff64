"""What a device's message says about itself besides its payload: the content type, correlation id and user
properties an MQTT 5 PUBLISH carries as properties. They are stored on the message's row (``content_type``,
``correlation_id``, ``user_properties``), and a command reply's correlation id may come from here rather
than from its JSON.

Broker-agnostic: an engine builds one from a PUBLISH's properties with ``from_mqtt`` (the MQTT 5 names,
whatever library decoded them), or directly.
"""

from dataclasses import dataclass

from ..models import BaseMessage

# The widths of the Message columns.
MAX_CONTENT_TYPE = BaseMessage._meta.get_field("content_type").max_length
MAX_CORRELATION_ID = BaseMessage._meta.get_field("correlation_id").max_length


@dataclass(frozen=True, slots=True)
class MessageProperties:
    """``content_type`` ("" when not given: the column keeps its default), ``correlation_id`` (text, "" when
    none) and ``user_properties`` (name -> value; a name given more than once -> the list of its values, in
    order)."""

    content_type: str = ""
    correlation_id: str = ""
    user_properties: dict | None = None

    @classmethod
    def from_mqtt(cls, properties):
        """From MQTT 5 properties by name (``content_type``, ``correlation_data``, ``user_property``), or
        None when they hold none of the three (nothing to store beyond the defaults)."""
        content_type = properties.get("content_type") or ""
        correlation = correlation_text(properties.get("correlation_data"))
        pairs = properties.get("user_property")
        if not (content_type or correlation or pairs):
            return None
        return cls(content_type[:MAX_CONTENT_TYPE], correlation, user_properties(pairs) if pairs else None)


def correlation_text(data):
    """Correlation data as the hub's correlation id: the text itself when it is UTF-8 of at most 64
    characters (as the hub's own are), else ``hex:`` and its hex digits when that fits, else "" (kept
    nowhere: no command of the hub can carry it)."""
    if not data:
        return ""
    if isinstance(data, str):
        return data if len(data) <= MAX_CORRELATION_ID else ""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) <= MAX_CORRELATION_ID and text.isprintable():
        return text
    hexed = "hex:" + bytes(data).hex()
    return hexed if len(hexed) <= MAX_CORRELATION_ID else ""


def user_properties(pairs):
    """MQTT 5 User Properties (name, value pairs; a name may repeat) as a JSON object."""
    out = {}
    for name, value in pairs:
        known = out.get(name)
        if known is None:
            out[name] = value
        elif isinstance(known, list):
            known.append(value)
        else:
            out[name] = [known, value]
    return out
