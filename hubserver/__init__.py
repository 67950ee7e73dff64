"""hubserver: a whole IoT device hub in one Python process.

Declare devices as classes and the hub generates their models, admin, API and topic ACL::

    from hubserver import DeviceType, Reading, Command, StateField

    class WeatherStation(DeviceType):
        temperature = Reading(float, unit="°C", min_value=-50, max_value=60)
"""

from .descriptors import Command, Reading, StateField
from .devicetype import DeviceType, DeviceTypeMeta
from .exceptions import HubserverError, RegistryError
from .registry import registry

__version__ = "0.1.0"

__all__ = [
    "Command",
    "DeviceType",
    "DeviceTypeMeta",
    "HubserverError",
    "Reading",
    "RegistryError",
    "StateField",
    "__version__",
    "registry",
]
