"""``get_iot_urlpatterns()``: the REST API URLs of every registered device type.

    urlpatterns = [..., *get_iot_urlpatterns("api")]

gives, per type (``{type}`` is ``DeviceType.type_name()``, e.g. ``weatherstation``):

| URL | view |
|---|---|
| ``api/`` | ``ApiRoot``: the types the user may view, with their URLs (with a prefix only) |
| ``api/{type}/devices/`` | ``{Type}DeviceViewSet``: list, create |
| ``api/{type}/devices/{device_id}/`` | retrieve, update, partial update, delete |
| ``api/{type}/devices/{device_id}/readings/`` | GET: the latest readings (``?limit=``), or a range's, per bucket too |
| ``api/{type}/devices/{device_id}/provision/`` | POST: new credentials, shown once |
| ``api/{type}/devices/{device_id}/commands/`` | GET: command history; POST: send a command |
| ``api/{type}/readings/`` | ``{Type}ReadingViewSet``: read-only, filters, ordering, CSV; ``?bucket=`` for aggregates |
| ``api/{type}/readings/{id}/`` | one reading |

URL names are ``{type}-device-list``, ``{type}-device-detail``, ``{type}-device-readings``,
``{type}-device-provision``, ``{type}-device-commands``, ``{type}-reading-list`` and ``{type}-reading-detail``.
"""

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from ..api.root import API_ROOT_URL_NAME, ApiRoot
from ..registry import registry
from .viewsets import create_viewsets


def get_iot_urlpatterns(prefix="api"):
    """URL patterns of the REST API of every type that has models, under ``prefix`` (``""`` for none)."""
    router = SimpleRouter()
    for device_type, *_ in sorted(registry.all_with_models(), key=lambda entry: entry[0].type_name()):
        name = device_type.type_name()
        device_viewset, reading_viewset = create_viewsets(device_type)
        router.register(f"{name}/devices", device_viewset, basename=f"{name}-device")
        router.register(f"{name}/readings", reading_viewset, basename=f"{name}-reading")
    prefix = prefix.strip("/")
    if not prefix:
        return list(router.urls)
    return [path(f"{prefix}/", ApiRoot.as_view(), name=API_ROOT_URL_NAME), path(f"{prefix}/", include(router.urls))]


__all__ = ["get_iot_urlpatterns"]
