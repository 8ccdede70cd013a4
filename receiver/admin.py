from django.contrib import admin
from django.http import HttpRequest

from receiver.models import AllowedAE, AssociationLog, ReceiverProcess, SOPClassRule


@admin.register(AllowedAE)
class AllowedAEAdmin(admin.ModelAdmin):
    list_display = ["ae_title", "host", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["enabled"]
    search_fields = ["ae_title", "host", "description"]


@admin.register(SOPClassRule)
class SOPClassRuleAdmin(admin.ModelAdmin):
    list_display = ["sop_classes", "action", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["action", "enabled"]


@admin.register(AssociationLog)
class AssociationLogAdmin(admin.ModelAdmin):
    """Written by the receiver only: read-only here."""

    list_display = [
        "started_at",
        "calling_ae_title",
        "called_ae_title",
        "peer_address",
        "outcome",
        "reason",
        "instances_stored",
        "duplicates",
        "failure_count",
        "bytes_received",
        "ended_at",
    ]
    list_filter = ["outcome", "calling_ae_title", "started_at"]
    search_fields = ["calling_ae_title", "called_ae_title", "peer_address", "reason"]
    date_hierarchy = "started_at"

    @admin.display(description="failures")
    def failure_count(self, obj: AssociationLog) -> int:
        return sum(obj.failures.values())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return request.user.is_superuser  # pruning old entries


@admin.register(ReceiverProcess)
class ReceiverProcessAdmin(admin.ModelAdmin):
    """Recorded by the receiver processes themselves (receiver.live): read-only here."""

    list_display = [
        "ae_title",
        "port",
        "host",
        "pid",
        "role",
        "started_at",
        "heartbeat_at",
        "stopped_at",
    ]
    list_filter = ["host", "ae_title"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
