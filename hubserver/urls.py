"""The hub's own URLs, to include under ``iot/``: broker auth for external brokers, device HTTP
ingestion, and (with the realtime layer) SSE streams and polling.

    urlpatterns = [path("iot/", include("hubserver.urls"))]

| URL | view | |
|---|---|---|
| ``broker/auth/`` | ``views.broker_auth.broker_auth`` | POST: EMQX HTTP authentication |
| ``broker/acl/`` | ``views.broker_auth.broker_acl`` | POST: EMQX HTTP authorization |
| ``devices/<type>/<device_id>/data/`` | ``views.ingest.device_data`` | POST: a data message, API key auth |
| ``devices/<type>/<device_id>/status/`` | ``views.ingest.device_status`` | POST: a status message, API key auth |

``/metrics`` (``views.metrics.metrics_view``) belongs at the site root, not here.
"""

from django.urls import include, path

from .views import broker_auth, ingest

app_name = "hubserver"

urlpatterns = [
    path("broker/auth/", broker_auth.broker_auth, name="broker-auth"),
    path("broker/acl/", broker_auth.broker_acl, name="broker-acl"),
    path("devices/<str:type_name>/<str:device_id>/data/", ingest.device_data, name="device-data"),
    path("devices/<str:type_name>/<str:device_id>/status/", ingest.device_status, name="device-status"),
    path("", include("hubserver.realtime.urls")),
]
