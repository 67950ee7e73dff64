"""The binary's URLs plus the dashboard at the root, for tests that need the dashboard without ``hubserver run``."""

from django.urls import include, path

from hubserver.site_urls import urlpatterns as site_urlpatterns

urlpatterns = [*site_urlpatterns, path("", include("hubserver.dashboard.urls"))]
