from django.apps import AppConfig


class DasfConfig(AppConfig):
    """The DASF topic broker. Its label is ``dasf_broker``, so permissions read ``dasf_broker.can_produce``."""

    name = "hubserver.dasf"
    label = "dasf_broker"
    verbose_name = "DASF topic broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import app_settings, signals

        app_settings.check()
        signals.install()
