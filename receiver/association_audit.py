"""Audit records of what an association stored: one per study, written when the association
ends, never per instance on the C-STORE path (the tally only counts)."""

from collections import Counter

from audit.models import FAILURE, STORE, SUCCESS
from audit.services import audit_record_many


def association_audit_write(
    *,
    calling_ae_title: str,
    peer_address: str,
    studies: Counter[tuple[str, str]],
    failures: dict[str, int],
    association_outcome: str,
) -> int:
    """One STORE record per (patient, study) that received instances, and one failure record
    when C-STOREs failed (their study may be unknown: the dataset may not even parse). Returns
    how many were written; a database error is logged, never raised."""
    common = {"ae_title": calling_ae_title, "peer_address": peer_address}
    records = [
        {
            "action": STORE,
            "patient_id": patient_id,
            "study_instance_uid": study_uid,
            "detail": {"via": "dicom", "instances": count, "association": association_outcome},
            **common,
        }
        for (patient_id, study_uid), count in studies.items()
    ]
    if failures:
        records.append(
            {
                "action": STORE,
                "outcome": FAILURE,
                "detail": {
                    "via": "dicom",
                    "failed": failures,
                    "association": association_outcome,
                },
                **common,
            }
        )
    for record in records:
        record.setdefault("outcome", SUCCESS)
    return audit_record_many(records)
