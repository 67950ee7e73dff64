"""The seven device lifecycle signals. ``sender`` is always the DeviceType class.

Receivers may be sync or ``async def``: the hub sends with ``Signal.asend`` from the event loop, and
Django runs each kind of receiver in its proper context.
"""

from django.dispatch import Signal

# sender, device, readings ({name: value}), message (the stored Message row)
device_data_received = Signal()
# sender, device, old_status, new_status
device_status_changed = Signal()
# sender, device, changes ({state field: (old value, new value)}), message (the status or reply Message)
device_state_changed = Signal()
# sender, device
device_connected = Signal()
# sender, device
device_disconnected = Signal()
# sender, device, command (name), payload (dict)
device_command_sent = Signal()
# sender, device, credentials ({"mqtt_username", "mqtt_password", "api_key"})
device_provisioned = Signal()
