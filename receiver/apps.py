from django.apps import AppConfig


class ReceiverConfig(AppConfig):
    name = "receiver"
    verbose_name = "DICOM receiver"

    def ready(self) -> None:
        from receiver import checks  # noqa: F401 - registers the receiver's system checks
