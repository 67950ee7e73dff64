"""Root URLs of the ``hubserver`` binary: admin, the hub's ``iot/`` URLs, the REST API and its schema.

| URL | what |
|---|---|
| ``admin/`` | the Django admin |
| ``iot/`` | the hub's own URLs (``hubserver.urls``) |
| ``api/`` | the API root: the device types the user may view, with their URLs |
| ``api/{type}/...`` | the REST API of every device type (when ``HUBSERVER["AUTO_API"]``) |
| ``api/schema/`` | its OpenAPI 3.1 schema, with each type's MQTT payload schemas (``?format=json`` for JSON) |
| ``api/docs/`` | a browsable UI of the schema (Swagger UI, served by this process: no CDN) |
| ``api/...`` | anything else under ``api/``: a JSON 404 naming the known types |
| ``""`` | the live dashboard (login required) |
| ``metrics`` | Prometheus metrics (this machine and staff users, or anyone with ``METRICS_PUBLIC``) |
| ``healthz`` | 200 while HTTP and the database answer (container health checks), no login |
| ``favicon.ico`` | the hub's icon |
| ``<slug>/status/``, ``<slug>/ping/`` | a DASF topic's availability, and a ping of it (``hubserver.dasf.urls``) |
"""

from django.contrib import admin
from django.urls import include, path, re_path

from .api.docs import ASSET_URL_NAME, DOCS_URL_NAME, SCHEMA_URL_NAME, HubDocsView, HubSchemaView, docs_asset
from .api.root import api_not_found
from .conf import hub_settings
from .views.favicon import favicon_view
from .views.health import health_view
from .views.metrics import metrics_view

# The admin's list pages need the width: with the model sidebar next to the filters, a device list at
# 1280 px hid its last columns. The index page lists every model.
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("iot/", include("hubserver.urls")),
    path("metrics", metrics_view, name="metrics"),
    path("healthz", health_view, name="health"),
    path("favicon.ico", favicon_view, name="favicon"),
]

if hub_settings.AUTO_API:
    from .generators.urls import get_iot_urlpatterns

    urlpatterns += get_iot_urlpatterns("api")

urlpatterns += [
    path("api/schema/", HubSchemaView.as_view(), name=SCHEMA_URL_NAME),
    path("api/docs/", HubDocsView.as_view(), name=DOCS_URL_NAME),
    path("api/docs/assets/<str:name>", docs_asset, name=ASSET_URL_NAME),
    re_path(r"^api/(?P<rest>.*)$", api_not_found),  # JSON, not the HTML 404 page
    path("", include("hubserver.dashboard.urls")),
    path("", include("hubserver.dasf.urls")),
]
