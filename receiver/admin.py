from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse

from audit.models import RULE_CHANGE
from audit.services import audit_record
from receiver.config import ConfigError, config_file_read
from receiver.models import AllowedAE, AssociationLog, ReceiverProcess, SOPClassRule
from receiver.sop_classes import sop_classes_parse


def file_rules() -> dict[str, Any]:
    """The access rules of the configuration file (DICOM_CONFIG), shown read-only beside the
    admin's own: who may send and which storage classes are accepted."""
    path = settings.DICOM_CONFIG
    if path is None:
        return {"path": None, "allowed_aes": (), "accepted_sop_classes": None}
    try:
        values = config_file_read(path)
    except ConfigError as exc:
        return {"path": path, "error": str(exc)}
    accepted = values.get("accepted_sop_classes")
    if accepted is not None:
        accepted = [(entry, _class_names(entry)) for entry in accepted]
    return {
        "path": path,
        "require_known_ae": values.get("require_known_ae"),
        "allowed_aes": values.get("allowed_aes", ()),
        "accepted_sop_classes": accepted,
    }


def _class_names(entry: str) -> list[str]:
    try:
        return [uid.name for uid in sop_classes_parse([entry])]
    except ValueError as exc:
        return [f"({exc})"]


class AuditedRuleAdmin(admin.ModelAdmin):
    """Every change to an access rule leaves an audit record, in the change's transaction."""

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            fields = {name: str(getattr(obj, name, "")) for name in form.changed_data}
            self._audit(request, obj, "changed" if change else "added", fields)

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        with transaction.atomic():
            self._audit(request, obj, "deleted", {})
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                self._audit(request, obj, "deleted", {})
            super().delete_queryset(request, queryset)

    def _audit(self, request: HttpRequest, obj: Model, change: str, fields: dict) -> None:
        audit_record(
            RULE_CHANGE,
            request=request,
            detail={
                "rule": obj._meta.verbose_name,
                "id": obj.pk,
                "object": str(obj),
                "change": change,
                "fields": fields,
            },
        )


@admin.register(AllowedAE)
class AllowedAEAdmin(AuditedRuleAdmin):
    list_display = ["ae_title", "host", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["enabled"]
    search_fields = ["ae_title", "host", "description"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "file_rules": file_rules()}
        return super().changelist_view(request, context)


@admin.register(SOPClassRule)
class SOPClassRuleAdmin(AuditedRuleAdmin):
    list_display = ["sop_classes", "action", "description", "enabled"]
    list_editable = ["enabled"]
    list_filter = ["action", "enabled"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        context = {**(extra_context or {}), "file_rules": file_rules()}
        return super().changelist_view(request, context)


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
        "end",
    ]
    list_filter = ["end", "host", "ae_title"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
