from django.apps import AppConfig


class DeviceTypesConfig(AppConfig):
    name = "hubserver.devicetypes"
    label = "devicetypes"
    verbose_name = "Device catalogue"
    default_auto_field = "django.db.models.BigAutoField"
