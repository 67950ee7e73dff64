"""A device simulator: stands in for hardware by connecting provisioned devices to a hub over real MQTT.

One idea per module:

- ``values``: what a simulated device reports (plain random values, or ``realistic`` smooth walks within
  each Reading's declared range);
- ``transport``: paho-mqtt driven by an asyncio loop (no thread per device);
- ``device``: one simulated device: its connection, Last Will, data publishing, command answering, state;
- ``engine``: ``Simulator``: provisions the devices it needs, runs them for a duration, stops them cleanly;
- ``target``: where to connect (``--broker`` / ``--host`` / ``--port``);
- ``display``: the live status table (rich) or plain periodic lines.

``hubserver simulate TYPE`` (alias ``iot_simulate``) is the command line; ``Simulator`` can also run inside
an existing event loop, next to an in-process hub (the tests do that).
"""

from .engine import Simulator, simulated_device_ids
from .target import Target, resolve_target
from .values import ValueSource

__all__ = ["Simulator", "Target", "ValueSource", "resolve_target", "simulated_device_ids"]
