"""``?format=`` that an endpoint does not render is answered 404 with the formats it does render (DRF's
own answer, ``{"detail": "Not found."}``, reads as if the URL were wrong)."""

from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation


class NamedFormats(DefaultContentNegotiation):
    def filter_renderers(self, renderers, format):
        matching = [renderer for renderer in renderers if renderer.format == format]
        if not matching:
            offered = ", ".join(dict.fromkeys(renderer.format for renderer in renderers))
            raise NotFound(f"No format {format[:20]!r} here: this endpoint renders {offered} (?format=...).")
        return matching
