"""Every exception hubserver raises derives from HubserverError: callers catch the package's errors in one place."""

from django.core.exceptions import ImproperlyConfigured


class HubserverError(Exception):
    """Base class of every error raised by hubserver."""


class RegistryError(HubserverError):
    """Two DeviceTypes share a normalized name, or a lookup names no registered type."""


class ConfigurationError(HubserverError, ImproperlyConfigured):
    """The HUBSERVER settings (or a DeviceType declaration) are invalid; also an ImproperlyConfigured for Django."""


class ValidationError(HubserverError, ValueError):
    """A value does not satisfy its Reading, StateField or Command declaration."""


class PayloadError(ValidationError):
    """A device payload cannot be parsed; the message is stored as failed with this reason."""


class DeviceTypeNotFound(HubserverError, LookupError):
    """A topic or request names a device type that is not registered."""


class DeviceNotFound(HubserverError, LookupError):
    """A topic or request names a device that does not exist or is not active."""
