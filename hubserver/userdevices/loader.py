"""Import a user's ``devices.py`` by path, as a module named after the file, so it needs no package."""

import importlib.util
import sys
from pathlib import Path

from ..devicetype import DeviceType
from ..exceptions import ConfigurationError


def load_devices_file(path):
    """Import the file (its folder goes on ``sys.path`` so it can import its neighbours) and return the module."""
    path = Path(path).resolve()
    module_name = path.stem
    existing = sys.modules.get(module_name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path:
        return existing
    if existing is not None:
        raise ConfigurationError(
            f"{path}: a module named {module_name!r} is already imported from "
            f"{getattr(existing, '__file__', 'elsewhere')}; rename your devices file"
        )
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def declared_types(module):
    """The concrete DeviceTypes that ``module`` itself declares, in declaration order."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, DeviceType)
        and value.__module__ == module.__name__
        and not value._abstract
    ]
