"""Two-factor authentication (django-otp, TOTP): asked of staff who have an authenticator,
required of everyone with REQUIRE_2FA=true, on every page behind the admin's login."""

import io
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

PASSWORD = "correct horse battery"


@pytest.fixture
def alice(db, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return User.objects.create_superuser("alice", "", PASSWORD)


def _enrol(user: User) -> TOTPDevice:
    out = io.StringIO()
    call_command("totpdevice", user.username, stdout=out)
    url = out.getvalue().strip()
    assert url.startswith("otpauth://totp/")
    assert parse_qs(urlsplit(url).query)["secret"]
    return TOTPDevice.objects.get(user=user)


def _code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def _login(client, token: str = "", device: TOTPDevice | None = None):
    data = {"username": "alice", "password": PASSWORD, "next": "/admin/"}
    if token:
        data["otp_token"] = token
    if device is not None:
        data["otp_device"] = device.persistent_id
    return client.post(reverse("admin:login"), data)


def test_without_an_authenticator_the_password_is_enough_by_default(client, alice):
    assert _login(client).status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200


def test_with_an_authenticator_its_code_is_needed(client, alice):
    device = _enrol(alice)
    refused = _login(client)
    assert refused.status_code == 200 and b"code your authenticator app shows" in refused.content
    wrong = _login(client, "000000", device)
    assert wrong.status_code == 200 and b"Wrong authenticator code" in wrong.content
    assert "_auth_user_id" not in client.session
    device.refresh_from_db()
    device.throttling_failure_count = 0  # django-otp slows guessing down; not what is tested
    device.save()
    time.sleep(0.01)
    assert _login(client, _code(device), device).status_code == 302
    assert client.get(reverse("admin:index")).status_code == 200


def test_required_two_factor_refuses_accounts_without_authenticator(client, alice, settings):
    settings.REQUIRE_2FA = True
    refused = _login(client)
    assert refused.status_code == 200 and b"totpdevice" in refused.content
    assert "_auth_user_id" not in client.session


def test_required_two_factor_treats_an_unverified_session_as_not_staff(client, alice, settings):
    settings.REQUIRE_2FA = True
    client.force_login(alice)  # a password-only session
    for url in [reverse("admin:index"), reverse("archive-dashboard"), reverse("receiver-status")]:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response.url, url
    device = _enrol(alice)
    client.logout()
    assert _login(client, _code(device), device).status_code == 302
    for url in [reverse("admin:index"), reverse("archive-dashboard"), reverse("receiver-status")]:
        assert client.get(url).status_code == 200, url
