"""``<slug>/status/`` and ``<slug>/ping/``: a topic's availability over HTTP, for scripts and monitors.

| view | answers |
|---|---|
| ``BrokerTopicStatusView`` | 200 ``Consumer connected``; 503 ``Consumer could not be reached`` (offline) |
|  | or ``Status unknown``; 400 ``Topic is excluded from ping`` (not a DASF topic) |
| ``BrokerTopicPingView`` | pings the topic's consumers (GET or POST), then 302 to its status |

Both: 404 for an unknown topic. Who may: anyone for a public topic; otherwise the status needs one of
``can_view_status``, ``can_produce``, ``can_consume`` and the ping needs ``can_produce`` (object or global
permissions). A request without permission is redirected to the login page when anonymous and answered 403
when logged in. Scripts authenticate with ``Authorization: Token <key>`` (an unknown token: 401).
"""

from django.http import HttpResponse, HttpResponseBadRequest
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect
from django.utils.decorators import method_decorator
from django.views import generic
from django.views.decorators.csrf import csrf_exempt
from guardian.mixins import PermissionRequiredMixin

from .auth import TOKEN_KEYWORDS
from .models import BrokerTopic


class HttpResponseServiceUnavailable(HttpResponse):
    status_code = 503


class _TopicPermissionMixin(PermissionRequiredMixin):
    """guardian's permission check, plus API tokens, public topics, and 403 (not a login page) for users
    who are logged in."""

    model = BrokerTopic
    accept_global_perms = True

    def dispatch(self, request, *args, **kwargs):
        refusal = _token_user(request)
        if refusal is not None:
            return refusal
        return super().dispatch(request, *args, **kwargs)

    def check_permissions(self, request):
        topic = self.get_permission_object()
        if topic.is_public:
            return None
        self.return_403 = request.user.is_authenticated
        return super().check_permissions(request)


def _token_user(request):
    """Set ``request.user`` from ``Authorization: Token <key>``; a 401 response when the key is unknown."""
    header = request.headers.get("Authorization", "").split()
    if len(header) != 2 or header[0].lower() not in TOKEN_KEYWORDS:
        return None
    from rest_framework.authentication import TokenAuthentication
    from rest_framework.exceptions import AuthenticationFailed

    try:
        request.user, _ = TokenAuthentication().authenticate_credentials(header[1])
    except AuthenticationFailed as exc:
        return HttpResponse(str(exc.detail), status=401, content_type="text/plain")
    request.dasf_token = True
    return None


class BrokerTopicStatusView(_TopicPermissionMixin, generic.detail.BaseDetailView):
    """Get a hint on the status of a broker topic."""

    permission_required = ["dasf_broker.can_view_status", "dasf_broker.can_produce", "dasf_broker.can_consume"]
    any_perm = True

    def render_to_response(self, context):
        topic = self.object
        if not topic.supports_dasf:
            return HttpResponseBadRequest("Topic is excluded from ping", content_type="text/plain")
        availability = topic.availability
        if availability is None:
            return HttpResponseServiceUnavailable("Status unknown", content_type="text/plain")
        if not availability:
            return HttpResponseServiceUnavailable("Consumer could not be reached", content_type="text/plain")
        return HttpResponse("Consumer connected", content_type="text/plain")


@method_decorator(csrf_exempt, name="dispatch")
class BrokerTopicPingView(_TopicPermissionMixin, generic.detail.SingleObjectMixin, generic.View):
    """Ping a broker topic's consumers, then show its status. Session POSTs need their CSRF token (token
    requests do not: browsers do not send them on their own)."""

    permission_required = "dasf_broker.can_produce"

    def get(self, request, *args, **kwargs):
        return self.post(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        if request.method == "POST" and not getattr(request, "dasf_token", False):
            refusal = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
            if refusal is not None:
                return refusal
        topic = self.get_object()
        topic.ping()
        return redirect("dasf_broker:brokertopic-status", self.kwargs["slug"])
