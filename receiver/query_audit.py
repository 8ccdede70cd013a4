"""Audit records of DICOM queries and retrievals (PS3.15 A.5.3: Query, Begin Transferring /
DICOM Instances Transferred, and Storage Commitment as an order): one per request, written when
the request has been answered, never per match or sub-operation and never on the C-STORE path.

A database error while writing is logged, never raised: the requester has its answer already.
"""

import logging
from typing import Any

from django.db import DatabaseError

from audit.models import COMMITMENT, FAILURE, QUERY, RETRIEVE, SUCCESS
from audit.services import audit_record

logger = logging.getLogger(__name__)

# Statuses that are a success for the requester (PS3.4 C.4: 0x0000; 0xFE00 is its own cancel).
_FINE = (0x0000, 0xFE00)


def _write(action: str, *, ok: bool, assoc: Any, keys: dict[str, str], detail: dict) -> None:
    single = {
        field: keys[keyword]
        for field, keyword in (
            ("patient_id", "PatientID"),
            ("study_instance_uid", "StudyInstanceUID"),
            ("series_instance_uid", "SeriesInstanceUID"),
            ("sop_instance_uid", "SOPInstanceUID"),
        )
        # One value, no wildcard: the object of the record; else it is in detail["keys"].
        if keys.get(keyword) and not any(c in keys[keyword] for c in "\\*?")
    }
    try:
        audit_record(
            action,
            outcome=SUCCESS if ok else FAILURE,
            ae_title=assoc.requestor.ae_title,
            peer_address=str(assoc.requestor.address),
            detail={"via": "dicom", **detail},
            **single,
        )
    except DatabaseError as exc:
        logger.error("Audit record of a %s not written: %s", detail.get("service"), exc)


def query_audit_write(
    *, assoc: Any, level: str | None, keys: dict[str, str], matches: int, status: int
) -> None:
    """One QUERY record for a C-FIND: its level, the keys given a value, the number of matches
    and the final status."""
    _write(
        QUERY,
        ok=status in _FINE,
        assoc=assoc,
        keys=keys,
        detail={
            "service": "C-FIND",
            "level": level or "",
            "keys": keys,
            "matches": matches,
            "status": f"0x{status:04X}",
        },
    )


def retrieve_audit_write(
    *,
    assoc: Any,
    service: str,
    destination: str | None,
    keys: dict[str, str],
    counts: tuple[int, int, int],
    status: int,
) -> None:
    """One RETRIEVE record for a C-MOVE or C-GET: the keys, where the instances went (the move
    destination, or the requester itself for C-GET), completed/failed/warning counts and the
    final status."""
    completed, failed, warnings = counts
    _write(
        RETRIEVE,
        ok=status in _FINE,
        assoc=assoc,
        keys=keys,
        detail={
            "service": service,
            "destination": destination or assoc.requestor.ae_title.strip(),
            "keys": keys,
            "completed": completed,
            "failed": failed,
            "warnings": warnings,
            "status": f"0x{status:04X}",
        },
    )


def commitment_audit_write(
    *, assoc: Any, transaction_uid: str, instances: int, status: int, reason: str = ""
) -> None:
    """One COMMITMENT record for a Storage Commitment request (N-ACTION), accepted or not."""
    detail: dict[str, Any] = {
        "service": "N-ACTION",
        "transaction_uid": transaction_uid,
        "instances": instances,
        "status": f"0x{status:04X}",
    }
    if reason:
        detail["reason"] = reason
    _write(COMMITMENT, ok=status == 0, assoc=assoc, keys={}, detail=detail)
