"""Admin classes for a DeviceType's models (seed 001 "Admin Customization")."""

from django.contrib import admin

from ..registry import registry

DEVICE_SECRETS = ("mqtt_username", "mqtt_password_hash", "api_key")


def create_admin(device_type):
    """Return ``(DeviceAdmin, ReadingAdmin, MessageAdmin)`` for ``device_type``, ready to customise."""
    message_model = device_type.get_models()[2]
    state_fields = list(device_type._state_fields)
    reading_fields = list(device_type._readings)

    device_admin = type(
        f"{device_type.__name__}DeviceAdmin",
        (admin.ModelAdmin,),
        {
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
            "readonly_fields": [*DEVICE_SECRETS, "last_seen", "created_at", "updated_at"],
        },
    )
    reading_admin = type(
        f"{device_type.__name__}ReadingAdmin",
        (admin.ModelAdmin,),
        {
            "list_display": ["device", "timestamp", *reading_fields],
            "list_filter": ["device"],
            "date_hierarchy": "timestamp",
            "list_select_related": ["device"],
        },
    )
    message_fields = [f.name for f in message_model._meta.fields]
    message_admin = type(
        f"{device_type.__name__}MessageAdmin",
        (admin.ModelAdmin,),
        {
            "list_display": ["device", "topic", "direction", "processing_status", "received_at"],
            "list_filter": ["processing_status", "direction"],
            "search_fields": ["topic", "correlation_id", "device__device_id"],
            "readonly_fields": message_fields,
            "list_select_related": ["device"],
            # Messages are the audit trail: nobody adds or edits them by hand.
            "has_add_permission": lambda self, request: False,
            "has_change_permission": lambda self, request, obj=None: False,
        },
    )
    return device_admin, reading_admin, message_admin


def auto_register_admin(site=None):
    """Register admin classes for every type that has models and is not registered yet."""
    site = site or admin.site
    for device_type, device_model, reading_model, message_model in registry.all_with_models():
        classes = create_admin(device_type)
        for model, model_admin in zip((device_model, reading_model, message_model), classes, strict=True):
            if not site.is_registered(model):
                site.register(model, model_admin)
