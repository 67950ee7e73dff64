"""Generators turn a declarative DeviceType into Django models, admin classes and (later) API views."""
