"""``create_viewsets()``: the DRF viewsets of a DeviceType.

``DeviceViewSet`` is CRUD on devices, looked up by ``device_id``, with three actions: ``readings`` (the last
N readings, or a range's, raw or per rollup bucket), ``provision`` (new credentials, shown once) and
``commands`` (send one; list the history). ``ReadingViewSet`` is read-only, filtered by device and time,
ordered, paginated, exports CSV, and gives per-bucket aggregates with ``?bucket=``.
Both need an authenticated user with Django model permissions (``view`` to read).
"""

import django_filters
import orjson
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
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
from ..api.filters import TIME_FORMAT_HELP, StrictOrderingFilter, TimeField, TimeFilter
from ..api.pagination import DEFAULT_LIMIT, MAX_LIMIT, HubPagination
from ..api.permissions import HubModelPermissions
from ..api.renderers import CSVRenderer, stream_csv
from ..exceptions import ValidationError as HubValidationError
from ..lifecycle import history
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


HISTORY_MAX_LIMIT = 10_000  # rows of one answer with ?bucket=
BUCKET_HELP = (
    "Aggregates instead of raw readings: 1m, 1h or 1d buckets (count, min, max, mean and last of each "
    "numeric reading per bucket), or auto: raw readings when the range holds at most `limit` of them, else "
    "the finest bucket of which it holds at most `limit`. Aggregate rows carry `bucket`; raw rows do not."
)


def parse_history(params):
    """``(since, until, bucket)`` from the query string; a 400 naming the parameter when one is unusable."""
    times = {}
    for name in ("since", "until"):
        value = params.get(name)
        if value in (None, ""):
            times[name] = None
            continue
        try:
            times[name] = TimeField().clean(value)
        except DjangoValidationError:
            raise serializers.ValidationError({name: [TIME_FORMAT_HELP]}) from None
    bucket = params.get("bucket") or None
    if bucket is not None and bucket not in history.CHOICES:
        raise serializers.ValidationError({"bucket": [f"Must be one of {', '.join(history.CHOICES)}, got {bucket!r}."]})
    if times["since"] and times["until"] and times["since"] >= times["until"]:
        raise serializers.ValidationError({"until": ["Must be later than since."]})
    return times["since"], times["until"], bucket


def parse_history_limit(value, bucket):
    """``?limit=``: up to 1000 raw readings, or up to 10,000 rows when a bucket (or auto) is asked for."""
    if bucket is None:
        return parse_limit(value)
    if value in (None, ""):
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = None
    if limit is None or not 1 <= limit <= HISTORY_MAX_LIMIT:
        raise serializers.ValidationError(
            {"limit": [f"Must be an integer from 1 to {HISTORY_MAX_LIMIT}, got {value!r}."]}
        )
    return limit


def history_parameters(with_limit=True, max_limit=HISTORY_MAX_LIMIT):
    parameters = [
        OpenApiParameter("since", OpenApiTypes.DATETIME, description="At or after this ISO 8601 time."),
        OpenApiParameter("until", OpenApiTypes.DATETIME, description="Before this ISO 8601 time (exclusive)."),
        OpenApiParameter("bucket", OpenApiTypes.STR, enum=list(history.CHOICES), description=BUCKET_HELP),
    ]
    if with_limit:
        parameters.append(
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description=(
                    f"How many (default {DEFAULT_LIMIT}; at most {MAX_LIMIT} raw readings, or {max_limit} rows "
                    "with a bucket). The newest come first."
                ),
            )
        )
    return parameters


def aggregate_serializer(device_type, many=False):
    """The OpenAPI shape of an aggregate row (the rows themselves are built by ``lifecycle.history``): one
    class per type, so every use of it is the same schema component."""
    return _cached("aggregate", device_type, lambda: _aggregate_class(device_type))(many=many)


def _aggregate_class(device_type):
    stats = type(
        inline_serializer(
            f"{device_type.__name__}ReadingStats",
            {
                "count": serializers.IntegerField(),
                "min": serializers.FloatField(allow_null=True),
                "max": serializers.FloatField(allow_null=True),
                "mean": serializers.FloatField(allow_null=True),
                "last": serializers.FloatField(allow_null=True),
                "last_at": serializers.DateTimeField(allow_null=True),
            },
        )
    )
    fields = {
        "device": serializers.CharField(),
        "bucket": serializers.ChoiceField(choices=list(history.BUCKETS)),
        "start": serializers.DateTimeField(),
        "end": serializers.DateTimeField(),
    }
    rollup_model = device_type.get_rollup_model()
    for name in rollup_model.reading_names if rollup_model is not None else ():
        fields[name] = stats()
    return type(inline_serializer(f"{device_type.__name__}Aggregate", fields))


def aggregate_response(request, rows):
    """Aggregate rows as JSON, encoded by orjson (a month of hourly rows is ~0.5 MB: the stdlib encoder took a
    third of the request); the browsable API and other renderers go through DRF as usual."""
    if type(request.accepted_renderer) is JSONRenderer:
        return HttpResponse(orjson.dumps(rows), content_type="application/json")
    return Response(rows)


def aggregate_csv_response(device_type, queryset, filename):
    response = StreamingHttpResponse(
        stream_csv(history.aggregate_csv_columns(device_type), history.aggregate_csv_rows(device_type, queryset)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


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
            parameters=history_parameters(),
            responses={
                200: PolymorphicProxySerializer(
                    component_name=f"{device_type.__name__}History",
                    serializers=[reading_serializer, aggregate_serializer(device_type)],
                    resource_type_field_name=None,
                    many=True,
                ),
                400: DETAIL,
            },
            description=(
                "The device's readings, newest first: the latest ones, or those of a range (since, until), raw or "
                "as per-bucket aggregates (bucket). ?format=csv for CSV."
            ),
        )
        @action(
            detail=True, methods=["get"], renderer_classes=READING_RENDERERS, pagination_class=None, filter_backends=[]
        )
        def readings(self, request, device_id=None):
            device = self.get_object()
            since, until, bucket = parse_history(request.query_params)
            limit = parse_history_limit(request.query_params.get("limit"), bucket)
            raw = device.readings.all()
            if bucket == history.AUTO:
                bucket = history.choose(device_type, raw, since, until, limit)
            if bucket in history.BUCKETS and device_type.get_rollup_model() is None:
                raise serializers.ValidationError({"bucket": [f"{device_type.__name__} has no numeric readings."]})
            if bucket in history.BUCKETS:
                rows = history.rollup_queryset(device_type, bucket, since, until, devices=[device])
                rows = rows.order_by("-start")
                if isinstance(request.accepted_renderer, CSVRenderer):
                    return aggregate_csv_response(
                        device_type, rows[:limit], f"{device_type.type_name()}-{device.device_id}-{bucket}.csv"
                    )
                return aggregate_response(request, history.aggregate_rows(device_type, rows[:limit]))
            if since is not None:
                raw = raw.filter(timestamp__gte=since)
            if until is not None:
                raw = raw.filter(timestamp__lt=until)
            rows = raw.select_related("device").order_by("-timestamp", "-id")[:limit]
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

    @extend_schema_view(
        list=extend_schema(
            tags=[tag],
            parameters=history_parameters(with_limit=False),
            responses={
                200: PolymorphicProxySerializer(
                    component_name=f"Paginated{device_type.__name__}History",
                    serializers=[
                        inline_serializer(
                            f"Paginated{device_type.__name__}ReadingList",
                            {
                                "count": serializers.IntegerField(),
                                "next": serializers.URLField(allow_null=True),
                                "previous": serializers.URLField(allow_null=True),
                                "results": reading_serializer(many=True),
                            },
                        ),
                        inline_serializer(
                            f"Paginated{device_type.__name__}AggregateList",
                            {
                                "count": serializers.IntegerField(),
                                "next": serializers.URLField(allow_null=True),
                                "previous": serializers.URLField(allow_null=True),
                                "results": aggregate_serializer(device_type, many=True),
                            },
                        ),
                    ],
                    resource_type_field_name=None,
                ),
                400: DETAIL,
            },
            description=(
                "Readings of every device (?device= for one), newest first, paginated (?limit=, ?offset=); with "
                "?bucket=1m|1h|1d the per-bucket aggregates of the range instead (ordered by start, newest first; "
                "?ordering=start for oldest first). ?format=csv exports every matching row, unpaginated."
            ),
        ),
        retrieve=extend_schema(tags=[tag]),
    )
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
            since, until, bucket = parse_history(request.query_params)
            if bucket == history.AUTO:
                raise serializers.ValidationError(
                    {"bucket": ["auto is for one device's readings (devices/<id>/readings/); here: 1m, 1h or 1d."]}
                )
            if bucket is not None and device_type.get_rollup_model() is None:
                raise serializers.ValidationError({"bucket": [f"{device_type.__name__} has no numeric readings."]})
            if bucket is not None:
                return self.list_aggregates(request, since, until, bucket)
            if isinstance(request.accepted_renderer, CSVRenderer):
                return self.export_csv()
            return super().list(request, *args, **kwargs)

        def list_aggregates(self, request, since, until, bucket):
            devices = None
            if request.query_params.get("device"):
                devices = device_type._device_model._default_manager.filter(device_id=request.query_params["device"])
            rows = history.rollup_queryset(device_type, bucket, since, until, devices=devices)
            ordering = request.query_params.get("ordering") or "-start"
            if ordering not in ("start", "-start"):
                raise serializers.ValidationError(
                    {"ordering": ["Aggregates are ordered by start: start, or -start (the default)."]}
                )
            rows = rows.order_by(ordering, ordering.replace("start", "id"))  # the index's own order: no sort
            if isinstance(request.accepted_renderer, CSVRenderer):
                return aggregate_csv_response(device_type, rows, f"{device_type.type_name()}-{bucket}.csv")
            page = self.paginate_queryset(history.aggregate_values(device_type, rows))
            return self.get_paginated_response(history.aggregate_dicts(device_type, page))

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
