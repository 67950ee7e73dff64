"""Root URLs of the ``hubserver`` binary: admin, the hub's ``iot/`` URLs, the REST API and its schema."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("iot/", include("hubserver.urls")),
]
