"""The admin's Storage page: rows, bytes and the oldest row kept of each type's tables, with their
retention and the hub's last pruning pass."""

from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse

from ..registry import registry
from .durations import format_duration
from .retention import retention_for
from .storage import storage_figures


def human_bytes(value):
    if value is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def retention_text(device_type, table):
    keep = retention_for(device_type)
    if table == "messages":
        return f"messages {format_duration(keep.messages)}, commands {format_duration(keep.commands)}"
    if table == "readings":
        return format_duration(keep.readings)
    return ", ".join(f"{label} {format_duration(duration)}" for label, duration in keep.rollups.items())


def _pruner():
    from ..hub import running_hub

    router = getattr(running_hub(), "router", None)
    return getattr(router, "pruner", None)


class StorageAdmin(admin.ModelAdmin):
    """A page, not a list: there is no table behind the model."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        if request.method == "POST":
            storage_figures.refresh()
            self.message_user(request, "The storage figures were taken again.", messages.SUCCESS)
            return HttpResponseRedirect(request.path)
        snapshot = storage_figures.snapshot or storage_figures.refresh()
        rows = []
        for figures in snapshot.tables:
            device_type = registry.get(figures.type_name)
            rows.append(
                {
                    "type_name": figures.type_name,
                    "table": figures.table,
                    "db_table": figures.db_table,
                    "rows": figures.rows,
                    "rows_text": f"{figures.rows:,}",
                    "bytes": human_bytes(figures.bytes),
                    "per_row": human_bytes(figures.bytes / figures.rows) if figures.bytes and figures.rows else "—",
                    "oldest": figures.oldest,
                    "retention": retention_text(device_type, figures.table) if device_type is not None else "",
                }
            )
        pruner = _pruner()
        context = {
            **self.admin_site.each_context(request),
            "title": "Storage",
            "opts": self.model._meta,
            "rows": rows,
            "database_bytes": human_bytes(snapshot.database_bytes),
            "age": snapshot.age(),
            "took": snapshot.seconds,
            "pruner": pruner.stats() if pruner is not None else None,
            "prune_interval": pruner.interval if pruner is not None else None,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "hubserver/admin/storage.html", context)
