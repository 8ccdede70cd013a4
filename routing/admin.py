import os

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from routing.models import CommitmentTransaction, RemoteAE
from routing.remote import remote_ae_echo


def _calling_ae_title() -> str:
    return getattr(settings, "DICOM_AE_TITLE", None) or os.environ.get(
        "DICOM_AE_TITLE", "PACS_RECEIVER"
    )


@admin.register(RemoteAE)
class RemoteAEAdmin(admin.ModelAdmin):
    """The admin's remote AEs beside the configuration file's (read-only here)."""

    list_display = ["ae_title", "host", "port", "tls", "description", "enabled", "configured"]
    list_filter = ["enabled", "tls", "configured"]
    search_fields = ["ae_title", "host", "description"]
    actions = ["echo"]

    def has_change_permission(self, request: HttpRequest, obj: RemoteAE | None = None) -> bool:
        if obj is not None and obj.configured:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: RemoteAE | None = None) -> bool:
        if obj is not None and obj.configured:
            return False
        return super().has_delete_permission(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().delete_queryset(request, queryset.filter(configured=False))

    @admin.action(description="Send a C-ECHO to the selected remote AEs")
    def echo(self, request: HttpRequest, queryset: QuerySet) -> None:
        calling = _calling_ae_title()
        for remote in queryset:
            result = remote_ae_echo(remote=remote, calling_ae_title=calling)
            level = messages.SUCCESS if result.ok else messages.ERROR
            text = f"{remote}: {result.detail}" if result.ok else result.detail
            self.message_user(request, text, level)


@admin.register(CommitmentTransaction)
class CommitmentTransactionAdmin(admin.ModelAdmin):
    """Written by the receiver only: read-only here."""

    list_display = [
        "requested_at",
        "calling_ae_title",
        "transaction_uid",
        "instance_count",
        "outcome",
        "state",
        "attempts",
        "delivered_at",
        "last_error",
    ]
    list_filter = ["state", "calling_ae_title"]
    search_fields = ["transaction_uid", "calling_ae_title"]
    date_hierarchy = "requested_at"

    @admin.display(description="instances")
    def instance_count(self, obj: CommitmentTransaction) -> int:
        return len(obj.references)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: CommitmentTransaction | None = None
    ) -> bool:
        return False
