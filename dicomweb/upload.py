"""The admin's upload page: DICOM files or ZIPs of them, chosen or dropped in the browser,
stored through the same path as STOW-RS (dicomweb.stow.file_store, then the ingest service),
with a result per file."""

import tempfile
import zipfile

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from audit.models import STORE
from audit.services import audit_record
from dicomweb.stow import StowOutcome, file_store, ingest_settings, sop_class_filter

# A ZIP member larger than this is refused unread (a bomb or not DICOM we take here).
MAX_MEMBER = 2 * 2**30
MAX_FILES = 10_000


def _results(outcome: StowOutcome, before_stored: int, before_failed: int, name: str) -> dict:
    stored = outcome.stored[before_stored:]
    failed = outcome.failed[before_failed:]
    if failed:
        return {"name": name, "ok": False, "detail": failed[0]["why"]}
    return {"name": name, "ok": True, "detail": stored[0]["instance"] if stored else ""}


def upload_page(request: HttpRequest) -> HttpResponse:
    results: list[dict] = []
    if request.method == "POST":
        ingest = ingest_settings()
        refusal = sop_class_filter()
        outcome = StowOutcome()
        address = request.META.get("REMOTE_ADDR", "")
        for upload in request.FILES.getlist("files")[:MAX_FILES]:
            if zipfile.is_zipfile(upload):
                upload.seek(0)
                results += _zip_store(upload, upload.name, ingest, address, outcome, refusal)
                continue
            upload.seek(0)
            counts = len(outcome.stored), len(outcome.failed)
            file_store(
                upload,
                ingest=ingest,
                study_uid=None,
                address=address,
                outcome=outcome,
                refusal=refusal,
            )
            results.append(_results(outcome, *counts, upload.name))
        for uid in sorted(outcome.studies):
            audit_record(
                STORE,
                request=request,
                study_instance_uid=uid,
                detail={"service": "upload", "stored": len(outcome.stored)},
            )
    context = {
        **admin.site.each_context(request),
        "title": "Upload DICOM files",
        "results": results,
        "stored": sum(1 for r in results if r["ok"]),
        "failed": sum(1 for r in results if not r["ok"]),
    }
    return render(request, "dicomweb/upload.html", context)


def _zip_store(upload, name, ingest, address, outcome: StowOutcome, refusal) -> list[dict]:
    results = []
    try:
        archive = zipfile.ZipFile(upload)
    except zipfile.BadZipFile as exc:
        return [{"name": name, "ok": False, "detail": f"not a readable ZIP: {exc}"}]
    with archive:
        for member in archive.infolist()[:MAX_FILES]:
            if member.is_dir() or member.filename.upper().endswith("DICOMDIR"):
                continue
            label = f"{name}: {member.filename}"
            if member.file_size > MAX_MEMBER:
                results.append({"name": label, "ok": False, "detail": "too large"})
                continue
            with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as body:
                with archive.open(member) as source:
                    while chunk := source.read(2**20):
                        body.write(chunk)
                        if body.tell() > MAX_MEMBER:
                            break
                body.seek(0)
                counts = len(outcome.stored), len(outcome.failed)
                file_store(
                    body,
                    ingest=ingest,
                    study_uid=None,
                    address=address,
                    outcome=outcome,
                    refusal=refusal,
                )
                results.append(_results(outcome, *counts, label))
    return results
