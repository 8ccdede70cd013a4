"""`python manage.py totpdevice USERNAME`: enrol a TOTP authenticator for a user and print the
otpauth:// address to put into the authenticator app (as text or a QR code)."""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = "Create a TOTP device for USERNAME and print its otpauth:// address."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="authenticator", help="the device's name")
        parser.add_argument(
            "--replace", action="store_true", help="remove the user's other TOTP devices"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: options["username"]})
        except User.DoesNotExist:
            raise CommandError(f"no user {options['username']!r}") from None
        if options["replace"]:
            TOTPDevice.objects.filter(user=user).delete()
        device = TOTPDevice.objects.create(user=user, name=options["name"], confirmed=True)
        self.stdout.write(device.config_url)
