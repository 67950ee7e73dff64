"""URLs of the hub: the admin for now; the API, live views and broker endpoints join as they are built."""

from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]
