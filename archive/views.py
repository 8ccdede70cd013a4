"""Staff pages beside the admin's lists: the storage dashboard, instance previews and
downloads. Every view here is wired through the admin site's login (pacsproject.urls)."""

import logging
import re
from typing import BinaryIO

from django.conf import settings
from django.contrib import admin
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.html import escape

from archive.access_signals import DOWNLOAD, PREVIEW, access_signal
from archive.charts import bar_list, column_chart
from archive.exceptions import StorageFailure
from archive.models import Instance, Series
from archive.preview import MAX_SIDE, PreviewUnavailable, preview_png
from archive.statistics import (
    DAYS,
    HOURS,
    periods_filled,
    recent_periods,
    storage_statistics,
)
from archive.storage import Storage

logger = logging.getLogger(__name__)

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    stats = storage_statistics(settings.DICOM_STORAGE_DIR, now=now)
    per_day = periods_filled(stats.per_day, recent_periods(now, "day", DAYS))
    per_hour = periods_filled(stats.per_hour, recent_periods(now, "hour", HOURS))
    charts = {
        "per_day": column_chart(
            [(day.strftime("%d %b"), n) for day, n, _ in per_day],
            title="Instances received per day, last 30 days",
            label_every=5,
        ),
        "per_hour": column_chart(
            [(hour.strftime("%H:00"), n) for hour, n, _ in per_hour],
            title="Instances received per hour, last 48 hours",
            label_every=6,
        ),
        "senders": bar_list(
            [(ae or "(none)", n) for ae, n in stats.top_senders],
            title="Instances by calling AE title",
        ),
        "modalities": bar_list(stats.modalities, title="Instances by modality"),
    }
    context = {
        **admin.site.each_context(request),
        "title": "Storage dashboard",
        "stats": stats,
        "charts": charts,
        "disk_used": (
            stats.disk_total - stats.disk_free
            if stats.disk_total is not None and stats.disk_free is not None
            else None
        ),
    }
    return render(request, "archive/dashboard.html", context)


# `?full=1`: the preview at the image's own size (up to this), for the link behind a thumbnail.
FULL_SIDE = 4096


def instance_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """The instance's middle frame as PNG, at most 512 pixels a side (`?full=1`: its own size);
    `?wc=40&ww=400` sets the window (center, width)."""
    instance = get_object_or_404(Instance.objects.select_related("series__study__patient"), pk=pk)
    access_signal(PREVIEW, request, [instance])
    return _preview(instance, _window(request), _side(request))


def series_preview(request: HttpRequest, pk: int) -> HttpResponse:
    """The preview of the series' middle instance (by instance number)."""
    series = get_object_or_404(Series.objects.select_related("study__patient"), pk=pk)
    instances = series.instances.order_by("instance_number", "pk")
    count = instances.count()
    if count == 0:
        return _placeholder("no instances")
    instance = instances[count // 2]
    instance.series = series
    access_signal(PREVIEW, request, [instance])
    return _preview(instance, _window(request), _side(request))


def instance_download(request: HttpRequest, pk: int) -> FileResponse:
    """The stored file as received, streamed."""
    instance = get_object_or_404(Instance.objects.select_related("series__study__patient"), pk=pk)
    handle = _stored_file(instance)
    if handle is None:
        raise Http404("the file of this instance is missing")
    access_signal(DOWNLOAD, request, [instance], detail={"bytes": instance.size})
    return FileResponse(
        handle,
        as_attachment=True,
        filename=_download_name(instance),
        content_type="application/dicom",
    )


def _download_name(instance: Instance) -> str:
    """`<SOP Instance UID>.dcm`, or `instance-<pk>.dcm` should the indexed UID be anything but a
    UID: the name goes into a header and onto the user's disk."""
    uid = instance.sop_instance_uid
    if _UID.fullmatch(uid):
        return f"{uid}.dcm"
    return f"instance-{instance.pk}.dcm"


def _stored_file(instance: Instance) -> BinaryIO | None:
    """The instance's stored file, open; None when it is missing, Http404 when its path
    leads outside the storage or it cannot be read."""
    try:
        # The storage refuses any path that leads outside the storage directory.
        return Storage(settings.DICOM_STORAGE_DIR).open(instance.path)
    except FileNotFoundError:
        return None
    except (OSError, StorageFailure) as exc:
        logger.error("Instance %s: stored file not readable: %s", instance.pk, exc)
        raise Http404("the file of this instance cannot be read") from None


def _window(request: HttpRequest) -> tuple[float, float] | None:
    try:
        return float(request.GET["wc"]), float(request.GET["ww"])
    except (KeyError, ValueError):
        return None


def _side(request: HttpRequest) -> int:
    return FULL_SIDE if request.GET.get("full") == "1" else MAX_SIDE


def _preview(instance: Instance, window: tuple[float, float] | None, side: int) -> HttpResponse:
    handle = _stored_file(instance)
    if handle is None:
        return _placeholder("not readable: the file is missing")
    try:
        with handle:
            png = preview_png(handle, window=window, max_side=side)
    except PreviewUnavailable as exc:
        return _placeholder(str(exc).splitlines()[0][:80])
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _placeholder(reason: str) -> HttpResponse:
    """An image saying there is no preview, and why, so the page's layout stays whole."""
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
        '<rect width="256" height="256" fill="#eee" stroke="#999"/>'
        '<text x="128" y="120" font-size="16" text-anchor="middle" fill="#555">No preview</text>'
        f'<text x="128" y="145" font-size="9" text-anchor="middle" fill="#777">{escape(reason)}'
        "</text></svg>"
    )
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["X-Preview"] = "unavailable"
    return response
