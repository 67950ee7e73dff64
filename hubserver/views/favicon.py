"""``GET /favicon.ico``: the hub's icon, where browsers ask for it (the admin and API pages name none)."""

from functools import cache
from pathlib import Path

from django.http import HttpResponse
from django.views.decorators.http import require_GET

ICON = Path(__file__).resolve().parent.parent / "static" / "hubserver" / "favicon.ico"


@cache
def _icon():
    return ICON.read_bytes()


@require_GET
def favicon_view(request):
    response = HttpResponse(_icon(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
