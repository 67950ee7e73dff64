"""CSV output: a renderer for ordinary responses and a streaming writer for whole exports."""

import csv

from rest_framework.renderers import BaseRenderer


class _Line:
    """A file-like object whose ``write`` returns what it was given: ``csv.writer`` then yields lines."""

    def write(self, value):
        return value


def _cell(value):
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        # UTC as "Z", as the JSON of the same API writes it.
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return value


def stream_csv(header, rows):
    """Yield the CSV text of ``header`` then ``rows`` (sequences), one line at a time."""
    writer = csv.writer(_Line())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([_cell(v) for v in row])


class CSVRenderer(BaseRenderer):
    """Renders a list of objects (or a paginated ``{"results": [...]}``) as CSV with a header row.

    The columns come from the view's ``get_csv_header()`` when it has one (so an empty list still has its
    header), else from the first row's keys.
    """

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if isinstance(data, dict) and "results" in data:
            data = data["results"]
        if isinstance(data, dict):
            data = [data]
        rows = list(data or [])
        view = (renderer_context or {}).get("view")
        header = view.get_csv_header() if hasattr(view, "get_csv_header") else list(rows[0]) if rows else []
        return "".join(stream_csv(header, ([row.get(c) for c in header] for row in rows))).encode(self.charset)
