"""Deleting from the archive: index rows and their files go together, or neither goes."""

import logging
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import Model, QuerySet

from archive.dblock import index_writer
from archive.models import Instance, Patient, Series, Study
from archive.storage import Storage

logger = logging.getLogger(__name__)

# For each level, the lookup from its rows to the selected rows of each level at or above it.
_BELOW: dict[type[Model], dict[type[Model], str]] = {
    Patient: {Patient: "pk__in"},
    Study: {Patient: "patient__in", Study: "pk__in"},
    Series: {Patient: "study__patient__in", Study: "study__in", Series: "pk__in"},
    Instance: {
        Patient: "series__study__patient__in",
        Study: "series__study__in",
        Series: "series__in",
        Instance: "pk__in",
    },
}


@dataclass(frozen=True)
class DeletionCounts:
    patients: int
    studies: int
    series: int
    instances: int


def deletion_preview(objects: QuerySet) -> DeletionCounts:
    """What deleting `objects` removes at and below their level, counted in the database (for
    the confirmation); parents left without children go as well and are not counted here."""
    return DeletionCounts(
        patients=_below(Patient, objects).count(),
        studies=_below(Study, objects).count(),
        series=_below(Series, objects).count(),
        instances=_below(Instance, objects).count(),
    )


def index_delete(objects: QuerySet, storage: Storage) -> DeletionCounts:
    """Delete `objects` (patients, studies, series or instances), everything below them, their
    files, and the parents left empty.

    The files are moved aside inside the index transaction and put back if it fails; they are
    unlinked only once it committed. A crash in between leaves rows without files, which
    `verifystorage --repair` removes: a deletion never comes back as orphaned files. (Within
    an outer transaction, such as the admin's delete view, the files go when it commits.)
    """
    model: type[Model] = objects.model
    instances = _below(Instance, objects)
    moved: list[tuple[Path, str]] = []
    try:
        with index_writer(), transaction.atomic():
            rows = list(instances.values_list("path", "series_id"))
            series_ids = {series_id for _, series_id in rows}
            if model is Series:
                series_ids |= set(objects.values_list("pk", flat=True))
            study_ids = set(
                Series.objects.filter(pk__in=series_ids).values_list("study_id", flat=True)
            )
            patient_ids = set(
                Study.objects.filter(pk__in=study_ids).values_list("patient_id", flat=True)
            )
            deleted = objects.delete()[1]
            # Parents left without children go too: an empty series is nothing received.
            emptied = [
                Series.objects.filter(pk__in=series_ids, instances__isnull=True).delete()[1],
                Study.objects.filter(pk__in=study_ids, series__isnull=True).delete()[1],
                Patient.objects.filter(pk__in=patient_ids, studies__isnull=True).delete()[1],
            ]
            for relative, _ in rows:
                aside = storage.move_aside(relative)
                if aside is not None:
                    moved.append((aside, relative))
            transaction.on_commit(lambda: _finish(storage, moved))
    except BaseException:
        _put_back(storage, moved)
        raise
    counts = _merge(deleted, *emptied)
    return DeletionCounts(
        patients=counts.get("archive.Patient", 0),
        studies=counts.get("archive.Study", 0),
        series=counts.get("archive.Series", 0),
        instances=counts.get("archive.Instance", 0),
    )


def _below(level: type[Model], objects: QuerySet) -> QuerySet:
    """The rows of `level` at or below `objects` (none when `level` is above them)."""
    path = _BELOW[level].get(objects.model)
    return level.objects.filter(**{path: objects}) if path else level.objects.none()


def _merge(*counts: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for label, n in count.items():
            merged[label] = merged.get(label, 0) + n
    return merged


def _put_back(storage: Storage, moved: list[tuple[Path, str]]) -> None:
    for aside, relative in moved:
        storage.restore(aside, relative)


def _finish(storage: Storage, moved: list[tuple[Path, str]]) -> None:
    for aside, relative in moved:
        storage.drop_aside(aside)
        storage.prune_directories(relative)
    logger.info("Deleted %d files from the archive", len(moved))
