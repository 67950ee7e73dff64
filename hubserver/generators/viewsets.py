"""``create_viewsets()``: the DRF viewsets of a DeviceType.

``DeviceViewSet`` is CRUD on devices, looked up by ``device_id``, with three actions: ``readings`` (the last
N readings), ``provision`` (new credentials, shown once) and ``commands`` (send one; list the history).
``ReadingViewSet`` is read-only, filtered by device and time, ordered, paginated, and exports CSV.
Both need an authenticated user with Django model permissions (``view`` to read).
"""

import django_filters
from django.http import StreamingHttpResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import filters, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings

from ..access.provisioning import connection_info, provision
from ..api.filters import StrictOrderingFilter, TimeFilter
from ..api.pagination import DEFAULT_LIMIT, MAX_LIMIT, HubPagination
from ..api.permissions import HubModelPermissions
from ..api.renderers import CSVRenderer, stream_csv
from ..exceptions import ValidationError as HubValidationError
from .serializers import ConnectionInfoSerializer, _cached, _models, create_command_serializers, create_serializers

READING_RENDERERS = [*api_settings.DEFAULT_RENDERER_CLASSES, CSVRenderer]
DETAIL = inline_serializer("Detail", {"detail": serializers.CharField()})


def parse_limit(value):
    """``?limit=`` of the readings action: default 100, an integer from 1 to 1000, else a 400."""
    if value in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = None
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise serializers.ValidationError({"limit": [f"Must be an integer from 1 to {MAX_LIMIT}, got {value!r}."]})
    return limit


class CSVMixin:
    """Errors stay JSON when CSV was asked for; ``get_csv_header()`` gives the columns of an empty export."""

    csv_columns = ()

    def get_csv_header(self):
        return list(self.csv_columns)

    def handle_exception(self, exc):
        if isinstance(getattr(self.request, "accepted_renderer", None), CSVRenderer):
            self.request.accepted_renderer = JSONRenderer()
            self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)


def reading_columns(device_type):
    return ["id", "device", "timestamp", "received_at", *device_type._readings]


def reading_rows(queryset, device_type):
    """Rows of a readings CSV straight from the database, without building model instances."""
    values = ["id", "device__device_id", "timestamp", "received_at", *device_type._readings]
    return queryset.values_list(*values).iterator(chunk_size=2000)


def create_reading_filterset(device_type):
    reading_model = _models(device_type)[1]
    meta = type("Meta", (), {"model": reading_model, "fields": []})
    attrs = {
        "Meta": meta,
        "device": django_filters.CharFilter(field_name="device__device_id", help_text="A device id."),
        "since": TimeFilter(
            field_name="timestamp", lookup_expr="gte", help_text="Readings at or after this ISO 8601 time."
        ),
        "until": TimeFilter(
            field_name="timestamp", lookup_expr="lt", help_text="Readings before this ISO 8601 time (exclusive)."
        ),
    }
    return type(f"{device_type.__name__}ReadingFilter", (django_filters.FilterSet,), attrs)


def create_viewsets(device_type):
    """Return ``(DeviceViewSet, ReadingViewSet)`` for ``device_type``."""
    return (
        _cached("device-viewset", device_type, lambda: _device_viewset(device_type)),
        _cached("reading-viewset", device_type, lambda: _reading_viewset(device_type)),
    )


def _device_viewset(device_type):
    device_model, reading_model, message_model = _models(device_type)
    device_serializer, reading_serializer = create_serializers(device_type)
    command_serializer, command_request_serializer = create_command_serializers(device_type)
    paginated_commands = inline_serializer(
        f"Paginated{device_type.__name__}CommandList",
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": command_serializer(many=True),
        },
    )
    tag = f"{device_type.type_name()} devices"

    @extend_schema_view(
        list=extend_schema(tags=[tag]),
        retrieve=extend_schema(tags=[tag]),
        create=extend_schema(tags=[tag]),
        update=extend_schema(tags=[tag]),
        partial_update=extend_schema(tags=[tag]),
        destroy=extend_schema(tags=[tag]),
    )
    class DeviceViewSet(CSVMixin, viewsets.ModelViewSet):
        queryset = device_model._default_manager.all()
        serializer_class = device_serializer
        permission_classes = [IsAuthenticated, HubModelPermissions]
        pagination_class = HubPagination
        lookup_field = "device_id"
        lookup_value_regex = r"[^/]+"
        filter_backends = [DjangoFilterBackend, filters.SearchFilter, StrictOrderingFilter]
        filterset_fields = ["status", "is_active"]
        search_fields = ["device_id", "name"]
        ordering_fields = ["device_id", "name", "status", "battery_level", "last_seen", "created_at"]
        ordering = ["device_id"]
        csv_columns = reading_columns(device_type)
        action_permissions = {
            "readings": {"GET": [(device_model, "view"), (reading_model, "view")]},
            "provision": {"POST": [(device_model, "change")]},
            "commands": {"GET": [(device_model, "view"), (message_model, "view")], "POST": [(device_model, "change")]},
        }

        def get_serializer_class(self):
            # What the browsable API's forms and OPTIONS describe for the extra actions.
            # (For OPTIONS, DRF's action is "metadata": the route's name tells which action it is.)
            action_name = self.action
            match = getattr(self.request, "resolver_match", None)
            if action_name in (None, "metadata") and match and match.url_name:
                action_name = match.url_name.rsplit("-", 1)[-1]
            extra = {"readings": reading_serializer, "provision": serializers.Serializer}
            if action_name == "commands":
                return command_request_serializer if self.request.method == "POST" else command_serializer
            return extra.get(action_name, device_serializer)

        @extend_schema(
            tags=[tag],
            parameters=[
                OpenApiParameter(
                    "limit", OpenApiTypes.INT, description=f"How many (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})."
                )
            ],
            responses={200: reading_serializer(many=True), 400: DETAIL},
            description="The device's latest readings, newest first.",
        )
        @action(
            detail=True, methods=["get"], renderer_classes=READING_RENDERERS, pagination_class=None, filter_backends=[]
        )
        def readings(self, request, device_id=None):
            device = self.get_object()
            limit = parse_limit(request.query_params.get("limit"))
            rows = device.readings.select_related("device").order_by("-timestamp", "-id")[:limit]
            return Response(reading_serializer(rows, many=True, context=self.get_serializer_context()).data)

        @extend_schema(
            tags=[tag],
            request=None,
            responses={200: ConnectionInfoSerializer, 400: DETAIL},
            description=(
                "Issue new MQTT credentials and an API key (any old ones stop working) and return them with "
                "where to connect. The secrets are shown only in this response: only their hashes are kept."
            ),
        )
        @action(detail=True, methods=["post"], filter_backends=[])
        def provision(self, request, device_id=None):
            device = self.get_object()
            try:
                info = connection_info(device, provision(device))
            except HubValidationError as exc:
                return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
            return Response(info, headers={"Cache-Control": "no-store"})

        @extend_schema(
            methods=["GET"],
            tags=[tag],
            parameters=[
                OpenApiParameter("limit", OpenApiTypes.INT, description="Page size (default 100, at most 1000)."),
                OpenApiParameter("offset", OpenApiTypes.INT, description="Where the page starts."),
            ],
            responses={200: paginated_commands},
            description="The commands sent to the device, newest first.",
        )
        @extend_schema(
            methods=["POST"],
            tags=[tag],
            request=command_request_serializer,
            responses={202: command_serializer, 400: DETAIL},
            description=(
                "Send a command: it is checked against the command's params schema, kept, and published to the "
                "device now or when it next connects."
            ),
        )
        @action(detail=True, methods=["get", "post"], filter_backends=[], parser_classes=[JSONParser])
        def commands(self, request, device_id=None):
            device = self.get_object()
            if request.method == "POST":
                return self._send_command(request, device)
            history = (
                message_model._default_manager.filter(device=device, direction="outbound")
                .exclude(command="")
                .order_by("-received_at", "-id")
            )
            page = self.paginate_queryset(history)
            return self.get_paginated_response(command_serializer(page, many=True).data)

        def _send_command(self, request, device):
            from ..commands import send_command

            body = self.get_serializer(data=request.data)
            body.is_valid(raise_exception=True)
            try:
                message = send_command(device, body.validated_data["command"], body.validated_data["payload"])
            except HubValidationError as exc:
                return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
            return Response(command_serializer(message).data, status=status.HTTP_202_ACCEPTED)

    if not device_type._commands:
        del DeviceViewSet.commands  # no commands/ endpoint (nor its schema) for a type without commands
    DeviceViewSet.__name__ = DeviceViewSet.__qualname__ = f"{device_type.__name__}DeviceViewSet"
    DeviceViewSet.__doc__ = f"{device_type._meta.verbose_name_plural}: CRUD, readings, provisioning, commands."
    return DeviceViewSet


def _reading_viewset(device_type):
    reading_model = _models(device_type)[1]
    reading_serializer = create_serializers(device_type)[1]
    tag = f"{device_type.type_name()} readings"

    @extend_schema_view(list=extend_schema(tags=[tag]), retrieve=extend_schema(tags=[tag]))
    class ReadingViewSet(CSVMixin, viewsets.ReadOnlyModelViewSet):
        queryset = reading_model._default_manager.select_related("device")
        serializer_class = reading_serializer
        permission_classes = [IsAuthenticated, HubModelPermissions]
        pagination_class = HubPagination
        renderer_classes = READING_RENDERERS
        filter_backends = [DjangoFilterBackend, StrictOrderingFilter]
        filterset_class = create_reading_filterset(device_type)
        ordering_fields = ["timestamp", "received_at"]
        ordering = ["-timestamp", "-id"]
        csv_columns = reading_columns(device_type)

        def list(self, request, *args, **kwargs):
            if isinstance(request.accepted_renderer, CSVRenderer):
                return self.export_csv()
            return super().list(request, *args, **kwargs)

        def export_csv(self):
            """Every reading that matches the filters (no pagination), streamed."""
            queryset = self.filter_queryset(self.get_queryset())
            response = StreamingHttpResponse(
                stream_csv(self.get_csv_header(), reading_rows(queryset, device_type)),
                content_type="text/csv; charset=utf-8",
            )
            response["Content-Disposition"] = f'attachment; filename="{device_type.type_name()}-readings.csv"'
            return response

    ReadingViewSet.__name__ = ReadingViewSet.__qualname__ = f"{device_type.__name__}ReadingViewSet"
    ReadingViewSet.__doc__ = f"{device_type._meta.verbose_name} readings (read-only); ``?format=csv`` exports."
    return ReadingViewSet


__all__ = ["create_viewsets"]
