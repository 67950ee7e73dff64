"""URLs of the DASF topic broker, to include with their namespace::

    urlpatterns += [path("", include("hubserver.dasf.urls"))]

| URL | view | name |
|---|---|---|
| ``<slug>/status/`` | ``BrokerTopicStatusView`` | ``dasf_broker:brokertopic-status`` |
| ``<slug>/ping/`` | ``BrokerTopicPingView`` | ``dasf_broker:brokertopic-ping`` |
"""

from django.urls import path

from . import views

app_name = "dasf_broker"

urlpatterns = [
    path("<slug>/status/", views.BrokerTopicStatusView.as_view(), name="brokertopic-status"),
    path("<slug>/ping/", views.BrokerTopicPingView.as_view(), name="brokertopic-ping"),
]
