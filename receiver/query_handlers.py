"""Query/Retrieve: C-FIND, C-MOVE and C-GET, served by these functions (see
receiver.transport.retrieve_service).

Statuses (PS3.4 C.4): 0xFF00 pending with each match or after each sub-operation; 0x0000 done;
0xB000 sub-operations complete with failures (FailedSOPInstanceUIDList); 0xFE00 cancelled;
0xA900 identifier does not match the SOP class (bad level, key of a lower level, malformed
value); 0xC000 identifier unreadable; 0xA700/0xA701 index unavailable; 0xA702 no
sub-operation could be performed (destination unreachable); 0xA801 unknown move destination.
"""

import contextlib
import logging
import time
from io import BytesIO
from typing import Any

from django.db import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from archive.dimse_codec import response_command
from archive.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    QueryInvalid,
    query_parse,
    query_run_encoded,
)
from archive.retrieval import (
    RetrieveFailed,
    RetrieveSources,
    retrieve_instances,
    retrieve_parse,
    source_close,
)
from archive.storage import Storage
from receiver.config import ReceiverConfig
from receiver.query_audit import query_audit_write, retrieve_audit_write
from receiver.transport.accepted import AcceptedAssociationStore, QueuedWriter
from routing.direct import DirectStoreAssociation
from routing.remote import remote_ae_deidentified, remote_ae_find
from routing.scu import AssociationFailed, store_contexts

logger = logging.getLogger(__name__)

PENDING = 0xFF00
SUCCESS = 0x0000
CANCELLED = 0xFE00
SUBOPERATIONS_WITH_FAILURES = 0xB000
OUT_OF_RESOURCES = 0xA700
CANNOT_COUNT = 0xA701
CANNOT_PERFORM = 0xA702
UNKNOWN_DESTINATION = 0xA801
IDENTIFIER_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
MAX_SUBOPERATIONS = 65535  # the counts are US (PS3.7 C.4.2.1)
# Pending responses are optional (PS3.4 C.4.2.1.5): one at most this often keeps the requester
# informed without a response per instance costing as much as the instance.
PENDING_INTERVAL = 0.2

QUERY_MODELS = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
}
QUERY_RETRIEVE_CLASSES = frozenset(QUERY_MODELS)


def _peer(assoc: Any) -> str:
    return f"{assoc.requestor.ae_title.strip()}@{assoc.requestor.address}"


C_FIND_RSP = 0x8020
C_GET_RSP = 0x8010
C_MOVE_RSP = 0x8021
PENDING_WITH_UNSUPPORTED_KEYS = 0xFF01  # PS3.4 C.4.1.1.4: optional keys not supported


def serve_find(service: Any, req: Any, context: Any, *, config: ReceiverConfig) -> None:
    """One C-FIND: a pending response per match from archive.query (0xFF01 when a key the
    index cannot match was given a value), then 0x0000; or 0xFE00 on C-CANCEL, 0xA900,
    0xC000 or 0xA700 (see the module docstring). Responses are encoded by
    archive.dimse_codec (no pydicom command sets), written as receiver.transport.accepted
    says. One audit record per request once it is answered (receiver.query_audit)."""
    outcome = _Found()
    try:
        _find(service, req, context, config, outcome)
    finally:
        if outcome.status is not None:
            query_audit_write(
                assoc=service.assoc,
                level=outcome.level,
                keys=outcome.keys,
                matches=outcome.matches,
                status=outcome.status,
            )


class _Found:
    """What one C-FIND asked and how it ended, for its audit record."""

    def __init__(self) -> None:
        self.level: str | None = None
        self.keys: dict[str, str] = {}
        self.matches = 0
        self.status: int | None = None


def _find(service: Any, req: Any, context: Any, config: ReceiverConfig, found: _Found) -> None:
    assoc = service.assoc
    syntax = context.transfer_syntax[0]
    model = QUERY_MODELS.get(str(context.abstract_syntax), STUDY_ROOT)
    writer = QueuedWriter(assoc)
    sop_class = str(req.AffectedSOPClassUID)
    started = time.monotonic()

    def respond(status: int, encoded: bytes | None = None) -> None:
        if encoded is None:
            found.status = status
        command = response_command(
            command_field=C_FIND_RSP,
            sop_class_uid=sop_class,
            message_id=int(req.MessageID),
            status=status,
            has_dataset=encoded is not None,
        )
        writer.command_send(context.context_id, command, encoded)

    try:
        identifier = decode(
            req.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        found.level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()[:16]
        query = query_parse(identifier, model=model)
    except QueryInvalid as exc:
        logger.warning("C-FIND from %s refused (0xA900): %s", _peer(assoc), exc)
        respond(IDENTIFIER_MISMATCH)
        return
    except Exception as exc:
        logger.warning("C-FIND from %s: identifier unreadable (0xC000): %s", _peer(assoc), exc)
        respond(CANNOT_UNDERSTAND)
        return
    found.level, found.keys = query.level, query.matching_keys
    pending = PENDING_WITH_UNSUPPORTED_KEYS if query.unmatched else PENDING
    if query.unmatched:
        logger.debug("C-FIND keys not matched (not indexed): %s", ", ".join(query.unmatched))
    extra = {"RetrieveAETitle": config.ae_title} if "RetrieveAETitle" in identifier else None
    matches = query_run_encoded(
        query,
        explicit_vr=not syntax.is_implicit_VR,
        extra=extra,
        case_insensitive_pn=config.query_pn_case_insensitive,
    )
    try:
        for match in matches:
            if service.is_cancelled(req.MessageID):
                logger.info(
                    "C-FIND from %s cancelled after %d matches", _peer(assoc), found.matches
                )
                respond(CANCELLED)
                return
            if not assoc.is_established:
                found.status = CANCELLED
                return
            found.matches += 1
            respond(pending, match)
    except DatabaseError as exc:
        logger.error("C-FIND from %s failed (0xA700): index unavailable: %s", _peer(assoc), exc)
        respond(OUT_OF_RESOURCES)
        return
    logger.info(
        "C-FIND from %s at %s level: %d match(es) in %.0f ms",
        _peer(assoc),
        query.level,
        found.matches,
        1000 * (time.monotonic() - started),
    )
    respond(SUCCESS)


class _Responder:
    """The C-MOVE/C-GET responses of one request, with its sub-operation counts."""

    def __init__(self, service: Any, req: Any, context: Any, kind: str) -> None:
        self.service = service
        self.context_id = context.context_id
        self.syntax = context.transfer_syntax[0]
        self.rsp = C_MOVE() if kind == "move" else C_GET()
        self.rsp.MessageID = req.MessageID
        self.rsp.MessageIDBeingRespondedTo = req.MessageID
        self.rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        self.remaining = self.completed = self.failed = self.warnings = 0
        self.failed_uids: list[str] = []
        # Responses encoded by archive.dimse_codec and written by this thread (as C-FIND's, see
        # receiver.transport.accepted); C-GET's with its C-STOREs, once they start.
        self.command_field = C_MOVE_RSP if kind == "move" else C_GET_RSP
        self.direct: QueuedWriter | None = QueuedWriter(service.assoc) if kind == "move" else None
        # For the audit record: the retrieve keys, the move destination, the final status.
        self.keys: dict[str, str] = {}
        self.destination: str | None = None
        self.final: int | None = None

    def send(self, status: int, *, final: bool = False) -> None:
        if final:
            self.final = status
        rsp = self.rsp
        rsp.Status = status
        rsp.Identifier = None
        if status in (PENDING, CANCELLED):
            rsp.NumberOfRemainingSuboperations = self.remaining
        else:
            rsp.NumberOfRemainingSuboperations = None
        rsp.NumberOfCompletedSuboperations = self.completed
        rsp.NumberOfFailedSuboperations = self.failed
        rsp.NumberOfWarningSuboperations = self.warnings
        identifier = None
        if final and (self.failed_uids or status in (CANCELLED, SUBOPERATIONS_WITH_FAILURES)):
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = self.failed_uids
            syntax = self.syntax
            identifier = encode(
                ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            rsp.Identifier = BytesIO(identifier)
        if self.direct is not None:
            command = response_command(
                command_field=self.command_field,
                sop_class_uid=str(rsp.AffectedSOPClassUID),
                message_id=int(rsp.MessageIDBeingRespondedTo),
                status=status,
                has_dataset=identifier is not None,
                counts=(
                    rsp.NumberOfRemainingSuboperations,
                    self.completed,
                    self.failed,
                    self.warnings,
                ),
            )
            self.direct.command_send(self.context_id, command, identifier)
            return
        self.service.dimse.send_msg(rsp, self.context_id)

    def refuse(self, status: int) -> None:
        self.final = status
        rsp = self.rsp
        rsp.Status = status
        rsp.Identifier = None
        self.service.dimse.send_msg(rsp, self.context_id)


def serve_retrieve(
    service: Any, req: Any, context: Any, kind: str, *, config: ReceiverConfig, storage: Storage
) -> None:
    """Serve one C-MOVE (`kind` "move") or C-GET ("get") request, responses included, then
    write its one audit record (receiver.query_audit): 0xA702 there when the association
    ended before the final response."""
    respond = _Responder(service, req, context, kind)
    name = "C-MOVE" if kind == "move" else "C-GET"
    try:
        _retrieve(service, req, context, kind, config, storage, respond)
    finally:
        retrieve_audit_write(
            assoc=service.assoc,
            service=name,
            destination=respond.destination,
            keys=respond.keys,
            counts=(respond.completed, respond.failed, respond.warnings),
            status=CANNOT_PERFORM if respond.final is None else respond.final,
        )


def _retrieve(
    service: Any,
    req: Any,
    context: Any,
    kind: str,
    config: ReceiverConfig,
    storage: Storage,
    respond: _Responder,
) -> None:
    assoc = service.assoc
    name = "C-MOVE" if kind == "move" else "C-GET"
    model = QUERY_MODELS.get(str(context.abstract_syntax), STUDY_ROOT)
    syntax = respond.syntax
    try:
        identifier = decode(
            req.Identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
        )
        query = retrieve_parse(identifier, model=model)
    except QueryInvalid as exc:
        respond.keys = {"QueryRetrieveLevel": str(identifier.get("QueryRetrieveLevel", ""))}
        logger.warning("%s from %s refused (0xA900): %s", name, _peer(assoc), exc)
        respond.refuse(IDENTIFIER_MISMATCH)
        return
    except Exception as exc:
        logger.warning("%s from %s: identifier unreadable (0xC000): %s", name, _peer(assoc), exc)
        respond.refuse(CANNOT_UNDERSTAND)
        return

    respond.keys = dict(query.keys)
    peer = None
    if kind == "move":
        destination = str(req.MoveDestination or "").strip()
        respond.destination = destination
        try:
            peer = remote_ae_find(ae_title=destination)
            deidentified = peer is not None and remote_ae_deidentified(ae_title=destination)
        except DatabaseError as exc:
            logger.error("C-MOVE from %s: index unavailable: %s", _peer(assoc), exc)
            respond.refuse(CANNOT_COUNT)
            return
        if peer is None:
            logger.warning(
                "C-MOVE from %s refused (0xA801): destination %r is not a known remote AE",
                _peer(assoc),
                destination,
            )
            respond.refuse(UNKNOWN_DESTINATION)
            return
        if deidentified:
            # Its forwarding rule promises de-identified copies only; a retrieval sends the
            # stored instances as they are.
            logger.warning(
                "C-MOVE from %s refused (0xC000): destination %r gets de-identified copies only",
                _peer(assoc),
                destination,
            )
            respond.refuse(CANNOT_UNDERSTAND)
            return
    try:
        retrieval = retrieve_instances(query)
    except DatabaseError as exc:
        logger.error("%s from %s: index unavailable: %s", name, _peer(assoc), exc)
        respond.refuse(CANNOT_COUNT)
        return
    if len(retrieval) > MAX_SUBOPERATIONS:
        logger.warning(
            "%s from %s refused (0xA701): %d instances, more than %d",
            name,
            _peer(assoc),
            len(retrieval),
            MAX_SUBOPERATIONS,
        )
        respond.refuse(CANNOT_COUNT)
        return
    respond.remaining = len(retrieval)
    if not retrieval:
        respond.send(SUCCESS, final=True)
        return

    started = time.monotonic()
    if peer is not None:
        try:
            sender = DirectStoreAssociation(
                peer,
                calling_ae_title=config.ae_title,
                contexts=store_contexts(retrieval.syntaxes),
                timeout=config.dimse_timeout,
            ).open()
        except AssociationFailed as exc:
            logger.warning("C-MOVE from %s: cannot reach the destination: %s", _peer(assoc), exc)
            respond.failed, respond.remaining = respond.remaining, 0
            respond.failed_uids = [item.sop_instance_uid for item in retrieval.items()]
            respond.send(CANNOT_PERFORM, final=True)
            return
        accepted = sender.accepted_syntaxes()
        store: Any = contextlib.nullcontext(sender)
    else:
        # Inside `with`, the peer's C-STORE responses reach us without pynetdicom's decoding.
        sender = store = respond.direct = AcceptedAssociationStore(assoc)
        accepted = {}
        for sop_class, offered in sender.accepted.values():
            accepted.setdefault(sop_class, set()).add(offered)

    message_id = 0
    status = SUCCESS
    last_pending = 0.0
    # Each instance's file is opened (or decoded) while the receiver is still storing the one
    # before: one sub-operation outstanding at a time as PS3.7 asks without an asynchronous
    # operations window, but our share of each one out of the round trip.
    sources = RetrieveSources(retrieval, storage=storage, accepted=accepted)
    try:
        with store as sending:
            for item, source in sources:
                if service.is_cancelled(req.MessageID):
                    source_close(source)
                    status = CANCELLED
                    break
                if not assoc.is_established or not sender.is_established:
                    source_close(source)
                    break
                message_id = message_id % 65535 + 1
                if isinstance(source, RetrieveFailed):
                    logger.warning("%s sub-operation failed: %s", name, source)
                    result = None
                else:
                    result = sending.send(
                        source,
                        message_id=message_id,
                        originator_ae_title=assoc.requestor.ae_title if peer else None,
                        originator_message_id=req.MessageID if peer else None,
                        meanwhile=sources.prepare_next,
                    )
                del source
                respond.remaining -= 1
                if result == SUCCESS:
                    respond.completed += 1
                elif result is not None and result & 0xF000 == 0xB000:
                    respond.warnings += 1
                else:
                    respond.failed += 1
                    respond.failed_uids.append(item.sop_instance_uid)
                now = time.monotonic()
                if respond.remaining and now - last_pending >= PENDING_INTERVAL:
                    last_pending = now
                    respond.send(PENDING)
    finally:
        sources.close()
        if peer is not None and sender.is_established:
            sender.release()
    if not assoc.is_established:
        return
    if status != CANCELLED and respond.remaining:
        # The destination went away: what was not sent failed.
        for item in list(retrieval.items())[-respond.remaining :]:
            respond.failed_uids.append(item.sop_instance_uid)
        respond.failed += respond.remaining
        respond.remaining = 0
    if status != CANCELLED and (respond.failed or respond.warnings):
        status = SUBOPERATIONS_WITH_FAILURES
    logger.info(
        "%s from %s%s: %d completed, %d failed, %d warning(s), %d remaining (0x%04X) in %.1f s",
        name,
        _peer(assoc),
        f" to {peer.ae_title}" if peer else "",
        respond.completed,
        respond.failed,
        respond.warnings,
        respond.remaining,
        status,
        time.monotonic() - started,
    )
    respond.send(status, final=True)
