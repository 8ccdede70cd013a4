"""HTTP Basic authentication for the endpoints that take it (DICOMweb clients), through
Django's authenticate() with the request, so that it is throttled and locked out exactly like
the admin's login (django-axes) and audited the same way."""

import base64
import binascii

from django.contrib.auth import authenticate
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest


def basic_auth_user(request: HttpRequest) -> AbstractBaseUser | None:
    """The active user named by the request's `Authorization: Basic` header with the right
    password, or None (no header, malformed, wrong password, or locked out)."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        username, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep:
        return None
    user = authenticate(request=request, username=username, password=password)
    return user if user is not None and user.is_active else None
