"""Login throttling in front of the password check (django-axes)."""

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for every authenticate() that carries a request: the admin's
    login form and HTTP Basic (pacsproject.http_basic). Without a request there is no client to
    count failures for (a script, the test client's login()): it passes on to the password
    check instead of failing, as axes' own backend would."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> None:
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)
