from django.apps import AppConfig


class UserDevicesConfig(AppConfig):
    name = "hubserver.userdevices"
    label = "userdevices"
    verbose_name = "Your devices"
    default_auto_field = "django.db.models.BigAutoField"
