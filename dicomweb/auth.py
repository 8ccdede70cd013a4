"""Who may call DICOMweb: a signed-in staff user (the Django session, as OHIF served by us
calls it, same origin) or HTTP Basic with a Django user (throttled by django-axes like the
admin's login). Searching and retrieving need `archive.view_instance`, storing
`archive.add_instance`."""

import functools
import hashlib
import hmac
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
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
            user = _basic_user(request)
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


# DICOMweb clients send their password with every request, and checking it (PBKDF2) costs
# ~0.4 s here: a verified Authorization header is remembered for a few minutes, keyed by its
# HMAC, together with the password hash it was verified against, so that a changed password,
# a deactivated user or a lost permission takes effect at the next request.
_VERIFIED: dict[bytes, tuple[int, str, float]] = {}
_VERIFIED_SECONDS = 300
_VERIFIED_MAX = 1000


def _basic_user(request: HttpRequest) -> AbstractBaseUser | None:
    header = request.headers.get("Authorization", "")
    key = hmac.new(settings.SECRET_KEY.encode(), header.encode(), hashlib.sha256).digest()
    known = _VERIFIED.get(key)
    if known is not None and known[2] > time.monotonic():
        user = get_user_model().objects.filter(pk=known[0], is_active=True).first()
        if user is not None and user.password == known[1]:
            return user
    user = basic_auth_user(request)
    if user is not None:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = (user.pk, user.password, time.monotonic() + _VERIFIED_SECONDS)
    return user


def _challenge(reason: str) -> HttpResponse:
    response = error(401, reason)
    response["WWW-Authenticate"] = 'Basic realm="DICOMweb", charset="UTF-8"'
    return response
