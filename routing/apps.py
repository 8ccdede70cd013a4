from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "DICOM routing"

    def ready(self) -> None:
        from archive.retention import retention_guard_register
        from routing.retention_guard import studies_with_pending_routing

        retention_guard_register(studies_with_pending_routing)
