import os

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from archive.models import Instance, Patient, Series, Study
from receiver.config import DEFAULTS
from routing.forwarding import forward_enqueue, forward_requeue
from routing.models import CommitmentTransaction, ForwardingRule, ForwardItem, RemoteAE
from routing.remote import remote_ae_echo


def _calling_ae_title() -> str:
    return getattr(settings, "DICOM_AE_TITLE", None) or os.environ.get(
        "DICOM_AE_TITLE", DEFAULTS["ae_title"]
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


@admin.register(ForwardingRule)
class ForwardingRuleAdmin(admin.ModelAdmin):
    """The admin's rules beside the configuration file's (read-only here)."""

    list_display = [
        "destination",
        "when",
        "modalities",
        "calling_aes",
        "deidentify",
        "enabled",
        "configured",
    ]
    list_filter = ["when", "deidentify", "enabled", "configured"]

    def has_change_permission(
        self, request: HttpRequest, obj: ForwardingRule | None = None
    ) -> bool:
        if obj is not None and obj.configured:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(
        self, request: HttpRequest, obj: ForwardingRule | None = None
    ) -> bool:
        if obj is not None and obj.configured:
            return False
        return super().has_delete_permission(request, obj)


@admin.register(ForwardItem)
class ForwardItemAdmin(admin.ModelAdmin):
    """The forwarding queue: written by rules and the "send to" action; requeue from here."""

    list_display = [
        "queued_at",
        "destination",
        "instance_id",
        "state",
        "attempts",
        "repeats",
        "next_attempt_at",
        "sent_at",
        "last_status_hex",
        "last_error",
        "origin",
    ]
    list_filter = ["state", "destination", "origin"]
    list_select_related = ["destination"]
    date_hierarchy = "queued_at"
    actions = ["requeue"]
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ForwardItem | None = None) -> bool:
        return False

    @admin.action(description="Requeue the selected items (dead letters included)")
    def requeue(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = forward_requeue(items=queryset.values_list("pk", flat=True))
        self.message_user(request, f"{count} item(s) requeued", messages.SUCCESS)


_INSTANCES_OF = {
    Patient: "series__study__patient__in",
    Study: "series__study__in",
    Series: "series__in",
}


@admin.action(description="Send to a remote AE (C-STORE, through the forwarding queue)")
def forward_to_remote_ae(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet
) -> HttpResponse | None:
    if not request.user.has_perm("routing.add_forwarditem"):
        modeladmin.message_user(request, "You may not send to remote AEs.", messages.ERROR)
        return None
    instances = Instance.objects.filter(**{_INSTANCES_OF[queryset.model]: queryset})
    if request.POST.get("confirm") == "yes":
        remote = RemoteAE.objects.enabled().filter(pk=request.POST.get("destination")).first()
        if remote is None:
            modeladmin.message_user(request, "No such remote AE.", messages.ERROR)
            return None
        count = forward_enqueue(
            instance_ids=instances.values_list("pk", flat=True),
            destination=remote,
            origin=request.user.get_username(),
        )
        modeladmin.message_user(
            request, f"{count} instance(s) queued for {remote.ae_title}", messages.SUCCESS
        )
        return None
    return TemplateResponse(
        request,
        "routing/forward_send.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Send to a remote AE",
            "selected": list(queryset),
            "noun": queryset.model._meta.verbose_name_plural,
            "instance_count": instances.count(),
            "remotes": RemoteAE.objects.enabled(),
        },
    )


for _model in _INSTANCES_OF:
    _model_admin = admin.site._registry.get(_model)
    if _model_admin is not None:
        _model_admin.actions = [*(_model_admin.actions or []), forward_to_remote_ae]
