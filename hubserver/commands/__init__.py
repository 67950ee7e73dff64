"""Commands to devices: ``send_command`` (also ``DeviceType.send_command``), and the dispatcher that runs in
the hub process and moves each command through pending -> sent -> delivered -> replied, failed or expired."""

from .sending import asend_command, send_command

__all__ = ["asend_command", "send_command"]
