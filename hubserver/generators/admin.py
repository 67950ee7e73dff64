"""Admin classes for a DeviceType's models.

``create_admin(device_type)`` returns ``(DeviceAdmin, ReadingAdmin, MessageAdmin)`` with the
``list_display``, ``list_filter``, ``search_fields``, ``readonly_fields`` and ``date_hierarchy``; the hub
registers them for every type when ``AUTO_ADMIN`` is on (``auto_register_admin``). Subclass them to
customise, or register your own classes with ``AUTO_ADMIN`` off.

The Device admin has three actions:

- "Provision (rotate) credentials": after a confirmation page, new secrets for the selected devices, shown
  on the response page and nowhere else (only their argon2id hashes are stored; the page is not cached).
  Devices that had credentials lose their live session at once.
- "Send a command": pick one of the type's Commands, give a JSON payload (checked against the Command's
  ``params`` schema), and it is queued for every selected device as an outbound Message.
- "Deactivate": ``is_active = False``, saved device by device so the revocation signal drops each live
  MQTT session.

Messages are the audit trail: their admin can list, filter and view them, never add or edit them.
"""

import json
from urllib.parse import quote

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db import transaction
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.translation import ngettext
from django.views.decorators.debug import sensitive_variables

from ..exceptions import ValidationError
from ..registry import registry

DEVICE_SECRETS = ("mqtt_username", "mqtt_password_hash", "api_key")
TEMPLATES = "hubserver/admin/"
# Narrower cells and wrapping headers, so a type's columns fit next to the filters at 1280 px.
LIST_MEDIA = forms.Media(css={"all": ["hubserver/admin.css"]})
# Provisioning hashes secrets in the request: beyond this many devices, use ``hubserver provision --count``.
MAX_PROVISION_PER_ACTION = 1000


def _plural(queryset_or_count, singular, plural):
    count = queryset_or_count if isinstance(queryset_or_count, int) else len(queryset_or_count)
    return f"{count} {ngettext(singular, plural, count)}"


class SendCommandForm(forms.Form):
    """The intermediate form of "Send a command": which Command, and its payload as JSON."""

    command = forms.ChoiceField(label="Command")
    payload = forms.CharField(
        label="Payload (JSON)",
        required=False,
        initial="{}",
        widget=forms.Textarea(attrs={"rows": 6, "cols": 60, "spellcheck": "false"}),
        help_text="A JSON object, checked against the command's parameter schema. Empty means {}.",
    )

    def __init__(self, device_type, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.device_type = device_type
        self.fields["command"].choices = [
            (name, f"{name}: {command.description}" if command.description else name)
            for name, command in device_type._commands.items()
        ]

    def clean(self):
        cleaned = super().clean()
        name = cleaned.get("command")
        if name is None:
            return cleaned
        text = (cleaned.get("payload") or "").strip() or "{}"
        try:
            payload = json.loads(text)
        except ValueError as exc:
            self.add_error("payload", f"Not valid JSON: {exc}")
            return cleaned
        try:
            cleaned["payload_object"] = self.device_type._commands[name].validate(payload)
        except ValidationError as exc:
            self.add_error("payload", str(exc))
        return cleaned


class HubDeviceAdmin(admin.ModelAdmin):
    """Base of every generated Device admin: the actions. ``create_admin`` sets the list columns, filters and
    searches."""

    @property
    def media(self):
        return super().media + LIST_MEDIA

    device_type = None
    actions = ["provision_credentials", "send_command", "deactivate"]
    list_filter = ["status", "is_active"]
    search_fields = ["name", "device_id"]
    readonly_fields = [*DEVICE_SECRETS, "last_seen", "created_at", "updated_at", "mqtt_limits"]

    @admin.display(description="MQTT limits hit")
    def mqtt_limits(self, device):
        """How often this device's MQTT connection was closed or slowed down for a limit (docs/limits.md),
        since the hub started; the most recent 10,000 clients are remembered."""
        from ..hub import running_hub

        hub = running_hub()
        counts = hub.client_limits(device.mqtt_username) if hub is not None and device.mqtt_username else {}
        if not counts:
            return "none"
        return ", ".join(f"{what.replace(':', ' ')}: {count}" for what, count in sorted(counts.items()))

    def _context(self, request, queryset, title, **extra):
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "queryset": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "device_type": self.device_type,
            "media": self.media,
            **extra,
        }

    def _render(self, request, template, context):
        request.current_app = self.admin_site.name
        return TemplateResponse(request, TEMPLATES + template, context)

    # -- provision ----------------------------------------------------------------------------------------

    @admin.action(description="Provision (rotate) credentials", permissions=["change"])
    def provision_credentials(self, request, queryset):
        devices = list(queryset)
        if len(devices) > MAX_PROVISION_PER_ACTION:
            self.message_user(
                request,
                f"Select at most {MAX_PROVISION_PER_ACTION} devices at a time (or use "
                f"'hubserver provision {self.device_type.type_name()} --count N').",
                messages.ERROR,
            )
            return None
        if request.POST.get("confirm") != "yes":
            rotated = [d for d in devices if d.mqtt_password_hash or d.api_key]
            return self._render(
                request,
                "provision_confirm.html",
                self._context(
                    request,
                    devices,
                    "Provision credentials",
                    rotated=rotated,
                    inactive=[d for d in devices if not d.is_active],
                ),
            )
        return self._provision(request, devices)

    @sensitive_variables("results", "infos", "download")
    def _provision(self, request, devices):
        from ..access.provisioning import connection_info, provision_many

        try:
            results = provision_many(self.device_type, [d.device_id for d in devices])
        except ValidationError as exc:
            self.message_user(request, f"Nothing was provisioned: {exc}", messages.ERROR)
            return None
        infos = [connection_info(result.device, result.credentials) for result in results]
        for result in results:
            self.log_change(
                request, result.device, "Rotated MQTT credentials" if result.rotated else "Provisioned MQTT credentials"
            )
        download = "data:application/json;charset=utf-8," + quote(json.dumps(infos, indent=2))
        response = self._render(
            request,
            "credentials.html",
            self._context(
                request,
                [result.device for result in results],
                "New device credentials",
                infos=infos,
                rotated=sum(1 for result in results if result.rotated),
                download=download,
                download_name=f"{self.device_type.type_name()}-credentials.json",
            ),
        )
        # Shown once: never cached by the browser or a proxy, never sent on as a referrer.
        response["Cache-Control"] = "no-store, no-cache, must-revalidate, max-age=0, private"
        response["Pragma"] = "no-cache"
        response["Referrer-Policy"] = "no-referrer"
        return response

    # -- send a command -----------------------------------------------------------------------------------

    @admin.action(description="Send a command", permissions=["change"])
    def send_command(self, request, queryset):
        device_type = self.device_type
        if not device_type._commands:
            self.message_user(request, f"{device_type.__name__} declares no commands.", messages.WARNING)
            return None
        try:
            from ..commands import send_command
        except ImportError:  # pragma: no cover - the command layer ships with the hub
            self.message_user(request, "Sending commands is not available in this installation.", messages.ERROR)
            return None
        devices = list(queryset)
        form = SendCommandForm(device_type, request.POST if request.POST.get("apply") == "yes" else None)
        if form.is_bound and form.is_valid():
            name, payload = form.cleaned_data["command"], form.cleaned_data["payload_object"]
            sent, failed = [], []
            for device in devices:
                try:
                    with transaction.atomic():
                        send_command(device, name, payload)
                except ValidationError as exc:
                    failed.append(f"{device.device_id}: {exc}")
                else:
                    sent.append(device)
                    self.log_change(request, device, f"Sent command {name} {json.dumps(payload)}")
            if sent:
                self.message_user(request, self._sent_message(name, sent), messages.SUCCESS)
            for problem in failed:
                self.message_user(request, f"Not sent to {problem}", messages.ERROR)
            return None
        schemas = {name: json.dumps(command.json_schema(), indent=2) for name, command in device_type._commands.items()}
        return self._render(
            request,
            "send_command.html",
            self._context(
                request,
                devices,
                f"Send a command to {device_type._meta.verbose_name_plural}",
                form=form,
                schemas=schemas,
            ),
        )

    def _sent_message(self, name, sent):
        text = f"Queued command {name} for {_plural(len(sent), 'device', 'devices')}."
        message_model = self.device_type._message_model
        try:
            url = reverse(
                f"{self.admin_site.name}:{message_model._meta.app_label}_{message_model._meta.model_name}_changelist"
            )
        except NoReverseMatch:
            return text
        query = urlencode({"direction__exact": "outbound"})
        return format_html('{} <a href="{}?{}">See the outbound messages.</a>', text, url, query)

    # -- deactivate ---------------------------------------------------------------------------------------

    @admin.action(description="Deactivate (and disconnect)", permissions=["change"])
    def deactivate(self, request, queryset):
        count = 0
        # One save per device (never queryset.update()): the revocation signal drops each live session.
        for device in queryset.filter(is_active=True):
            device.is_active = False
            device.save(update_fields=["is_active", "updated_at"])
            self.log_change(request, device, "Deactivated")
            count += 1
        if count:
            self.message_user(
                request, f"Deactivated {_plural(count, 'device', 'devices')}; their MQTT sessions are closed."
            )
        else:
            self.message_user(request, "The selected devices were already inactive.", messages.WARNING)


class HubReadingAdmin(admin.ModelAdmin):
    """Base of every generated Reading admin."""

    @property
    def media(self):
        return super().media + LIST_MEDIA

    list_filter = ["device"]
    date_hierarchy = "timestamp"
    list_select_related = ["device"]


class HubMessageAdmin(admin.ModelAdmin):
    """Base of every generated Message admin: read-only, the audit trail."""

    @property
    def media(self):
        return super().media + LIST_MEDIA

    list_display = ["device", "topic", "direction", "processing_status", "received_at"]
    list_filter = ["processing_status", "direction", "command_status"]
    search_fields = ["topic", "correlation_id", "device__device_id"]
    date_hierarchy = "received_at"
    list_select_related = ["device"]

    @admin.display(description="raw payload")
    def payload_text(self, obj):
        return obj.payload_text

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def create_admin(device_type):
    """Return ``(DeviceAdmin, ReadingAdmin, MessageAdmin)`` for ``device_type``, ready to customise."""
    message_model = device_type.get_models()[2]
    state_fields = list(device_type._state_fields)
    reading_fields = list(device_type._readings)

    device_admin = type(
        f"{device_type.__name__}DeviceAdmin",
        (HubDeviceAdmin,),
        {
            "__module__": __name__,
            "device_type": device_type,
            "list_display": [
                "name",
                "device_id",
                "status",
                "battery_level",
                "last_seen",
                "is_active",
                "created_at",
                *state_fields,
            ],
            "list_filter": ["status", "is_active"],
            "search_fields": ["name", "device_id"],
            "readonly_fields": [*DEVICE_SECRETS, "last_seen", "created_at", "updated_at", "mqtt_limits"],
        },
    )
    reading_admin = type(
        f"{device_type.__name__}ReadingAdmin",
        (HubReadingAdmin,),
        {
            "__module__": __name__,
            "list_display": ["device", "timestamp", *reading_fields],
            "list_filter": ["device"],
            "date_hierarchy": "timestamp",
        },
    )
    # Every field read-only; the raw bytes are shown decoded.
    message_fields = [f.name for f in message_model._meta.fields if f.name not in ("id", "payload_raw")]
    message_admin = type(
        f"{device_type.__name__}MessageAdmin",
        (HubMessageAdmin,),
        {
            "__module__": __name__,
            "fields": [*message_fields, "payload_text"],
            "readonly_fields": [*message_fields, "payload_text"],
        },
    )
    return device_admin, reading_admin, message_admin


class HubRollupAdmin(admin.ModelAdmin):
    """Base of every generated Rollup admin: read-only, written by the hub."""

    list_filter = ["bucket"]
    list_select_related = ["device"]
    search_fields = ["device__device_id"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def create_rollup_admin(device_type):
    """The admin class of ``device_type``'s Rollup model (None when the type has no numeric Readings)."""
    rollup_model = device_type.get_rollup_model()
    if rollup_model is None:
        return None
    shown = [f"{name}_{suffix}" for name in rollup_model.reading_names for suffix in ("count", "min", "max")]
    return type(
        f"{device_type.__name__}RollupAdmin",
        (HubRollupAdmin,),
        {"__module__": __name__, "list_display": ["device", "bucket", "start", *shown]},
    )


def auto_register_admin(site=None):
    """Register admin classes for every type that has models and is not registered yet, and the Storage
    page (rows, bytes and the oldest row of every type's tables)."""
    site = site or admin.site
    for device_type, device_model, reading_model, message_model in registry.all_with_models():
        classes = create_admin(device_type)
        for model, model_admin in zip((device_model, reading_model, message_model), classes, strict=True):
            if not site.is_registered(model):
                site.register(model, model_admin)
        rollup_model = device_type.get_rollup_model()
        if rollup_model is not None and not site.is_registered(rollup_model):
            site.register(rollup_model, create_rollup_admin(device_type))
    from ..lifecycle.admin import StorageAdmin
    from ..models import StorageReport

    if not site.is_registered(StorageReport):
        site.register(StorageReport, StorageAdmin)
