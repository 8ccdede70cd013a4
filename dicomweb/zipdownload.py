"""A patient, study or series as a ZIP of its stored files with a DICOMDIR (Orthanc's explorer
has this too), streamed: each file is copied from the storage service into the archive a chunk
at a time and sent as it is compressed, so memory stays flat whatever the study's size (but for
the DICOMDIR's records, a few hundred bytes a file)."""

import logging
import zipfile
from collections.abc import Iterator

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404

from archive.access_signals import DOWNLOAD, access_signal
from archive.models import Instance, Patient, Series, Study
from archive.storage import Storage
from dicomweb import instances as stored
from dicomweb.dicomdir import Dicomdir

logger = logging.getLogger(__name__)
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


def zip_stream(instances: Iterator[tuple[str, str]]) -> Iterator[bytes]:
    """The ZIP of (SOP UID, path) rows as DICOM media (PS3.10): each file under its File ID,
    DICOM/PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn, and the DICOMDIR indexing them, written last
    (the records of all files are needed for it; they are kept encoded, a few hundred bytes
    each, while the files stream)."""
    storage = Storage(settings.DICOM_STORAGE_DIR)
    sink = _Sink()
    directory = Dicomdir()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for sop_uid, path in instances:
            try:
                with stored.opened(storage, path) as source:
                    header, _ = stored.header_read(source)
                    file_id = directory.add(header)
                    source.seek(0)
                    with archive.open("/".join(file_id), "w", force_zip64=True) as target:
                        while chunk := source.read(_CHUNK):
                            target.write(chunk)
                            yield sink.take()
            except stored.InstanceUnreadable as exc:
                # The others still come; this one is not in the DICOMDIR either.
                logger.error("ZIP download: instance %s left out: %s", sop_uid, exc)
                continue
            yield sink.take()
        archive.writestr("DICOMDIR", directory.encoded())
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
        .values_list("sop_instance_uid", "path")
    )
    access_signal(DOWNLOAD, request, [obj], detail={"zip": level})
    response = StreamingHttpResponse(
        zip_stream(rows.iterator(chunk_size=500)), content_type="application/zip"
    )
    response["Content-Disposition"] = f'attachment; filename="{level}-{pk}.zip"'
    return response
