"""Browsing of the index: it mirrors what was received, so nothing here edits it; deleting
removes the files with the rows (archive.deletion)."""

from collections.abc import Iterable
from dataclasses import asdict
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.utils import unquote
from django.db import transaction
from django.db.models import Count, Exists, Model, OuterRef, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import NoReverseMatch, reverse, reverse_lazy
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from pydicom.uid import UID

from archive.access_signals import DELETE, QUERY, VIEW, access_signal
from archive.deletion import deletion_preview, index_delete
from archive.exceptions import StorageFailure
from archive.models import Instance, Patient, RecycledStudy, Series, Study
from archive.person_names import person_name_display
from archive.storage import Storage
from archive.tagdump import tag_dump

admin.site.site_header = "DICOM receiver"
admin.site.site_title = "DICOM receiver"
admin.site.index_template = "admin/archive_index.html"
# The admin's "View site" link: the dashboard (there is no public site).
admin.site.site_url = reverse_lazy("archive-dashboard")

# Previews in strips and tables; the instance page shows up to 512 pixels (archive.preview).
THUMBNAIL = 256
# Rows listed on a study's or series' page; the list pages hold the rest.
ROWS_SHOWN = 200


def counted(count: int, singular: str, plural: str = "") -> str:
    """ "1 study", "2 studies": a count with its noun."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def uid_named(uid: str) -> SafeString:
    """A UID by its standard name, the UID itself on hover (and as text if it has no name)."""
    return format_html('<span title="{}">{}</span>', uid, UID(uid).name if uid else "")


class IndexAdmin(admin.ModelAdmin):
    """Rows are written by the receiver only; the admin may view them, and delete them with
    their files."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        self.delete_queryset(request, self.model.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        # The audit record commits with the deletion, or neither does.
        with transaction.atomic():
            targets = list(queryset.select_related(*_PARENTS[self.model]))
            counts = index_delete(queryset, _storage())
            access_signal(DELETE, request, targets, detail={"removed": asdict(counts)})

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None
    ) -> HttpResponse:
        response = super().change_view(request, object_id, form_url, extra_context)
        if request.method == "GET" and response.status_code == 200:
            obj = (
                self.get_queryset(request)
                .select_related(*_PARENTS[self.model])
                .get(pk=unquote(object_id))
            )
            detail = {"tag_dump": True} if self.model is Instance else {}
            access_signal(VIEW, request, [obj], detail=detail)
        return response

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if request.method == "GET" and response.status_code == 200:
            # Which patients a list showed follows from its search and filters.
            access_signal(
                QUERY,
                request,
                detail={"list": self.model._meta.model_name, "parameters": dict(request.GET)},
            )
        return response

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: int) -> HttpResponse:
        """Back to the list deleted from, with its filters (Django sends a model without change
        permission to the admin's home page)."""
        response = super().response_delete(request, obj_display, obj_id)
        if not isinstance(response, HttpResponseRedirect):
            return response  # a popup's response
        opts = self.model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        filters = self.get_preserved_filters(request)
        return HttpResponseRedirect(
            add_preserved_filters({"preserved_filters": filters, "opts": opts}, url)
        )

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


# What target_of() follows up from each level, fetched with the rows.
_PARENTS: dict[type[Model], list[str]] = {
    Patient: [],
    Study: ["patient"],
    Series: ["study__patient"],
    Instance: ["series__study__patient"],
}


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


def _children_link(
    model: str, filter_field: str, obj_id: int, count: int, singular: str, plural: str = ""
) -> str:
    url = reverse(f"admin:archive_{model}_changelist") + f"?{filter_field}={obj_id}"
    return format_html('<a href="{}">{}</a>', url, counted(count, singular, plural))


def _table(headers: list[str], rows: SafeString, more: str = "") -> SafeString:
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    return format_html(
        '<table class="index-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>{}',
        head,
        rows,
        more,
    )


def _name_fields(field: str, label: str) -> tuple:
    """Read-only fields showing a person name as people read it, and as stored."""

    @admin.display(description=label, ordering=field)
    def shown(self: admin.ModelAdmin, obj: Model) -> str:
        return person_name_display(getattr(obj, field))

    @admin.display(description=f"{label} as stored (PN)")
    def raw(self: admin.ModelAdmin, obj: Model) -> SafeString:
        return format_html("<code>{}</code>", getattr(obj, field))

    return shown, raw


@admin.register(Patient)
class PatientAdmin(IndexAdmin):
    list_display = ["patient_id", "display_name", "birth_date", "sex", "studies_link"]
    search_fields = ["patient_id", "name"]
    fields = [
        "patient_id",
        "issuer_of_patient_id",
        "display_name",
        "raw_name",
        "birth_date",
        "sex",
        "studies_link",
    ]
    readonly_fields = ["display_name", "raw_name", "studies_link"]
    display_name, raw_name = _name_fields("name", "name")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Patient]:
        return super().get_queryset(request).annotate(study_count=Count("studies"))

    @admin.display(description="studies", ordering="study_count")
    def studies_link(self, obj: Patient) -> str:
        count = getattr(obj, "study_count", None)
        if count is None:
            count = obj.studies.count()
        return _children_link("study", "patient__id__exact", obj.pk, count, "study", "studies")


@admin.register(Study)
class StudyAdmin(IndexAdmin):
    fields = [
        "patient",
        "study_instance_uid",
        "study_date",
        "study_time",
        "accession_number",
        "study_id",
        "description",
        "referring_physician",
        "raw_referring_physician",
        "viewer_link",
        "series_table",
        "series_previews",
    ]
    readonly_fields = [
        "referring_physician",
        "raw_referring_physician",
        "viewer_link",
        "series_table",
        "series_previews",
    ]
    referring_physician, raw_referring_physician = _name_fields(
        "referring_physician_name", "referring physician"
    )
    list_display = [
        "study_date",
        "patient",
        "accession_number",
        "description",
        "series_link",
        "viewer_link",
    ]
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
        return _children_link(
            "series", "study__id__exact", obj.pk, obj.series_count, "series", "series"
        )

    @admin.display(description="viewer")
    def viewer_link(self, obj: Study) -> str:
        """ "Open in viewer": the study in OHIF, when the site serves it (the dicomweb app)."""
        try:
            base = reverse("viewer")
        except NoReverseMatch:
            return "-"
        url = f"{base}viewer?{urlencode({'StudyInstanceUIDs': obj.study_instance_uid})}"
        zip_url = reverse("archive-zip-download", args=["study", obj.pk])
        return format_html(
            '<a href="{}" target="_blank" rel="noopener">Open in viewer</a> · '
            '<a href="{}">Download as ZIP</a>',
            url,
            zip_url,
        )

    def _series(self, obj: Study) -> QuerySet[Series]:
        return obj.series.annotate(instance_count=Count("instances")).order_by(
            "series_number", "pk"
        )

    @admin.display(description="series")
    def series_table(self, obj: Study) -> SafeString:
        """The study's series: number, modality, description, instances, and a link to each."""
        series = list(self._series(obj)[:ROWS_SHOWN])
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td>{}</td><td><a href="{}">{}</a></td><td>{}</td></tr>',
            (
                (
                    "" if s.series_number is None else s.series_number,
                    s.modality,
                    reverse("admin:archive_series_change", args=[s.pk]),
                    s.description or "(no description)",
                    _children_link(
                        "instance", "series__id__exact", s.pk, s.instance_count, "instance"
                    ),
                )
                for s in series
            ),
        )
        return _table(["number", "modality", "description", "instances"], rows)

    @admin.display(description="series previews")
    def series_previews(self, obj: Study) -> SafeString:
        """A strip with one preview per series, each opening the full preview; the caption
        links to the series."""
        tiles = format_html_join(
            "",
            '<figure class="series-preview" style="display:inline-block;margin:0 8px 8px 0;'
            'text-align:center"><a href="{}?full=1"><img src="{}" alt="{}" loading="lazy" '
            'style="width:{}px;height:{}px;object-fit:contain;background:#000"></a>'
            '<figcaption><a href="{}">{}</a> ({})</figcaption></figure>',
            (
                (
                    reverse("archive-series-preview", args=[s.pk]),
                    reverse("archive-series-preview", args=[s.pk]),
                    f"Series {s.series_number or ''} preview",
                    THUMBNAIL,
                    THUMBNAIL,
                    reverse("admin:archive_series_change", args=[s.pk]),
                    str(s),
                    counted(s.instance_count, "instance"),
                )
                for s in self._series(obj)[:ROWS_SHOWN]
            ),
        )
        return format_html('<div class="series-strip">{}</div>', tiles)


@admin.register(Series)
class SeriesAdmin(IndexAdmin):
    fields = [
        "study",
        "series_instance_uid",
        "series_number",
        "modality",
        "description",
        "body_part_examined",
        "preview",
        "instances_table",
    ]
    readonly_fields = ["preview", "instances_table"]
    list_display = ["series_number", "modality", "description", "study", "instances_link"]
    list_filter = ["modality", SeriesCallingAEFilter]
    search_fields = ["series_instance_uid", "study__study_instance_uid", "study__accession_number"]
    list_select_related = ["study"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Series]:
        return super().get_queryset(request).annotate(instance_count=Count("instances"))

    @admin.display(description="instances", ordering="instance_count")
    def instances_link(self, obj: Series) -> str:
        return _children_link(
            "instance", "series__id__exact", obj.pk, obj.instance_count, "instance"
        )

    @admin.display(description="preview")
    def preview(self, obj: Series) -> SafeString:
        url = reverse("archive-series-preview", args=[obj.pk])
        return format_html(
            '<a href="{}?full=1"><img src="{}" alt="preview" style="width:{}px;height:{}px;'
            'object-fit:contain;background:#000"></a>',
            url,
            url,
            THUMBNAIL,
            THUMBNAIL,
        )

    @admin.display(description="instances")
    def instances_table(self, obj: Series) -> SafeString:
        """The series' instances: number, SOP class, size, reception, link to each."""
        instances = obj.instances.order_by("instance_number", "pk")
        total = instances.count()
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:archive_instance_change", args=[i.pk]),
                    "" if i.instance_number is None else i.instance_number,
                    uid_named(i.sop_class_uid),
                    uid_named(i.transfer_syntax_uid),
                    counted(i.size, "byte"),
                    i.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                )
                for i in instances[:ROWS_SHOWN]
            ),
        )
        more = (
            format_html(
                "<p>{} of {}: {}</p>",
                ROWS_SHOWN,
                counted(total, "instance"),
                self.instances_link(obj),
            )
            if total > ROWS_SHOWN
            else ""
        )
        return _table(["number", "SOP class", "transfer syntax", "size", "received"], rows, more)


@admin.register(Instance)
class InstanceAdmin(IndexAdmin):
    list_display = [
        "instance_number",
        "sop_instance_uid",
        "sop_class",
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
    readonly_fields = [
        "preview",
        "download",
        "header",
        "sop_class",
        "transfer_syntax",
        "stored_file",
    ]
    fieldsets = [
        (None, {"fields": ["preview", "download"]}),
        (
            "Index",
            {
                "fields": [
                    "series",
                    "sop_instance_uid",
                    "sop_class",
                    "instance_number",
                    "transfer_syntax",
                    "stored_file",
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
            '<a href="{}?full=1"><img class="instance-preview" src="{}" alt="preview" '
            'style="max-width:512px;background:#000"></a>',
            url,
            url,
        )

    @admin.display(description="SOP class", ordering="sop_class_uid")
    def sop_class(self, obj: Instance) -> SafeString:
        return uid_named(obj.sop_class_uid)

    @admin.display(description="transfer syntax")
    def transfer_syntax(self, obj: Instance) -> SafeString:
        return uid_named(obj.transfer_syntax_uid)

    @admin.display(description="stored file")
    def stored_file(self, obj: Instance) -> SafeString:
        """The whole path: where an administrator finds the file on the server."""
        try:
            path = str(_storage().resolve(obj.path))
        except StorageFailure as exc:
            return format_html("<em>{}</em>", exc)
        return format_html('<code style="word-break:break-all">{}</code>', path)

    @admin.display(description="file")
    def download(self, obj: Instance) -> SafeString:
        return format_html(
            '<a class="button" href="{}">Download the .dcm file</a> ({})',
            reverse("archive-instance-download", args=[obj.pk]),
            counted(obj.size, "byte"),
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
