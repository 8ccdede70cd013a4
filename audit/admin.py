"""The audit trail in the admin: read-only for everyone, superusers included (no add, change or
delete permission is ever granted here), filtered by actor, patient, action and date, exported
as CSV. Reading it is itself recorded."""

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path, reverse

from audit.models import AUDIT_ACCESS, AuditEvent
from audit.services import audit_record

_CSV_FIELDS = [
    "time",
    "action",
    "outcome",
    "user",
    "ae_title",
    "peer_address",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "detail",
]
# Filters given in the address beyond list_filter: /admin/audit/auditevent/?patient_id=P1
_EXACT_LOOKUPS = {"user", "ae_title", "patient_id", "study_instance_uid", "peer_address"}


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = [
        "time",
        "action",
        "outcome",
        "user",
        "ae_title",
        "peer_address",
        "patient_id",
        "study_instance_uid",
        "detail",
    ]
    list_filter = ["action", "outcome", "time"]
    search_fields = ["=user", "=ae_title", "=patient_id", "=study_instance_uid", "peer_address"]
    date_hierarchy = "time"
    list_per_page = 100
    show_full_result_count = False  # a count of millions of rows per page view is not needed
    change_list_template = "admin/audit/auditevent/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict:
        return {}

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in _EXACT_LOOKUPS or super().lookup_allowed(lookup, value, request)

    def get_urls(self) -> list:
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="audit_auditevent_export"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        query = request.GET.urlencode()
        export_url = reverse("admin:audit_auditevent_export") + (f"?{query}" if query else "")
        response = super().changelist_view(
            request, {**(extra_context or {}), "export_url": export_url}
        )
        if request.method == "GET" and response.status_code == 200:
            audit_record(AUDIT_ACCESS, request=request, detail={"parameters": dict(request.GET)})
        return response

    def export_csv(self, request: HttpRequest) -> HttpResponse:
        """The records the list shows with the same search and filters, all pages, as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse("forbidden", status=403)
        changelist = self.get_changelist_instance(request)
        rows = changelist.get_queryset(request).values_list(*_CSV_FIELDS)
        audit_record(
            AUDIT_ACCESS, request=request, detail={"export": "csv", "parameters": dict(request.GET)}
        )
        response = StreamingHttpResponse(_csv_lines(rows.iterator()), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="audit-trail.csv"'
        return response


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_lines(rows: Iterator[tuple]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(_CSV_FIELDS)
    for row in rows:
        yield writer.writerow([_cell(value) for value in row])


def _cell(value: Any) -> str:
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    # A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
