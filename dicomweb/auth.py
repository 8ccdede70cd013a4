"""Who may call DICOMweb: a signed-in staff user (the Django session, as OHIF served by us
calls it, same origin) or HTTP Basic with a Django user (throttled by django-axes like the
admin's login). Searching and retrieving need `archive.view_instance`, storing
`archive.add_instance`."""

import functools
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from pacsproject.http_basic import basic_auth_user

VIEW = "archive.view_instance"
ADD = "archive.add_instance"


def error(status: int, reason: str) -> JsonResponse:
    """A refusal with its reason, as text a client can show (also in the Warning header that
    PS3.18 8.6.3 uses for reasons)."""
    response = JsonResponse({"error": reason}, status=status)
    response["Warning"] = f'299 pacs "{reason[:200]}"'
    return response


def dicomweb_view(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Authenticate, then check the permission of the method: GET/HEAD view, POST add.
    401 (with a Basic challenge) without credentials, 403 without the permission."""

    @csrf_exempt  # HTTP Basic clients have no CSRF token; session POSTs are checked below
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        user = request.user if request.user.is_authenticated else None
        if user is not None:
            if not user.is_staff:
                return error(403, "staff only")
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                refused = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(
                    request, None, (), {}
                )
                if refused is not None:
                    return refused
        elif "Authorization" in request.headers:
            user = basic_auth_user(request)
            if user is None:
                return _challenge("wrong user name or password")
            request.user = user
        else:
            return _challenge("authentication required")
        permission = ADD if request.method == "POST" else VIEW
        if not user.has_perm(permission):
            return error(403, f"the permission {permission} is needed")
        return view(request, *args, **kwargs)

    return wrapper


def _challenge(reason: str) -> HttpResponse:
    response = error(401, reason)
    response["WWW-Authenticate"] = 'Basic realm="DICOMweb", charset="UTF-8"'
    return response
