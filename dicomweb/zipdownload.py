"""A patient, study or series as a ZIP of its stored files (Orthanc's explorer has this too),
streamed: each file is copied from the storage service into the archive a chunk at a time and
sent as it is compressed, so memory stays flat whatever the study's size."""

import re
import zipfile
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404

from archive.access_signals import DOWNLOAD, access_signal
from archive.models import Instance, Patient, Series, Study
from archive.storage import Storage
from dicomweb import instances as stored

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 256 * 1024


class _Sink:
    """A write-only, unseekable file whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


def _name(text: str, fallback: str) -> str:
    return _SAFE.sub("_", text).strip("._")[:64] or fallback


def zip_stream(instances: Iterator[tuple[str, str, str, str, str]]) -> Iterator[bytes]:
    """The ZIP of (patient ID, study UID, series UID, SOP UID, path) rows: one folder per
    patient, study and series (names made safe), one `<SOP>.dcm` each."""
    storage = Storage(settings.DICOM_STORAGE_DIR)
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for patient_id, study_uid, series_uid, sop_uid, path in instances:
            name = "/".join(
                (
                    _name(patient_id, "patient"),
                    _name(study_uid, "study"),
                    _name(series_uid, "series"),
                    _name(sop_uid, "instance") + ".dcm",
                )
            )
            try:
                with (
                    stored.opened(storage, path) as source,
                    archive.open(name, "w", force_zip64=True) as target,
                ):
                    while chunk := source.read(_CHUNK):
                        target.write(chunk)
                        yield sink.take()
            except stored.InstanceUnreadable:
                continue  # a missing file: the others still come
            yield sink.take()
    yield sink.take()


_LEVELS = {
    "patient": (Patient, "series__study__patient"),
    "study": (Study, "series__study"),
    "series": (Series, "series"),
}


def zip_download(request: HttpRequest, level: str, pk: str) -> StreamingHttpResponse:
    """GET admin/archive/<level>/<pk>/download.zip (staff with the viewer role)."""
    model, path = _LEVELS[level]
    obj = get_object_or_404(model, pk=int(pk))
    rows = (
        Instance.objects.filter(**{path: obj})
        .order_by("series__study_id", "series_id", "instance_number", "pk")
        .values_list(
            "series__study__patient__patient_id",
            "series__study__study_instance_uid",
            "series__series_instance_uid",
            "sop_instance_uid",
            "path",
        )
    )
    access_signal(DOWNLOAD, request, [obj], detail={"zip": level})
    response = StreamingHttpResponse(
        zip_stream(rows.iterator(chunk_size=500)), content_type="application/zip"
    )
    response["Content-Disposition"] = f'attachment; filename="{level}-{pk}.zip"'
    return response
