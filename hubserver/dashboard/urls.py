"""Dashboard URLs, meant for the site root: ``path("", include("hubserver.dashboard.urls"))``.

| URL | view |
|---|---|
| ```` | the overview: every device type the user may view, live |
| ``devices/<type>/<device_id>/`` | one device: live charts per Reading, command forms, recent commands |
| ``topics/`` | the DASF topics the user may see the status of, live (``topics/stream/``: their SSE stream) |
| ``login/``, ``logout/`` | Django's auth views with the dashboard's template (logout is POST only) |
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from . import topics, views

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("devices/<str:type_name>/<str:device_id>/", views.device_detail, name="device"),
    path("topics/", topics.topics, name="topics"),
    path("topics/stream/", topics.topics_stream, name="topics-stream"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="hubserver/dashboard/login.html",
            redirect_authenticated_user=True,
            next_page="dashboard:overview",
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
]
