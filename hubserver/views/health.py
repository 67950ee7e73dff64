"""``GET /healthz``: 200 ``{"status": "ok"}`` while this process serves HTTP and its database answers, else
503. For container health checks and load balancers: it needs no login and tells nothing else."""

import logging

from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET

logger = logging.getLogger("hubserver")


@require_GET
def health_view(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        logger.warning("health check: the database does not answer: %s", error)
        return JsonResponse({"status": "unavailable", "reason": "the database does not answer"}, status=503)
    return JsonResponse({"status": "ok"})
