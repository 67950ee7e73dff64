"""ASGI application of the hub (HTTP through Django; WebSocket routes join with the realtime layer)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubserver.settings")

application = get_asgi_application()
