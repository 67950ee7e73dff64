"""Dashboard views: server-rendered pages that ``dashboard.js`` keeps live over ``/ws/hub/``."""

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse, reverse_lazy

from ..registry import registry
from ..vocabulary import CommandState, DeviceStatus

LOGIN_URL = reverse_lazy("dashboard:login")
CHART_POINTS = 100  # readings per chart rendered into the page; the script keeps the same window live
# The device page's range picker: the live window, or a range drawn from the API (raw or rollups).
RANGES = (("live", "Live"), ("1h", "1 h"), ("24h", "24 h"), ("7d", "7 d"), ("30d", "30 d"), ("1y", "1 y"))
RECENT_COMMANDS = 15
OVERVIEW_PAGE_SIZE = 20  # devices per page of a type on the overview


def _perm(model, kind):
    return f"{model._meta.app_label}.{kind}_{model._meta.model_name}"


def visible_types(user):
    """``[(DeviceType, Device, Reading, Message), ...]`` the user may view, in verbose-name order."""
    rows = [row for row in registry.all_with_models() if user.has_perm(_perm(row[1], "view"))]
    return sorted(rows, key=lambda row: str(row[0]._meta.verbose_name).lower())


@login_required(login_url=LOGIN_URL)
def overview(request):
    """Every type the user may view, a page of its devices each; ``?section=<type>`` renders that type's
    section alone (what the page's script fetches when its search, filter or page changes, or live events
    change what the section shows)."""
    only = request.GET.get("section")
    sections = [
        overview_section(request, device_type, device_model)
        for device_type, device_model, _, _ in visible_types(request.user)
        if only is None or device_type.type_name() == only
    ]
    if only is not None:
        if not sections:
            raise Http404("No such device type")
        return render(request, "hubserver/dashboard/_section.html", {"section": sections[0]})
    return render(request, "hubserver/dashboard/overview.html", {"sections": sections, "page": "overview"})


def overview_section(request, device_type, device_model):
    """One type's card: counts by status, and the page of devices matching its search and status filter.

    The section's state lives in the query string, one set of keys per type (``<type>-q``, ``<type>-status``,
    ``<type>-page``), so every section pages and filters on its own and a URL shows what was on screen."""
    name = device_type.type_name()
    query = request.GET.get(f"{name}-q", "").strip()[:100]
    status = request.GET.get(f"{name}-status", "")
    status = status if status in DeviceStatus.VALID else ""
    counts = dict(device_model.objects.order_by().values_list("status").annotate(n=Count("pk")))
    devices = device_model.objects.order_by("device_id")
    if query:
        devices = devices.filter(Q(device_id__icontains=query) | Q(name__icontains=query))
    if status:
        devices = devices.filter(status=status)
    fields = ("device_id", "name", "status", "battery_level", "last_seen", "is_active")
    page = Paginator(devices.only(*fields), OVERVIEW_PAGE_SIZE).get_page(request.GET.get(f"{name}-page"))
    total = sum(counts.values())

    def page_url(number):
        params = request.GET.copy()
        params.pop("section", None)
        params[f"{name}-page"] = str(number)
        return f"?{params.urlencode()}"

    return {
        "type_name": name,
        "verbose_name": device_type._meta.verbose_name,
        "verbose_name_plural": device_type._meta.verbose_name_plural,
        "empty_label": _lower_first(str(device_type._meta.verbose_name_plural)),
        "description": (device_type.__doc__ or "").strip().splitlines()[0] if device_type.__doc__ else "",
        "devices": list(page.object_list),
        "page": page,
        "previous_url": page_url(page.previous_page_number()) if page.has_previous() else "",
        "next_url": page_url(page.next_page_number()) if page.has_next() else "",
        "query": query,
        "status": status,
        "filtered": bool(query or status),
        "statuses": [(value, label, counts.get(value, 0)) for value, label in DeviceStatus.CHOICES],
        "total": total,
        "online": counts.get(DeviceStatus.ONLINE, 0),
        # The search and filter appear once a type has more devices than one page (or a filter is set).
        "tools": total > OVERVIEW_PAGE_SIZE or bool(query or status),
    }


@login_required(login_url=LOGIN_URL)
def device_detail(request, type_name, device_id):
    device_type = registry.get(type_name)
    models = registry.get_models(type_name) if device_type is not None else None
    if models is None:
        raise Http404("No such device type")
    device_model, reading_model, message_model = models
    if not request.user.has_perm(_perm(device_model, "view")):
        raise PermissionDenied
    device = get_object_or_404(device_model, device_id=device_id)

    readings = list(device_type._readings.values())
    rows = list(
        reading_model.objects.filter(device=device)
        .order_by("-timestamp")
        .values("timestamp", *[r.name for r in readings])[:CHART_POINTS]
    )
    rows.reverse()
    series, charts, latest = {}, [], []
    for reading in readings:
        points = [
            [row["timestamp"].timestamp(), _plot_value(row[reading.name])]
            for row in rows
            if row[reading.name] is not None
        ]
        last = next((row for row in reversed(rows) if row[reading.name] is not None), None)
        entry = {
            "name": reading.name,
            "label": reading.name.replace("_", " ").capitalize(),
            "unit": reading.unit,
            "description": reading.description,
            "value_type": reading.value_type.__name__,
            "chartable": reading.value_type is not str,
            "latest": _display_value(last[reading.name]) if last else None,
            "latest_at": last["timestamp"] if last else None,
            "count": len(points),
        }
        latest.append(entry)
        if entry["chartable"]:
            charts.append(entry)
            series[reading.name] = points

    try:  # the range picker's history comes from the REST API (absent in projects that do not mount it)
        readings_url = reverse(f"{device_type.type_name()}-device-readings", args=[device.device_id])
    except NoReverseMatch:
        readings_url = ""
    can_command = request.user.has_perm(_perm(device_model, "change"))
    commands = [command_form(command) for command in device_type._commands.values()]
    recent = message_model.objects.filter(device=device, direction="outbound").exclude(command="")
    recent = list(
        recent.order_by("-received_at").only(
            "id", "command", "command_status", "payload_json", "command_result", "received_at", "correlation_id"
        )[:RECENT_COMMANDS]
    )
    context = {
        "page": "device",
        "device_type": device_type,
        "type_name": device_type.type_name(),
        "type_verbose_name": device_type._meta.verbose_name,
        "type_verbose_name_plural": device_type._meta.verbose_name_plural,
        "device": device,
        "latest": latest,
        "charts": charts,
        "series": {"points": series, "limit": CHART_POINTS},
        "ranges": RANGES,
        "readings_url": readings_url,
        "commands": commands,
        "can_command": can_command,
        "recent_commands": [
            {
                "id": message.pk,
                "command": message.command,
                "status": message.command_status or CommandState.PENDING,
                "payload": _json_text((message.payload_json or {}).get("payload")),
                "result": _json_text(message.command_result),
                "at": message.received_at,
            }
            for message in recent
        ],
        "state_fields": [
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "value": _display_value(getattr(device, name, None)),
                "unit": field.unit,
                "description": field.description,
            }
            for name, field in device_type._state_fields.items()
        ],
    }
    return render(request, "hubserver/dashboard/device.html", context)


def _lower_first(text):
    """``Weather stations`` -> ``weather stations``, but ``GPS trackers`` stays as it is."""
    first = text.split(" ", 1)[0]
    return text if first.isupper() else text[:1].lower() + text[1:]


def _json_text(value):
    """Compact JSON for display, or "" for nothing worth showing (None, {})."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) if value not in (None, {}, []) else ""


def _plot_value(value):
    return int(value) if isinstance(value, bool) else value


def _display_value(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


SIMPLE_TYPES = {"string", "integer", "number", "boolean"}


def command_form(command):
    """Describe the form for one Command from its ``params`` JSON Schema.

    An object schema whose properties are all strings, enums, integers, numbers or booleans becomes one input
    per property (``fields``); a schema without properties needs no input; anything else (nested objects,
    arrays, combinators) falls back to a JSON textarea (``raw``).
    """
    schema = command.params or {}
    form = {"name": command.name, "label": command.name.replace("_", " "), "description": command.description}
    properties = schema.get("properties") or {}
    is_object = schema.get("type", "object") == "object" and not any(
        key in schema for key in ("oneOf", "anyOf", "allOf", "$ref", "if", "not", "patternProperties")
    )
    required = set(schema.get("required") or ())
    fields = [_field(name, spec, name in required) for name, spec in properties.items()] if is_object else None
    if fields is None or any(field is None for field in fields) or (not properties and required):
        form["raw"] = True
        form["fields"] = []
        form["example"] = "{}"
    else:
        form["raw"] = False
        form["fields"] = fields
    return form


def _field(name, spec, required):
    if not isinstance(spec, dict):
        return None
    field = {
        "name": name,
        "label": spec.get("title") or name.replace("_", " ").capitalize(),
        "help": spec.get("description", ""),
        "required": required,
        "default": spec.get("default"),
    }
    kind = spec.get("type")
    if "enum" in spec:
        values = spec["enum"]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            return None
        field.update(
            kind="enum",
            json_type="number" if all(not isinstance(v, str) for v in values) else "string",
            options=[str(v) for v in values],
        )
        return field
    if "const" in spec or kind not in SIMPLE_TYPES:
        return None
    field["kind"] = kind
    if kind in ("integer", "number"):
        field["min"] = spec.get("minimum")
        field["max"] = spec.get("maximum")
        field["step"] = "1" if kind == "integer" else "any"
    elif kind == "string":
        field["min_length"] = spec.get("minLength")
        field["max_length"] = spec.get("maxLength")
    return field
