from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Who may sign in: two-factor authentication for staff (django-otp, TOTP)."""

    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts.two_factor import admin_site_install

        admin_site_install()
