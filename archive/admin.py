"""Browsing of the index: it mirrors what was received, so nothing here edits it; deleting
removes the files with the rows (archive.deletion)."""

from collections.abc import Iterable

from django.conf import settings
from django.contrib import admin
from django.db.models import Count, Exists, Model, OuterRef, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from archive.deletion import deletion_preview, index_delete
from archive.exceptions import StorageFailure
from archive.models import Instance, Patient, RecycledStudy, Series, Study
from archive.storage import Storage
from archive.tagdump import tag_dump

admin.site.site_header = "DICOM receiver"
admin.site.site_title = "DICOM receiver"
admin.site.index_template = "admin/archive_index.html"


class IndexAdmin(admin.ModelAdmin):
    """Rows are written by the receiver only; the admin may view them, and delete them with
    their files."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        index_delete(self.model.objects.filter(pk=obj.pk), _storage())

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        index_delete(queryset, _storage())

    def get_deleted_objects(self, objs: Iterable[Model], request: HttpRequest) -> tuple:
        """The confirmation page's summary: counts from the database, not every row below
        (a patient can have hundreds of thousands of instances)."""
        objects = list(objs)
        counts = deletion_preview(self.model.objects.filter(pk__in=[o.pk for o in objects]))
        per_model = {
            Patient: counts.patients,
            Study: counts.studies,
            Series: counts.series,
            Instance: counts.instances,
        }
        model_count = {model._meta.verbose_name_plural: n for model, n in per_model.items() if n}
        perms_needed = {
            model._meta.verbose_name
            for model, n in per_model.items()
            if n and not request.user.has_perm(f"archive.delete_{model._meta.model_name}")
        }
        shown = [str(o) for o in objects[:100]]
        if counts.instances:
            shown.append(f"and the {counts.instances} stored file(s) of their instances")
        shown.append("and the series, studies and patients this leaves without children")
        return shown, model_count, perms_needed, []


def _storage() -> Storage:
    return Storage(settings.DICOM_STORAGE_DIR)


class CallingAEFilter(admin.SimpleListFilter):
    """Studies or series with instances from a calling AE title. The choices come from the
    instances' index on calling_ae_title, and the filter is an EXISTS: no join that repeats
    rows or scans every instance."""

    title = "calling AE title"
    parameter_name = "calling_ae"
    # From the model being listed to the study or series an instance belongs to.
    instance_link = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        titles = (
            Instance.objects.order_by("calling_ae_title")
            .values_list("calling_ae_title", flat=True)
            .distinct()[:100]
        )
        return [(title, title or "(none)") for title in titles]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        sent = Instance.objects.filter(
            calling_ae_title=self.value(), **{self.instance_link: OuterRef("pk")}
        )
        return queryset.filter(Exists(sent))


class StudyCallingAEFilter(CallingAEFilter):
    instance_link = "series__study"


class SeriesCallingAEFilter(CallingAEFilter):
    instance_link = "series"


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
    readonly_fields = ["series_previews"]
    list_display = ["study_date", "patient", "accession_number", "description", "series_link"]
    list_filter = ["study_date", "series__modality", StudyCallingAEFilter]
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

    @admin.display(description="series previews")
    def series_previews(self, obj: Study) -> SafeString:
        """A strip with one preview per series, each linking to the series' instances."""
        series = obj.series.annotate(instance_count=Count("instances")).order_by(
            "series_number", "pk"
        )
        tiles = format_html_join(
            "",
            '<figure class="series-preview" style="display:inline-block;margin:0 8px 8px 0;'
            'text-align:center"><a href="{}"><img src="{}" alt="{}" loading="lazy" '
            'style="width:160px;height:160px;object-fit:contain;background:#000"></a>'
            "<figcaption>{} ({} instances)</figcaption></figure>",
            (
                (
                    reverse("admin:archive_instance_changelist") + f"?series__id__exact={s.pk}",
                    reverse("archive-series-preview", args=[s.pk]),
                    f"Series {s.series_number or ''} preview",
                    str(s),
                    s.instance_count,
                )
                for s in series
            ),
        )
        return format_html('<div class="series-strip">{}</div>', tiles)


@admin.register(Series)
class SeriesAdmin(IndexAdmin):
    list_display = ["series_number", "modality", "description", "study", "instances_link"]
    list_filter = ["modality", SeriesCallingAEFilter]
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
    search_fields = [
        "sop_instance_uid",
        "series__series_instance_uid",
        "series__study__study_instance_uid",
    ]
    list_select_related = ["series"]
    readonly_fields = ["preview", "download", "header"]
    fieldsets = [
        (None, {"fields": ["preview", "download"]}),
        (
            "Index",
            {
                "fields": [
                    "series",
                    "sop_instance_uid",
                    "sop_class_uid",
                    "instance_number",
                    "transfer_syntax_uid",
                    "path",
                    "size",
                    "sha256",
                    "received_at",
                    "calling_ae_title",
                    "remote_address",
                ]
            },
        ),
        ("Header of the stored file", {"fields": ["header"]}),
    ]

    @admin.display(description="preview")
    def preview(self, obj: Instance) -> SafeString:
        url = reverse("archive-instance-preview", args=[obj.pk])
        return format_html(
            '<a href="{}"><img class="instance-preview" src="{}" alt="preview" '
            'style="max-width:512px;background:#000"></a>',
            url,
            url,
        )

    @admin.display(description="file")
    def download(self, obj: Instance) -> SafeString:
        return format_html(
            '<a class="button" href="{}">Download the .dcm file</a> ({} bytes)',
            reverse("archive-instance-download", args=[obj.pk]),
            obj.size,
        )

    @admin.display(description="header")
    def header(self, obj: Instance) -> SafeString:
        try:
            with _storage().open(obj.path) as fh:
                text = tag_dump(fh)
        except (OSError, ValueError, StorageFailure) as exc:
            return format_html("<em>The stored file cannot be read: {}</em>", exc)
        return format_html(
            '<pre class="tag-dump" style="max-height:40em;overflow:auto;white-space:pre">{}</pre>',
            text,
        )


@admin.register(RecycledStudy)
class RecycledStudyAdmin(admin.ModelAdmin):
    """What storage.retention deleted (archive.retention): read-only, like the index."""

    list_display = ("study_instance_uid", "instances", "bytes", "reason", "recycled_at")
    list_filter = ("reason",)
    search_fields = ("study_instance_uid",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
