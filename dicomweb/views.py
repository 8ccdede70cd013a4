"""DICOMweb endpoints (PS3.18): QIDO-RS searches, WADO-RS retrieval, STOW-RS storage.

Each view translates HTTP into calls of the archive's services (archive.query for searches,
the index and archive.storage for files, archive.services.instance_store for STOW) and back,
and writes one audit record. Bodies are streamed both ways."""

import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.http import require_http_methods
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from archive.models import Instance, Series, Study
from archive.preview import FrameMissing, PreviewUnavailable
from archive.query import IMAGE, SERIES, STUDY
from archive.storage import Storage, is_object_store
from audit.models import QUERY, RETRIEVE, STORE
from audit.services import audit_record
from dicomweb import instances as stored
from dicomweb.accept import MediaRange, accept_parse, matches, media_type_parse
from dicomweb.auth import dicomweb_view, error
from dicomweb.metadata import metadata_rows, metadata_stream
from dicomweb.multipart import (
    Dechunked,
    LargeReads,
    MultipartError,
    boundary_new,
    closing,
    file_chunks,
    part_header,
)
from dicomweb.qido import QidoInvalid, search_parse, search_run
from dicomweb.rendered import (
    THUMBNAIL_SIDE,
    RenderInvalid,
    media_choose,
    render,
    viewport_parse,
    window_parse,
)
from dicomweb.sendfile import FilePart, PartsResponse, Piece
from dicomweb.stow import StowOutcome, stow_store

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
ANY = "*"


def _root(request: HttpRequest) -> str:
    return request.build_absolute_uri(reverse("dicomweb-root")).rstrip("/")


def _storage() -> Storage:
    return Storage(settings.DICOM_STORAGE_DIR)


def _json_stream(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    yield b"["
    first = True
    for item in items:
        yield (b"" if first else b",") + json.dumps(item, ensure_ascii=False).encode()
        first = False
    yield b"]"


def _wants_json(request: HttpRequest) -> bool:
    return any(
        matches(DICOM_JSON, r.type) or matches("application/json", r.type)
        for r in accept_parse(request.headers.get("Accept"))
    )


# QIDO-RS -----------------------------------------------------------------------------------


def _search(request: HttpRequest, level: str, path_keys: dict[str, str]) -> HttpResponse:
    if not _wants_json(request):
        return error(406, f"searches answer {DICOM_JSON} only")
    try:
        search = search_parse(request.GET, level=level, path_keys=path_keys)
    except QidoInvalid as exc:
        return error(400, str(exc))
    audit_record(
        QUERY,
        request=request,
        study_instance_uid=path_keys.get("StudyInstanceUID", ""),
        series_instance_uid=path_keys.get("SeriesInstanceUID", ""),
        detail={"service": "QIDO-RS", "level": level, "keys": search.query.matching_keys},
    )
    response = StreamingHttpResponse(
        _json_stream(search_run(search, base_url=_root(request))), content_type=DICOM_JSON
    )
    return response


@dicomweb_view
@require_http_methods(["GET", "HEAD", "POST"])
def studies(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _stow(request, None)
    return _search(request, STUDY, {})


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def series_search(request: HttpRequest, study: str | None = None) -> HttpResponse:
    if study is not None and not Study.objects.filter(study_instance_uid=study).exists():
        return error(404, "no such study")
    return _search(request, SERIES, {"StudyInstanceUID": study} if study else {})


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def instances_search(
    request: HttpRequest, study: str | None = None, series: str | None = None
) -> HttpResponse:
    keys = {}
    if study is not None:
        keys["StudyInstanceUID"] = study
        if not Study.objects.filter(study_instance_uid=study).exists():
            return error(404, "no such study")
    if series is not None:
        keys["SeriesInstanceUID"] = series
        if not Series.objects.filter(series_instance_uid=series, study__study_instance_uid=study):
            return error(404, "no such series in this study")
    return _search(request, IMAGE, keys)


# WADO-RS -----------------------------------------------------------------------------------


def _instance_rows(study: str, series: str | None, instance: str | None) -> list[tuple]:
    rows = Instance.objects.filter(series__study__study_instance_uid=study)
    if series is not None:
        rows = rows.filter(series__series_instance_uid=series)
    if instance is not None:
        rows = rows.filter(sop_instance_uid=instance)
    return list(
        rows.order_by("series__series_number", "series_id", "instance_number", "pk").values_list(
            "path", "sop_instance_uid", "transfer_syntax_uid", "series__series_instance_uid"
        )
    )


def _not_found(study: str, series: str | None, instance: str | None) -> HttpResponse:
    what = "instance" if instance else "series" if series else "study"
    return error(404, f"no such {what}")


def _retrieve_audit(
    request: HttpRequest, study: str, series: str | None, what: str, n: int
) -> None:
    audit_record(
        RETRIEVE,
        request=request,
        study_instance_uid=study,
        series_instance_uid=series or "",
        detail={"service": "WADO-RS", "what": what, "instances": n},
    )


def _dicom_syntax(ranges: list[MediaRange]) -> str | None:
    """The transfer syntax a retrieve asks for ("*": as stored), or None if the Accept header
    allows no application/dicom."""
    for r in ranges:
        if r.type == "multipart/related" and r.related_type in ("", "application/dicom"):
            return r.transfer_syntax or ExplicitVRLittleEndian
        if r.type in ("*/*", "application/dicom", "application/*", "multipart/*"):
            return r.transfer_syntax or ExplicitVRLittleEndian
    return None


@dicomweb_view
@require_http_methods(["GET", "HEAD", "POST"])
def study_resource(request: HttpRequest, study: str) -> HttpResponse:
    """GET: the study's instances (WADO-RS); POST: store into it (STOW-RS)."""
    if request.method == "POST":
        return _stow(request, study)
    return _retrieve(request, study)


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def retrieve(
    request: HttpRequest, study: str, series: str | None = None, instance: str | None = None
) -> HttpResponse:
    return _retrieve(request, study, series, instance)


def _retrieve(
    request: HttpRequest, study: str, series: str | None = None, instance: str | None = None
) -> HttpResponse:
    """Instances as multipart/related; type="application/dicom": as stored with
    transfer-syntax=* (or the stored syntax named), else explicit VR little endian."""
    syntax = _dicom_syntax(accept_parse(request.headers.get("Accept")))
    if syntax is None:
        return error(406, 'instances are sent as multipart/related; type="application/dicom"')
    if syntax not in (ANY, ExplicitVRLittleEndian) and not UID(syntax).is_transfer_syntax:
        return error(406, f"unknown transfer syntax {syntax}")
    rows = _instance_rows(study, series, instance)
    if not rows:
        return _not_found(study, series, instance)
    if syntax not in (ANY, ExplicitVRLittleEndian) and any(r[2] != syntax for r in rows):
        return error(406, f"not stored in {syntax}: ask for transfer-syntax=* or the default")
    _retrieve_audit(request, study, series, "instances", len(rows))
    boundary = boundary_new()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    storage = _storage()
    if all(_as_stored(syntax, row[2]) for row in rows) and not is_object_store(storage.location):
        # Sizes are a stat each here (a request each in a bucket: not worth a length there).
        parts = _stored_parts(storage, rows, boundary)
        length = sum(len(header) + size + 2 for header, _, _, size in parts)
        length += len(closing(boundary))
        # HEAD: the same headers, the length too, and no file read.
        pieces = _stored_pieces(storage, parts, boundary) if request.method == "GET" else iter(())
        return PartsResponse(pieces, length, content_type)
    return StreamingHttpResponse(_instances_body(rows, syntax, boundary), content_type=content_type)


def _as_stored(syntax: str, stored_syntax: str) -> bool:
    return syntax in (ANY, stored_syntax) or stored_syntax == ExplicitVRLittleEndian


def _stored_parts(storage: Storage, rows: list[tuple], boundary: str) -> list[tuple]:
    """(part header, path, SOP instance UID, size) of each instance whose file is there: one
    missing now is left out (and said so), as _instances_body leaves it out."""
    parts = []
    for path, sop_uid, stored_syntax, _ in rows:
        try:
            size = storage.size(path)
        except Exception as exc:
            logger.error("WADO-RS: instance %s left out: %s", sop_uid, exc)
            continue
        header = part_header(boundary, f"application/dicom; transfer-syntax={stored_syntax}")
        parts.append((header, path, sop_uid, size))
    return parts


def _stored_pieces(storage: Storage, parts: list[tuple], boundary: str) -> Iterator[Piece]:
    """The body of _stored_parts, its files as FilePart (sent by sendfile under gunicorn,
    dicomweb.sendfile). Once the status line is out a file that went missing cannot be left out
    of a body whose length counted it: the response is cut short instead."""
    # What lies between two files (the CRLF ending one part, the next part's header) goes out
    # as one write, not two: a system call and a small segment fewer per instance.
    between = b""
    for header, path, sop_uid, size in parts:
        yield between + header
        try:
            with stored.opened(storage, path) as stream:
                yield FilePart(stream, size)
        except stored.InstanceUnreadable as exc:
            raise RuntimeError(f"instance {sop_uid} failed while sent: {exc}") from exc
        between = b"\r\n"
    yield between + closing(boundary)


def _instances_body(rows: list[tuple], syntax: str, boundary: str) -> Iterator[bytes]:
    """One instance after the other, each streamed: as stored, or converted to explicit VR
    little endian a frame at a time (stored.explicit_little)."""
    storage = _storage()
    for path, sop_uid, stored_syntax, _ in rows:
        try:
            with stored.opened(storage, path) as stream:
                if syntax in (ANY, stored_syntax) or stored_syntax == ExplicitVRLittleEndian:
                    sent, body = stored_syntax, file_chunks(stream)
                else:
                    sent, body = ExplicitVRLittleEndian, stored.explicit_little(stream)
                yield part_header(boundary, f"application/dicom; transfer-syntax={sent}")
                try:
                    yield from body
                except stored.InstanceUnreadable as exc:
                    # Part of the instance is sent: no way to say so in the body but to cut it
                    # short, so the client sees a broken response, not a wrong instance.
                    raise RuntimeError(f"instance {sop_uid} failed while sent: {exc}") from exc
                yield b"\r\n"
        except stored.InstanceUnreadable as exc:
            # The status line is gone by now: the instance is left out, and said so.
            logger.error("WADO-RS: instance %s left out: %s", sop_uid, exc)
    yield closing(boundary)


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def metadata(
    request: HttpRequest, study: str, series: str | None = None, instance: str | None = None
) -> HttpResponse:
    if not _wants_json(request):
        return error(406, f"metadata is sent as {DICOM_JSON}")
    rows = metadata_rows(study, series, instance)
    if not rows:
        return _not_found(study, series, instance)
    _retrieve_audit(request, study, series, "metadata", len(rows))
    return StreamingHttpResponse(metadata_stream(rows, _root(request)), content_type=DICOM_JSON)


def _frame_choice(ranges: list[MediaRange], stored_syntax: str) -> tuple[str, str] | None:
    """(media type, transfer syntax) to send frames in, for an instance stored in
    `stored_syntax`: as stored when the client accepts it, else native (decompressed)."""
    compressed = UID(stored_syntax).is_compressed
    stored_type = stored.FRAME_MEDIA_TYPES.get(stored_syntax, "application/octet-stream")
    for r in ranges:
        wanted = r.related_type or ("" if r.type == "multipart/related" else r.type)
        if r.type not in ("multipart/related", "*/*") and wanted != r.type:
            continue
        wanted = wanted or "application/octet-stream"
        if r.type == "*/*":
            wanted = "*/*"
        ts = r.transfer_syntax
        # transfer-syntax=* means any (OHIF asks frames so, as octet-stream): as stored.
        if compressed and (
            ts == ANY or (matches(stored_type, wanted) and ts in ("", stored_syntax))
        ):
            return stored_type, stored_syntax
        if matches("application/octet-stream", wanted) and (
            ts in ("", ANY, ExplicitVRLittleEndian) or not compressed
        ):
            return "application/octet-stream", ExplicitVRLittleEndian
    return None


def _frame_numbers(text: str) -> list[int] | None:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        return None
    return numbers if numbers and all(n >= 1 for n in numbers) else None


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def frames(
    request: HttpRequest, study: str, series: str, instance: str, numbers: str
) -> HttpResponse:
    wanted = _frame_numbers(numbers)
    if wanted is None:
        return error(
            400, f"frame numbers are a comma-separated list of numbers from 1: {numbers!r}"
        )
    rows = _instance_rows(study, series, instance)
    if not rows:
        return _not_found(study, series, instance)
    path, _, stored_syntax, _ = rows[0]
    choice = _frame_choice(accept_parse(request.headers.get("Accept")), stored_syntax)
    if choice is None:
        media = stored.FRAME_MEDIA_TYPES.get(stored_syntax, "application/octet-stream")
        return error(
            406, f"frames of this instance are sent as {media} or application/octet-stream"
        )
    return _frames_response(request, path, stored_syntax, wanted, choice, study, series)


def _frames_response(
    request: HttpRequest,
    path: str,
    stored_syntax: str,
    wanted: list[int] | None,
    choice: tuple[str, str],
    study: str,
    series: str,
) -> HttpResponse:
    media, syntax = choice
    decode = UID(stored_syntax).is_compressed and syntax != stored_syntax
    try:
        with stored.opened(_storage(), path) as stream:
            location = stored.pixel_locate(stream)
            numbers = wanted or list(range(1, location.number_of_frames + 1))
            # Checked before the first byte is sent, so that a wrong number is a 404.
            bad = [n for n in numbers if n > location.number_of_frames]
            if bad:
                return error(
                    404, f"no frame {bad[0]}: the instance has {location.number_of_frames}"
                )
    except stored.InstanceUnreadable as exc:
        return error(404, str(exc))
    _retrieve_audit(request, study, series, "frames", 1)
    boundary = boundary_new()

    def body() -> Iterator[bytes]:
        with stored.opened(_storage(), path) as stream:
            for n in numbers:
                if decode:
                    data = stored.frame_decoded(stream, location, n)
                else:
                    data = stored.frame_read(stream, location, n)
                yield part_header(boundary, f"{media}; transfer-syntax={syntax}")
                yield data
                yield b"\r\n"
        yield closing(boundary)

    return StreamingHttpResponse(
        body(),
        content_type=f'multipart/related; type="{media}"; boundary={boundary}',
    )


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def bulkdata(
    request: HttpRequest, study: str, series: str, instance: str, tag: str
) -> HttpResponse:
    """A BulkDataURI of the metadata: the pixel data (its frames), or another binary value,
    top-level or in a sequence (`{sequence tag}/{item index}/.../{tag}`)."""
    rows = _instance_rows(study, series, instance)
    if not rows:
        return _not_found(study, series, instance)
    path, _, stored_syntax, _ = rows[0]
    where = stored.bulk_path_parse(tag)
    if where is None:
        return error(400, f"not a tag, or a sequence tag/item/.../tag path: {tag!r}")
    if where == (stored.PIXEL_DATA,):
        ranges = accept_parse(request.headers.get("Accept"))
        choice = _frame_choice(ranges, stored_syntax)
        if choice is None:
            return error(406, "pixel data is sent as application/octet-stream or as stored")
        return _frames_response(request, path, stored_syntax, None, choice, study, series)
    try:
        with stored.opened(_storage(), path) as stream:
            value = stored.bulk_value(stream, where)
    except stored.InstanceUnreadable as exc:
        return error(404, str(exc))
    _retrieve_audit(request, study, series, "bulkdata", 1)
    boundary = boundary_new()
    payload = (
        part_header(boundary, "application/octet-stream") + value + b"\r\n" + closing(boundary)
    )
    return HttpResponse(
        payload,
        content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}',
    )


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def rendered(
    request: HttpRequest,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    thumbnail: bool = False,
) -> HttpResponse:
    """An instance rendered (its middle frame), or a series' or study's thumbnail (its middle
    instance), as JPEG or PNG; `window=center,width`, `viewport=width,height`."""
    return _rendered(request, study, series, instance, thumbnail=thumbnail, frame_index=None)


@dicomweb_view
@require_http_methods(["GET", "HEAD"])
def frame_rendered(
    request: HttpRequest, study: str, series: str, instance: str, numbers: str
) -> HttpResponse:
    """One frame of an instance rendered (PS3.18 8.3.5.1.4), as the instance's `rendered`."""
    wanted = _frame_numbers(numbers)
    if wanted is None:
        return error(400, f"frame numbers are numbers from 1: {numbers!r}")
    if len(wanted) != 1:
        # Several frames would be one multi-frame image (GIF, video): not offered.
        return error(400, "frames are rendered one at a time (image/jpeg or image/png)")
    return _rendered(request, study, series, instance, thumbnail=False, frame_index=wanted[0] - 1)


def _rendered(
    request: HttpRequest,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    thumbnail: bool,
    frame_index: int | None,
) -> HttpResponse:
    media = media_choose(accept_parse(request.headers.get("Accept")))
    if media is None:
        return error(406, "rendered images are sent as image/jpeg or image/png")
    try:
        window = window_parse(request.GET.get("window"))
        side = viewport_parse(request.GET.get("viewport"), THUMBNAIL_SIDE if thumbnail else 0)
    except RenderInvalid as exc:
        return error(400, str(exc))
    rows = _instance_rows(study, series, instance)
    if not rows:
        return _not_found(study, series, instance)
    path = rows[len(rows) // 2][0]
    try:
        with stored.opened(_storage(), path) as stream:
            image = render(stream, media=media, window=window, side=side, frame_index=frame_index)
    except stored.InstanceUnreadable as exc:
        return error(404, f"no image: {exc}")
    except FrameMissing as exc:
        return error(404, str(exc))
    except PreviewUnavailable as exc:
        return error(400, f"no image: {exc}")
    what = "thumbnail" if thumbnail else "rendered" if frame_index is None else "frame rendered"
    _retrieve_audit(request, study, series, what, 1)
    response = HttpResponse(image, content_type=media)
    response["Cache-Control"] = "private, max-age=3600"
    return response


def thumbnail(request: HttpRequest, *args: str, **kwargs: str) -> HttpResponse:
    return rendered(request, *args, thumbnail=True, **kwargs)


# STOW-RS -----------------------------------------------------------------------------------


def _stow(request: HttpRequest, study: str | None) -> HttpResponse:
    content_type = media_type_parse(request.headers.get("Content-Type", ""))
    if content_type.type != "multipart/related" or content_type.related_type not in (
        "",
        "application/dicom",
    ):
        return error(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    boundary = content_type.params.get("boundary", "")
    address = request.META.get("REMOTE_ADDR", "")
    try:
        outcome = stow_store(
            body=_request_body(request),
            boundary=boundary,
            study_uid=study,
            address=address,
        )
    except MultipartError as exc:
        logger.warning("STOW-RS from %s: malformed body: %s", address, exc)
        return error(400, f"malformed multipart body: {exc}")
    if not outcome.stored and not outcome.failed:
        return error(400, "the body holds no instance")
    for uid in sorted(outcome.studies) or [study or ""]:
        audit_record(
            STORE,
            request=request,
            study_instance_uid=uid,
            detail={
                "service": "STOW-RS",
                "stored": sum(1 for s in outcome.stored if s["study"] == uid),
                "failed": len(outcome.failed),
            },
        )
    status = 200 if not outcome.failed else 202 if outcome.stored else 409
    response = HttpResponse(
        json.dumps(_stow_response(outcome, _root(request), study)),
        status=status,
        content_type=DICOM_JSON,
    )
    if outcome.failed:
        # FailureReason is a code; the reasons in words, for people reading the client's log.
        reasons = "; ".join(f"{f['instance'] or 'part'}: {f['why']}" for f in outcome.failed[:5])
        response["Warning"] = f'299 pacs "{reasons[:500].replace(chr(34), chr(39))}"'
    return response


def _request_body(request: HttpRequest) -> Any:
    """The body as a stream. Django reads nothing of a body without Content-Length; a chunked
    body is read from the WSGI input itself: de-chunked by the server where it says so
    (`wsgi.input_terminated`, gunicorn), else here (Django's development and test server).
    gunicorn's input is read in large pieces (LargeReads)."""
    wsgi_input = request.META.get("wsgi.input")
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    length = request.META.get("CONTENT_LENGTH")
    if not chunked or length:
        # Unless something has read from it already (then Django holds what it read).
        untouched = not getattr(request, "_read_started", True)
        if length and length.isdigit() and untouched and LargeReads.usable(wsgi_input):
            return LimitedStream(LargeReads(wsgi_input), int(length))
        return request
    if request.META.get("wsgi.input_terminated"):
        return LargeReads(wsgi_input) if LargeReads.usable(wsgi_input) else wsgi_input
    return Dechunked(wsgi_input)


def _stow_response(outcome: StowOutcome, root: str, study: str | None) -> dict[str, Any]:
    ds = Dataset()
    if len(outcome.studies) == 1 or study:
        ds.RetrieveURL = f"{root}/studies/{study or next(iter(outcome.studies))}"
    referenced = []
    series_of = dict(
        Instance.objects.filter(
            sop_instance_uid__in=[item["instance"] for item in outcome.stored]
        ).values_list("sop_instance_uid", "series__series_instance_uid")
    )
    for item in outcome.stored:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item["class"]
        ref.ReferencedSOPInstanceUID = item["instance"]
        series = series_of.get(item["instance"], "")
        ref.RetrieveURL = (
            f"{root}/studies/{item['study']}/series/{series}/instances/{item['instance']}"
        )
        referenced.append(ref)
    failed = []
    for item in outcome.failed:
        ref = Dataset()
        ref.ReferencedSOPClassUID = item["class"] or None
        ref.ReferencedSOPInstanceUID = item["instance"] or None
        ref.FailureReason = item["reason"]
        failed.append(ref)
    ds.ReferencedSOPSequence = referenced
    ds.FailedSOPSequence = failed
    return ds.to_json_dict()
