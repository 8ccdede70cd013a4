"""A refused request of a signed-in user is an audit record: someone tried what their role does
not allow (or a request failed its CSRF check)."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from audit.models import DENIED, REFUSED
from audit.services import audit_record


class RefusedAccessMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if response.status_code == 403 and user is not None and user.is_authenticated:
            audit_record(
                REFUSED,
                outcome=DENIED,
                request=request,
                detail={"method": request.method, "path": request.path[:500]},
            )
        return response
