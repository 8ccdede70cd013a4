"""The live status page, its JSON, and /metrics. Staff only: the admin site's login guards the
pages; /metrics also takes a bearer token, for Prometheus."""

import hmac

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST

from archive.safetext import strings_marked
from receiver.metrics import metrics_text
from receiver.models import heartbeat_interval
from receiver.status import receiver_status


def status_page(request: HttpRequest) -> HttpResponse:
    context = {
        **admin.site.each_context(request),
        "title": "Receiver status",
        # Values from peers with their control characters visible (the page sets textContent).
        "status": strings_marked(receiver_status(timezone.now())),
        # The page polls a little faster than the heartbeat, never slower than every 5 s.
        "poll_ms": int(1000 * min(5.0, max(1.0, heartbeat_interval()))),
    }
    return render(request, "receiver/status.html", context)


def status_json(request: HttpRequest) -> JsonResponse:
    response = JsonResponse(strings_marked(receiver_status(timezone.now())))
    response["Cache-Control"] = "no-store"
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_active and request.user.is_staff) and not _bearer_ok(request):
        response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(metrics_text(settings.DICOM_STORAGE_DIR), content_type=CONTENT_TYPE_LATEST)


def _bearer_ok(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
