from django.apps import AppConfig


class StableLogConfig(AppConfig):
    name = "stable_log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Receivers are connected when Django loads the app: in every process that has it in
        # INSTALLED_APPS (runscp's workers, or `announce_stable --watch` in this project).
        from stable_log import receivers  # noqa: F401
