"""Guessing passwords: 20 failures lock the account and the address (django-axes); the right
password is refused until the cool-off; HTTP Basic is throttled the same way; all audited."""

import base64
import datetime as dt

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from audit.models import LOCKOUT, LOGIN, LOGIN_FAILED, AuditEvent
from pacsproject.http_basic import basic_auth_user
from tests.audit.atna_schema import audit_messages_checked  # noqa: F401 - fixture used by name

PASSWORD = "correct horse battery"

# Every audit record these tests leave makes a valid DICOM audit message.
pytestmark = pytest.mark.usefixtures("audit_messages_checked")


@pytest.fixture
def alice(db, settings):
    # A fast hasher: the tests try passwords by the hundred; what is tested is the counting.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User.objects.create_superuser("alice", "", PASSWORD)
    User.objects.create_superuser("bob", "", PASSWORD)


def _login(client, username: str, password: str, address: str = "10.0.0.5"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
    )


def _cool_off_passes() -> None:
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=31))


def test_twenty_wrong_passwords_lock_the_account_and_the_address(client, alice):
    for _ in range(19):
        assert _login(client, "alice", "guess").status_code == 200  # the form again
    assert _login(client, "alice", "guess").status_code == 429
    # The right password is refused now, from here and from elsewhere ...
    assert _login(client, "alice", PASSWORD).status_code == 429
    assert _login(client, "alice", PASSWORD, address="10.9.9.9").status_code == 429
    # ... and this address may not try another account either.
    assert _login(client, "bob", PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session
    # Each attempt refused during the lockout is recorded too; the first is the lockout itself.
    lockout = AuditEvent.objects.filter(action=LOCKOUT).order_by("time", "pk").first()
    assert (lockout.user, lockout.peer_address, lockout.outcome) == ("alice", "10.0.0.5", "denied")
    assert AuditEvent.objects.filter(action=LOGIN_FAILED, user="alice").count() >= 20
    assert not AuditEvent.objects.filter(action=LOGIN).exists()

    _cool_off_passes()
    assert _login(client, "alice", PASSWORD).status_code == 302
    assert AuditEvent.objects.filter(action=LOGIN, user="alice").count() == 1


def test_the_unlock_command_lifts_a_lockout(client, alice):
    for _ in range(20):
        _login(client, "alice", "guess")
    assert _login(client, "alice", PASSWORD).status_code == 429
    call_command("axes_reset_username", "alice", verbosity=0)
    call_command("axes_reset_ip", "10.0.0.5", verbosity=0)
    assert _login(client, "alice", PASSWORD).status_code == 302


def test_fewer_failures_then_the_right_password_resets_the_count(client, alice):
    for _ in range(19):
        _login(client, "alice", "guess")
    assert _login(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(19):
        _login(client, "alice", "guess")
    assert _login(client, "alice", PASSWORD).status_code == 302


def _basic(username: str, password: str, address: str = "10.0.0.7"):
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return RequestFactory().get(
        "/dicomweb/studies", HTTP_AUTHORIZATION=f"Basic {token}", REMOTE_ADDR=address
    )


def test_http_basic_is_throttled_the_same_way(alice):
    assert basic_auth_user(_basic("alice", PASSWORD)).username == "alice"
    for _ in range(20):
        assert basic_auth_user(_basic("alice", "guess")) is None
    assert basic_auth_user(_basic("alice", PASSWORD)) is None  # locked out
    assert AuditEvent.objects.filter(action=LOCKOUT, user="alice").exists()
    _cool_off_passes()
    assert basic_auth_user(_basic("alice", PASSWORD)).username == "alice"


@pytest.mark.parametrize("header", ["Basic", "Basic !!!", "Bearer x", "Basic " + "YWxpY2U="])
def test_malformed_basic_headers_are_no_user(alice, header):
    request = RequestFactory().get("/", HTTP_AUTHORIZATION=header)
    assert basic_auth_user(request) is None
