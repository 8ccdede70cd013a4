"""Sessions end after SESSION_IDLE_MINUTES without a request from their user. Background
refreshes (the status page's polling, marked with an `X-Background-Refresh` header) are not
activity: a status page left open does not keep an unattended login alive."""

import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

_KEY = "last_activity"
# The session is written at most this often for activity alone (one write a minute, not one
# per request).
_RESOLUTION = 60


class IdleLogoutMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        idle = settings.SESSION_IDLE_MINUTES * 60
        if idle > 0 and request.user.is_authenticated:
            now = time.time()
            last = request.session.get(_KEY)
            if last is not None and now - last > idle:
                logout(request)  # user_logged_out: recorded in the audit trail
            elif "X-Background-Refresh" not in request.headers and (
                last is None or now - last >= _RESOLUTION
            ):
                request.session[_KEY] = now
        return self.get_response(request)
