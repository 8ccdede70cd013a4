"""Audit records for what other apps signal: logins and logouts (django.contrib.auth), and
accesses through the archive's pages (archive.access_signals, so that archive never imports
audit)."""

import logging
from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from archive.access_signals import patient_data_accessed
from audit.models import DENIED, LOCKOUT, LOGIN, LOGIN_FAILED, LOGOUT, SUCCESS, AuditEvent
from audit.services import audit_fields, audit_record, client_address

logger = logging.getLogger(__name__)


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    audit_record(LOGIN, request=request, user=user.get_username())


@receiver(user_logged_out)
def _logged_out(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    audit_record(LOGOUT, request=request, user=user.get_username() if user else "")


@receiver(user_login_failed)
def _login_failed(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    # The username tried is kept (it shows guessing); the password never reaches here.
    audit_record(
        LOGIN_FAILED,
        outcome=DENIED,
        user=str(credentials.get("username", ""))[:150],
        peer_address=client_address(request) if request is not None else "",
        detail={"via": "web"},
    )


@receiver(user_locked_out)
def _locked_out(
    sender: Any, request: HttpRequest, username: str | None, ip_address: str | None, **kwargs: Any
) -> None:
    logger.warning("Login locked out: user %r from %s", username or "", ip_address or "?")
    audit_record(
        LOCKOUT,
        outcome=DENIED,
        user=(username or "")[:150],
        peer_address=ip_address or "",
        detail={"via": "web"},
    )


@receiver(patient_data_accessed)
def _accessed(
    sender: Any,
    action: str,
    request: HttpRequest,
    targets: list[dict[str, str]],
    detail: dict[str, Any] | None = None,
    outcome: str = SUCCESS,
    **kwargs: Any,
) -> None:
    # In the sender's transaction: a deletion and its record commit together or not at all.
    rows = [
        AuditEvent(
            **audit_fields(action, outcome=outcome, request=request, detail=detail, **target)
        )
        for target in targets or [{}]
    ]
    AuditEvent.objects.bulk_create(rows)
