"""Read-only browsing of the index: it mirrors what was received, so nothing here edits it."""

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from archive.models import Instance, Patient, Series, Study


class IndexAdmin(admin.ModelAdmin):
    """Rows are written by the receiver only; the admin may view them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Deleting rows without their files would orphan files; not offered until it does both.
        return False


def _children_link(model: str, filter_field: str, obj_id: int, count: int, label: str) -> str:
    url = reverse(f"admin:archive_{model}_changelist") + f"?{filter_field}={obj_id}"
    return format_html('<a href="{}">{} {}</a>', url, count, label)


@admin.register(Patient)
class PatientAdmin(IndexAdmin):
    list_display = ["patient_id", "name", "birth_date", "sex", "studies_link"]
    search_fields = ["patient_id", "name"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Patient]:
        return super().get_queryset(request).annotate(study_count=Count("studies"))

    @admin.display(description="studies", ordering="study_count")
    def studies_link(self, obj: Patient) -> str:
        return _children_link("study", "patient__id__exact", obj.pk, obj.study_count, "studies")


@admin.register(Study)
class StudyAdmin(IndexAdmin):
    list_display = ["study_date", "patient", "accession_number", "description", "series_link"]
    list_filter = ["study_date", "series__modality"]
    search_fields = [
        "patient__name",
        "patient__patient_id",
        "accession_number",
        "study_instance_uid",
    ]
    date_hierarchy = "study_date"
    list_select_related = ["patient"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Study]:
        return super().get_queryset(request).annotate(series_count=Count("series", distinct=True))

    @admin.display(description="series", ordering="series_count")
    def series_link(self, obj: Study) -> str:
        return _children_link("series", "study__id__exact", obj.pk, obj.series_count, "series")


@admin.register(Series)
class SeriesAdmin(IndexAdmin):
    list_display = ["series_number", "modality", "description", "study", "instances_link"]
    list_filter = ["modality"]
    search_fields = ["series_instance_uid", "study__study_instance_uid", "study__accession_number"]
    list_select_related = ["study"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Series]:
        return super().get_queryset(request).annotate(instance_count=Count("instances"))

    @admin.display(description="instances", ordering="instance_count")
    def instances_link(self, obj: Series) -> str:
        return _children_link(
            "instance", "series__id__exact", obj.pk, obj.instance_count, "instances"
        )


@admin.register(Instance)
class InstanceAdmin(IndexAdmin):
    list_display = [
        "instance_number",
        "sop_instance_uid",
        "series",
        "calling_ae_title",
        "received_at",
        "size",
    ]
    list_filter = ["calling_ae_title", "series__modality", "received_at"]
    search_fields = ["sop_instance_uid", "series__series_instance_uid"]
    list_select_related = ["series"]
