"""SSE and polling URLs, included by ``hubserver.urls`` under ``iot/``:

| URL | view | |
|---|---|---|
| ``stream/<type>/`` | ``sse.sse_stream`` | SSE: every device of a type |
| ``stream/<type>/<device_id>/`` | ``sse.sse_stream`` | SSE: one device |
| ``poll/<type>/`` | ``views.poll`` | polling: every device of a type (``?since=&limit=``) |
| ``poll/<type>/<device_id>/`` | ``views.poll`` | polling: one device |
"""

from django.urls import path

from .sse import sse_stream
from .views import poll

urlpatterns = [
    path("stream/<str:type_name>/", sse_stream, name="realtime-stream"),
    path("stream/<str:type_name>/<str:device_id>/", sse_stream, name="realtime-stream-device"),
    path("poll/<str:type_name>/", poll, name="realtime-poll"),
    path("poll/<str:type_name>/<str:device_id>/", poll, name="realtime-poll-device"),
]
