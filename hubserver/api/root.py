"""``GET /api/``: what the API serves, every device type the user may view with its URLs; and, for a path
under ``/api/`` that matches nothing, a JSON 404 that names the known types instead of an HTML page."""

from django.http import JsonResponse
from django.urls import NoReverseMatch, reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from ..registry import registry
from .docs import DOCS_URL_NAME, SCHEMA_URL_NAME
from .permissions import perm

API_ROOT_URL_NAME = "hub-api-root"


def _url(request, name):
    try:
        return request.build_absolute_uri(reverse(name))
    except NoReverseMatch:
        return None


def visible_types(user):
    """``[(DeviceType, Device model)]`` the user may view, by type name."""
    entries = sorted(registry.all_with_models(), key=lambda entry: entry[0].type_name())
    return [(t, device) for t, device, *_ in entries if user.is_authenticated and user.has_perm(perm(device, "view"))]


class ApiRoot(APIView):
    """The device types of this hub the user may view, with their API URLs."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses=inline_serializer(
            "ApiRoot",
            {
                "types": serializers.ListField(child=serializers.DictField()),
                "schema": serializers.URLField(allow_null=True),
                "docs": serializers.URLField(allow_null=True),
            },
        ),
        description="Every device type you may view: its readings, state fields, commands and API URLs.",
    )
    def get(self, request):
        types = []
        for device_type, _ in visible_types(request.user):
            name = device_type.type_name()
            types.append(
                {
                    "name": name,
                    "verbose_name": str(device_type._meta.verbose_name),
                    "readings": {n: r.unit for n, r in device_type._readings.items()},
                    "state_fields": list(device_type._state_fields),
                    "commands": list(device_type._commands),
                    "devices_url": _url(request, f"{name}-device-list"),
                    "readings_url": _url(request, f"{name}-reading-list"),
                }
            )
        schema, docs = _url(request, SCHEMA_URL_NAME), _url(request, DOCS_URL_NAME)
        return Response({"types": types, "schema": schema, "docs": docs})


def api_not_found(request, rest=""):
    """A JSON 404 for any path under the API's prefix that matches nothing."""
    first = rest.split("/", 1)[0]
    if first and registry.get(first) is None:
        detail = f"Unknown device type {first!r}."
        if request.user.is_authenticated:
            known = ", ".join(t.type_name() for t, _ in visible_types(request.user)) or "none you may view"
            detail += f" Known types: {known}."
    else:
        detail = "Not found. A type's API is at <type>/devices/ and <type>/readings/ under the API root."
    return JsonResponse({"detail": detail, "api_root": _url(request, API_ROOT_URL_NAME)}, status=404)
