"""Retrieval: which stored instances a C-MOVE / C-GET (and later WADO) identifier asks for,
and each one's dataset read through the storage service, converted when the receiver cannot
take its stored transfer syntax.

Instances are read one at a time as they are sent: a study is never held in memory whole.
"""

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from archive.exceptions import StorageFailure
from archive.models import Instance
from archive.query import (
    IMAGE,
    LEVELS,
    PATIENT,
    STUDY_ROOT,
    UNIQUE_KEYS,
    Query,
    QueryInvalid,
    query_queryset,
)
from archive.storage import Storage
from archive.stored_file import StoredFile

logger = logging.getLogger(__name__)

_CHUNK = 200


class RetrieveFailed(Exception):
    """One instance cannot be sent: its file is missing or unreadable, or it cannot be
    converted to a syntax the receiver accepts."""


@dataclass(frozen=True)
class RetrieveItem:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str


@dataclass(frozen=True)
class Retrieval:
    """The instances a retrieve identifier selects, known by their primary keys."""

    ids: tuple[int, ...]
    # SOP class → the transfer syntaxes its instances are stored in.
    syntaxes: dict[str, frozenset[str]]

    def __len__(self) -> int:
        return len(self.ids)

    def items(self) -> Iterator[RetrieveItem]:
        """The instances in order, read from the index a chunk at a time."""
        for start in range(0, len(self.ids), _CHUNK):
            chunk = self.ids[start : start + _CHUNK]
            rows = {
                row[0]: RetrieveItem(*row[1:])
                for row in Instance.objects.filter(pk__in=chunk).values_list(
                    "pk", "sop_class_uid", "sop_instance_uid", "transfer_syntax_uid", "path"
                )
            }
            for pk in chunk:
                item = rows.get(pk)
                if item is not None:  # deleted since: nothing to send
                    yield item


Source = StoredFile | Dataset | RetrieveFailed


class RetrieveSources:
    """The instances of a retrieval, each with what to send for it (`instance_source`, or the
    RetrieveFailed saying why nothing can be), prepared one ahead: `prepare_next()` opens the
    next file (or decodes it) while the receiver is still busy with the current one. At most
    two instances are open at a time. `close()` closes a prepared one that was not taken."""

    def __init__(
        self,
        retrieval: Retrieval,
        *,
        storage: Storage,
        accepted: dict[str, set[str]] | dict[str, frozenset[str]],
    ) -> None:
        self._items = retrieval.items()
        self._storage = storage
        self._accepted = accepted
        self._next: tuple[RetrieveItem, Source] | None = None
        self._exhausted = False

    def prepare_next(self) -> None:
        if self._next is not None or self._exhausted:
            return
        item = next(self._items, None)
        if item is None:
            self._exhausted = True
            return
        source: Source
        try:
            source = instance_source(
                storage=self._storage,
                item=item,
                accepted=self._accepted.get(item.sop_class_uid, frozenset()),
            )
        except RetrieveFailed as exc:
            source = exc
        self._next = (item, source)

    def __iter__(self) -> "RetrieveSources":
        return self

    def __next__(self) -> tuple[RetrieveItem, Source]:
        self.prepare_next()
        if self._next is None:
            raise StopIteration
        taken, self._next = self._next, None
        return taken

    def close(self) -> None:
        if self._next is not None:
            source_close(self._next[1])
            self._next = None


def source_close(source: Source) -> None:
    """Close what `instance_source` opened for an instance that will not be sent."""
    if isinstance(source, StoredFile):
        source.close()


def retrieve_parse(identifier: Dataset, *, model: str) -> Query:
    """The instances a C-MOVE/C-GET identifier selects, as an IMAGE-level query on its unique
    keys (PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID).

    The key of the identifier's own level must be given. PATIENT level is accepted under the
    Study Root model too: Orthanc sends it. Raises QueryInvalid otherwise.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryInvalid(f"unsupported QueryRetrieveLevel {level!r}")
    keys: dict[str, str] = {}
    for depth, name in enumerate(LEVELS):
        keyword = UNIQUE_KEYS[name]
        value = identifier.get(keyword)
        if value is None:
            continue
        if isinstance(value, PersonName):
            value = str(value)
        text = "\\".join(str(v) for v in value) if isinstance(value, list) else str(value or "")
        text = text.strip(" \0")
        if text in ("", "*"):
            continue
        if depth > LEVELS.index(level):
            raise QueryInvalid(f"{keyword} is a key of the {name} level, below {level}")
        if "*" in text or "?" in text:
            raise QueryInvalid(f"{keyword}: wildcards are not allowed in a retrieve identifier")
        keys[keyword] = text
    if UNIQUE_KEYS[level] not in keys and not (level == PATIENT and model == STUDY_ROOT and keys):
        raise QueryInvalid(f"a {level} level retrieve needs {UNIQUE_KEYS[level]}")
    return Query(level=IMAGE, keys=keys)


def retrieve_instances(query: Query) -> Retrieval:
    """The matching instances (their keys, and the classes and syntaxes they are stored in)."""
    queryset = query_queryset(query)
    ids: list[int] = []
    syntaxes: dict[str, set[str]] = {}
    for pk, sop_class, syntax in queryset.values_list(
        "pk", "sop_class_uid", "transfer_syntax_uid"
    ).order_by("pk"):
        ids.append(pk)
        syntaxes.setdefault(sop_class, set()).add(syntax)
    return Retrieval(tuple(ids), {k: frozenset(v) for k, v in syntaxes.items()})


def instance_source(
    *, storage: Storage, item: RetrieveItem, accepted: frozenset[str] | set[str]
) -> StoredFile | Dataset:
    """What to send for one instance: the stored file itself, opened once and sent from the
    first byte after its file meta group without decoding, when the receiver accepts its
    stored syntax; else a Dataset from `instance_dataset`. Raises RetrieveFailed."""
    if item.transfer_syntax_uid not in accepted:
        return instance_dataset(storage=storage, item=item, accepted=accepted)
    try:
        stream = storage.open(item.path)
    except StorageFailure as exc:
        raise RetrieveFailed(str(exc)) from None
    except FileNotFoundError:
        raise RetrieveFailed(f"the file of {item.sop_instance_uid} is missing") from None
    except OSError as exc:
        raise RetrieveFailed(f"the file of {item.sop_instance_uid} is unreadable: {exc}") from None
    try:
        offset = _dataset_offset(stream)
        length = stream.seek(0, 2) - offset
        stream.seek(offset)
    except (OSError, ValueError, EOFError) as exc:
        stream.close()
        raise RetrieveFailed(f"the file of {item.sop_instance_uid} is unreadable: {exc}") from None
    return StoredFile(
        stream, length, item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid
    )


_META_LENGTH = struct.Struct("<HH2sHI")


def _dataset_offset(stream: BinaryIO) -> int:
    """Where the data set starts: after the preamble, 'DICM' and the file meta group, whose
    length its first element gives (archive.part10 always writes it)."""
    head = stream.read(144)
    if len(head) == 144 and head[128:132] == b"DICM":
        group, element, vr, _, length = _META_LENGTH.unpack_from(head, 132)
        if (group, element, vr) == (2, 0, b"UL"):
            return 144 + length
    # Another writer's file without the group length: let pydicom walk the group.
    stream.seek(0)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.tell()


def instance_dataset(
    *, storage: Storage, item: RetrieveItem, accepted: frozenset[str] | set[str]
) -> Dataset:
    """The stored instance as a Dataset to send in one of the `accepted` transfer syntaxes.

    In its stored syntax when accepted (or when only explicit/implicit VR or deflate differ,
    which the sender converts as it encodes); otherwise decompressed to explicit VR little
    endian when the pixel data can be decoded. Raises RetrieveFailed when the file is missing
    or unreadable, or no accepted syntax can carry it.
    """
    try:
        with storage.open(item.path) as stream:
            ds = _read(stream)
    except FileNotFoundError:
        raise RetrieveFailed(f"the file of {item.sop_instance_uid} is missing") from None
    except Exception as exc:
        raise RetrieveFailed(f"the file of {item.sop_instance_uid} is unreadable: {exc}") from None
    stored = UID(item.transfer_syntax_uid)
    if stored in accepted:
        return ds
    little_endian_uncompressed = not stored.is_compressed and stored.is_little_endian
    if little_endian_uncompressed and any(
        not UID(s).is_compressed and UID(s).is_little_endian for s in accepted
    ):
        return ds
    if stored.is_compressed and ExplicitVRLittleEndian in accepted:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:
            raise RetrieveFailed(
                f"{item.sop_instance_uid} ({stored.name}) cannot be decompressed: {exc}"
            ) from None
        return ds
    raise RetrieveFailed(
        f"the receiver accepts none of the syntaxes {item.sop_instance_uid} ({stored.name}) "
        "can be sent in"
    )


def _read(stream: BinaryIO) -> Dataset:
    # Read whole (no deferred values): the stream closes when the caller's block ends.
    return dcmread(stream, force=True)
