"""Generates the models of every DeviceType declared in the file named by ``HUBSERVER_DEVICES``."""

from django.conf import settings

from ..exceptions import ConfigurationError
from .loader import declared_types, load_devices_file

_module = load_devices_file(settings.HUBSERVER_DEVICES_FILE)
_types = declared_types(_module)
if not _types:
    raise ConfigurationError(f"{settings.HUBSERVER_DEVICES_FILE} declares no DeviceType subclass")
for _device_type in _types:
    for _model in _device_type.create_models(module=__name__):
        globals()[_model.__name__] = _model
