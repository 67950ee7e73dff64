"""Fan-out: committed batches and command state changes to the channel layer, cheaply.

``on_commit(results)`` is the router's commit listener (``router.add_commit_listener(on_commit)``). Per
committed batch it builds the events and sends ONE channel-layer message per group that has events: one per
device type (``hub.<type>``) and one per device (``hub.<type>.d<hash>``), each
``{"type": "hub.events", "scope": "type" | "device", "device_type", "device_id", "events": [...],
"batch", "origin", "seq"}``. Consumers never get one message per reading per viewer, and nothing here waits
for a viewer: consumers only enqueue into their own bounded buffers.

``batch`` is the same in the type message and the device messages of one batch, so a viewer in both groups
delivers each event once. ``seq`` counts the messages sent to one group by one process (``origin``): a jump
tells an SSE stream that the channel layer dropped a message (a full channel) and it should catch up from
the database.

``on_command_change(change)`` is the command dispatcher's listener (``dispatcher.add_listener``): it publishes
each state change of a command (a ``CommandChange``, which carries what the event shows) to the command's
type and device groups. ``hubserver.hub.Hub`` registers both listeners.
"""

import itertools
import logging
import secrets

from channels.layers import InMemoryChannelLayer, get_channel_layer

from ..conf import hub_settings
from .events import command_change_event, device_group, events_from_result, type_group

logger = logging.getLogger("hubserver.realtime")

MESSAGE_TYPE = "hub.events"
ORIGIN = secrets.token_hex(6)
_batches = itertools.count(1)
_seq = {}  # group -> the last seq this process sent to it


def get_layer():
    return get_channel_layer(hub_settings.CHANNEL_LAYER)


def _has_members(layer, group):
    """False only when we know nobody listens (the in-memory layer): a send to an empty group then costs
    nothing, instead of a full expiry scan of every channel per group."""
    if isinstance(layer, InMemoryChannelLayer):
        return bool(layer.groups.get(group))
    return True


def last_seq(group):
    """``(ORIGIN, seq)``: the last seq this process sent to ``group``; a new listener's baseline."""
    return ORIGIN, _seq.get(group, 0)


async def _group_send(layer, group, message):
    if not _has_members(layer, group):
        return False
    seq = _seq[group] = _seq.get(group, 0) + 1
    try:
        await layer.group_send(group, {**message, "origin": ORIGIN, "seq": seq})
    except Exception:  # one group's failure (e.g. a Redis hiccup) must not cost the others their events
        logger.exception("sending %d realtime event(s) to %s failed", len(message["events"]), group)
        return False
    return True


async def publish(by_type, by_device, layer=None, cursors=None):
    """Send ``{type name: [events]}`` and ``{(type name, device id): [events]}`` as ONE batch: one message
    per group. The type messages go first (viewers in both groups rely on that order to de-duplicate).
    ``cursors`` maps type names to the committed batch's ``(newest id before, newest id)`` (a stream's
    proof that it missed no row: ``hubserver.realtime.sse``)."""
    layer = layer or get_layer()
    if layer is None:
        return
    batch = f"{ORIGIN}:{next(_batches)}"
    cursors = cursors or {}
    for type_name, events in by_type.items():
        message = {"type": MESSAGE_TYPE, "scope": "type", "device_type": type_name, "device_id": None}
        message["cursors"] = cursors.get(type_name)
        await _group_send(layer, type_group(type_name), {**message, "events": events, "batch": batch})
    for (type_name, device_id), events in by_device.items():
        message = {"type": MESSAGE_TYPE, "scope": "device", "device_type": type_name, "device_id": device_id}
        message["cursors"] = cursors.get(type_name)
        await _group_send(layer, device_group(type_name, device_id), {**message, "events": events, "batch": batch})


async def publish_events(type_name, device_id, events, layer=None):
    """Publish events of one device (to its type's group and its own group)."""
    if events:
        await publish({type_name: list(events)}, {(type_name, device_id): list(events)}, layer)


async def on_commit(results):
    """The router's commit listener: one channel-layer message per batch and group, built from the results
    alone (no query)."""
    layer = get_layer()
    if layer is None or not results:
        return
    results = _listened(layer, results)
    by_type, by_device, cursors = {}, {}, {}
    for result in results:
        if not result.type_name or not result.device_id:
            continue
        if result.cursors is not None:
            cursors.setdefault(result.type_name, list(result.cursors))
        try:
            events = events_from_result(result)
        except Exception:
            logger.exception("could not build the realtime events of %s/%s", result.type_name, result.device_id)
            continue
        if events:
            by_type.setdefault(result.type_name, []).extend(events)
            by_device.setdefault((result.type_name, result.device_id), []).extend(events)
    if by_type:
        await publish(by_type, by_device, layer, cursors)


def _listened(layer, results):
    """The results somebody may be watching: with the in-memory layer, nothing is built for a device whose
    type group and device group are both empty (no live view open)."""
    if not isinstance(layer, InMemoryChannelLayer):
        return results
    listened = {}
    kept = []
    for result in results:
        key = (result.type_name, result.device_id)
        wanted = listened.get(key)
        if wanted is None:
            type_name, device_id = key
            wanted = listened[key] = bool(type_name and device_id) and (
                _has_members(layer, type_group(type_name)) or _has_members(layer, device_group(type_name, device_id))
            )
        if wanted:
            kept.append(result)
    return kept


# Commands ----------------------------------------------------------------------------------------------


async def on_command_change(change):
    """The command dispatcher's listener: one command's new state to its type and device groups."""
    try:
        await publish_events(change.type_name, change.device_id, [command_change_event(change)])
    except Exception:
        logger.exception("publishing a command event failed")
