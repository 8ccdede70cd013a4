"""WADO-RS metadata of many instances (a series, a study) from the InstanceMetadata cache,
made from the stored files only where the cache has nothing current.

Parsing a stored header and encoding it as DICOM JSON costs ~20 ms an instance here: a
300-image series took 7 s, and OHIF shows nothing before it has a series' metadata. From the
cache the same series is one query and a decompression (~0.1 s)."""

import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError

from archive.models import Instance, Series
from archive.signals import series_stable
from archive.storage import Storage
from dicomweb import instances as stored
from dicomweb.models import InstanceMetadata

logger = logging.getLogger(__name__)

# Bump when metadata_json's output changes: rows of another format are made again.
METADATA_FORMAT = 1
# The DICOMweb root in cached JSON: a NUL (JSON-escaped) no DICOM text value ends up holding.
_ROOT = "\x00dicomweb-root"
_ROOT_IN_JSON = json.dumps(_ROOT)[1:-1].encode()
_BATCH = 500


@dataclass(frozen=True)
class MetadataRow:
    pk: int
    path: str
    sha256: str
    study_uid: str
    series_uid: str
    sop_uid: str


def metadata_rows(study: str, series: str | None, instance: str | None) -> list[MetadataRow]:
    """The instances of a study, series or one instance, in the order WADO-RS sends them."""
    rows = Instance.objects.filter(series__study__study_instance_uid=study)
    if series is not None:
        rows = rows.filter(series__series_instance_uid=series)
    if instance is not None:
        rows = rows.filter(sop_instance_uid=instance)
    rows = rows.order_by("series__series_number", "series_id", "instance_number", "pk")
    return [
        MetadataRow(pk, path, sha256, study, series_uid, sop_uid)
        for pk, path, sha256, series_uid, sop_uid in rows.values_list(
            "pk", "path", "sha256", "series__series_instance_uid", "sop_instance_uid"
        )
    ]


def metadata_stream(rows: list[MetadataRow], root: str) -> Iterator[bytes]:
    """The JSON array of the instances' metadata, in the order of `rows`. Unreadable instances
    are left out (logged): the status line has been sent by then. Rows made here are stored
    for the next request; a database error doing so is logged, never raised."""
    root_in_json = json.dumps(root)[1:-1].encode()
    yield b"["
    first = True
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        for item in _batch_json(batch):
            yield (b"" if first else b",") + item.replace(_ROOT_IN_JSON, root_in_json)
            first = False
    yield b"]"


def _batch_json(batch: list[MetadataRow]) -> Iterator[bytes]:
    current = {row.pk: row.sha256 for row in batch}
    cached = {
        pk: blob
        for pk, sha256, blob in InstanceMetadata.objects.filter(
            instance_id__in=current, format=METADATA_FORMAT
        ).values_list("instance_id", "sha256", "json")
        if sha256 == current[pk]
    }
    fresh: list[InstanceMetadata] = []
    storage = Storage(settings.DICOM_STORAGE_DIR)
    for row in batch:
        blob = cached.get(row.pk)
        if blob is not None:
            yield zlib.decompress(blob)
            continue
        uri = f"{_ROOT}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
        try:
            with stored.opened(storage, row.path) as stream:
                item = json.dumps(stored.metadata_json(stream, uri), ensure_ascii=False).encode()
        except stored.InstanceUnreadable as exc:
            logger.error("WADO-RS metadata: instance %s left out: %s", row.sop_uid, exc)
            continue
        fresh.append(
            InstanceMetadata(
                instance_id=row.pk,
                sha256=row.sha256,
                format=METADATA_FORMAT,
                json=zlib.compress(item, 1),
            )
        )
        yield item
    if fresh:
        _remember(fresh)


def _remember(fresh: list[InstanceMetadata]) -> None:
    try:
        InstanceMetadata.objects.bulk_create(
            fresh,
            update_conflicts=True,
            unique_fields=["instance"],
            update_fields=["sha256", "format", "json"],
        )
    except DatabaseError as exc:
        # A cache: the answer was right, only the next one will be slower.
        logger.warning("WADO-RS metadata of %d instances not cached: %s", len(fresh), exc)


def metadata_prepare(*, series: Series) -> int:
    """Make and cache the WADO-RS metadata of a series' instances that the cache lacks, so that
    a viewer's first visit finds it ready; returns how many instances the series has."""
    rows = metadata_rows(series.study.study_instance_uid, series.series_instance_uid, None)
    for _ in metadata_stream(rows, ""):
        pass
    return len(rows)


def _series_stable(sender: object, *, series: Series, **kwargs: object) -> None:
    if settings.DICOMWEB_PREPARE_METADATA:
        metadata_prepare(series=series)


def metadata_prepare_connect() -> None:
    """Prepare each series' metadata when it is announced stable (archive.signals), in the
    process that announces it: about a millisecond of CPU per instance, once, instead of the
    viewer's wait on its first visit."""
    series_stable.connect(_series_stable, dispatch_uid="dicomweb.metadata_prepare")
