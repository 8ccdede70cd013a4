"""Two-factor authentication for the admin (django-otp, TOTP).

A staff user with a confirmed TOTP device signs in with password and the device's code; the
session is then verified. With REQUIRE_2FA=true every staff user must have one: without a
device the login is refused (saying what to do), and a session not verified by a device is
treated as not staff, on every page behind the admin's login. Without REQUIRE_2FA, users
without a device sign in with their password alone.
"""

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm

_NO_DEVICE = (
    "Two-factor authentication is required and this account has no authenticator yet: "
    "ask an administrator to enrol one (python manage.py totpdevice USERNAME)."
)


class TwoFactorAuthenticationForm(OTPAdminAuthenticationForm):
    """The admin's login form: the authenticator's code is asked of users who have one, and
    required of everyone under REQUIRE_2FA."""

    otp_error_messages = {
        **OTPAdminAuthenticationForm.otp_error_messages,
        "token_required": "Please enter the code your authenticator app shows.",
        "invalid_token": "Wrong authenticator code, or too many attempts: wait and try again.",
    }

    def clean(self) -> dict:
        cleaned = super(OTPAdminAuthenticationForm, self).clean()  # password, staff status
        user = self.get_user()
        if user is None:
            return cleaned
        if user_has_device(user):
            self.clean_otp(user)
        elif settings.REQUIRE_2FA:
            raise forms.ValidationError(_NO_DEVICE, code="no_device")
        return cleaned


class TwoFactorAdminSite(AdminSite):
    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        user = request.user
        if user.is_verified():
            return True
        # Signed in without a code: enough only when none is needed.
        return not settings.REQUIRE_2FA and not user_has_device(user)


def admin_site_install() -> None:
    """Make the one admin site (which every staff page goes through) a two-factor site."""
    admin.site.__class__ = TwoFactorAdminSite
    admin.site.login_form = TwoFactorAuthenticationForm
    admin.site.login_template = "otp/admin111/login.html"
