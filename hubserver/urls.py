"""The hub's own URLs, to include under ``iot/`` (seed 001): broker auth for external brokers, device HTTP
ingestion, and (with the realtime layer) SSE streams and polling.

    urlpatterns = [path("iot/", include("hubserver.urls"))]
"""

app_name = "hubserver"

urlpatterns = []
