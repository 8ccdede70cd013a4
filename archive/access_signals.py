"""What the archive's pages tell whoever keeps an audit trail (the `audit` app listens), so that
archive imports no app above it.

`patient_data_accessed` is sent, inside the transaction of the access where there is one, with:
- `action`: "view" (a patient, study, series or instance page), "query" (a list searched or
  filtered), "preview", "download" or "delete";
- `request`: the HTTP request (its user and client address are the actor);
- `targets`: one dict per object touched, with `patient_id`, `study_instance_uid`,
  `series_instance_uid` and `sop_instance_uid` as far as they apply (see `targets_of`);
- `detail`: a JSON-ready dict (the list's search and filters, counts of a deletion, ...).
"""

from typing import Any

from django.db.models import Model
from django.dispatch import Signal
from django.http import HttpRequest

from archive.models import Instance, Patient, Series, Study

patient_data_accessed = Signal()

# The actions sent (audit.models names the same).
VIEW = "view"
QUERY = "query"
PREVIEW = "preview"
DOWNLOAD = "download"
DELETE = "delete"


def target_of(obj: Model) -> dict[str, str]:
    """The identifiers an audit record keeps of a patient, study, series or instance."""
    if isinstance(obj, Instance):
        return {**target_of(obj.series), "sop_instance_uid": obj.sop_instance_uid}
    if isinstance(obj, Series):
        return {**target_of(obj.study), "series_instance_uid": obj.series_instance_uid}
    if isinstance(obj, Study):
        return {**target_of(obj.patient), "study_instance_uid": obj.study_instance_uid}
    if isinstance(obj, Patient):
        return {"patient_id": obj.patient_id}
    raise TypeError(f"not an index object: {type(obj).__name__}")


def access_signal(
    action: str,
    request: HttpRequest,
    objects: list[Model] | None = None,
    *,
    detail: dict[str, Any] | None = None,
) -> None:
    patient_data_accessed.send(
        sender=Instance,
        action=action,
        request=request,
        targets=[target_of(obj) for obj in objects or []],
        detail=detail or {},
    )
