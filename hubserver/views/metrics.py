"""``GET /metrics``: the Prometheus text exposition of ``hubserver.metrics.REGISTRY``.

Who may read it:

- a request from this machine (``REMOTE_ADDR`` is a loopback address) that did *not* come through a proxy
  (no ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP`` header: behind a reverse proxy on the same host
  every request looks local, so proxied requests are not trusted as local);
- a request from a network in ``HUBSERVER["METRICS_ALLOWED_NETWORKS"]`` (binary:
  ``HUBSERVER_METRICS_ALLOWED_NETWORKS``), e.g. the bridge a container's published port arrives through,
  under the same no-proxy-header condition;
- a logged-in staff user (session);
- anyone, when ``HUBSERVER["METRICS_PUBLIC"]`` (binary: ``HUBSERVER_METRICS_PUBLIC=1``) is True (e.g. a
  Prometheus on another host in a private network; restrict it at the network level then).

Everyone else gets 403.
"""

import ipaddress

from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from .. import metrics
from ..conf import hub_settings

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def _is_trusted_address(address):
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or any(ip in network for network in hub_settings.METRICS_ALLOWED_NETWORKS)


def metrics_allowed(request):
    if hub_settings.METRICS_PUBLIC:
        return True
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    return _is_trusted_address(request.META.get("REMOTE_ADDR")) and not any(h in request.headers for h in PROXY_HEADERS)


@require_GET
def metrics_view(request):
    if not metrics_allowed(request):
        message = "metrics are available to staff users, from localhost and from HUBSERVER_METRICS_ALLOWED_NETWORKS\n"
        return HttpResponse(message, status=403, content_type="text/plain")
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
