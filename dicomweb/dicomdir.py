"""A DICOMDIR (PS3.10 media storage directory, PS3.3 Annex F) built while the files it indexes
stream past, for the ZIP download.

pydicom's FileSet writes a correct DICOMDIR but cannot serve here: `FileSet.add` saves a copy of
every instance to a staging directory, `FileSet.write` copies them all again into the output
directory, and each add looks through every instance already added (quadratic for a large
patient). Its record makers (`DIRECTORY_RECORDERS`, the public hook for them) are used here; the
records are kept encoded (a few hundred bytes an instance) and their offsets set when the
directory is written, after the last file."""

import itertools
import logging
import struct

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import DIRECTORY_RECORDERS
from pydicom.fileset import _four_level_record_type as leaf_record_type  # pinned pydicom 3.0
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

logger = logging.getLogger(__name__)

ROOT = "DICOM"
# File ID components (PS3.10 8.2: at most 8 of A-Z, 0-9 and _): a level prefix, six digits.
_PREFIX = {"PATIENT": "PT", "STUDY": "ST", "SERIES": "SE"}
_LEAF_PREFIX = "IM"

# An encoded record starts with (0004,1400) Offset of the Next Directory Record (UL, value at
# byte 8), then (0004,1410) Record In-use Flag (US), then (0004,1420) Offset of Referenced Lower
# Level Directory Entity (UL, value at byte 30): elements are written in tag order.
_NEXT_AT, _LOWER_AT = 8, 30

# Type 1 attributes of the PATIENT, STUDY, SERIES and IMAGE records that stored instances may
# lack (they are type 2 in the IODs): invented as DCMTK's dcmmkdir +I does, in the records only.
_INVENTED = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": "1",
    "InstanceNumber": "1",
}


class _Node:
    __slots__ = ("children", "offset", "record")

    def __init__(self, record: bytearray) -> None:
        self.record = record
        self.children: dict[str, _Node] = {}
        self.offset = 0


def _encoded(record: Dataset) -> bytearray:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, record)
    data = bytearray(fp.getvalue())
    assert data[0:4] == b"\x04\x00\x00\x14" and data[22:26] == b"\x04\x00\x20\x14"
    return data


def _record(kind: str, ds: Dataset) -> Dataset:
    record = DIRECTORY_RECORDERS[kind](ds)
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = kind
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    return record


class Dicomdir:
    """Directory records of the instances added, PATIENT/STUDY/SERIES/leaf, in the order
    added; `encoded()` is the DICOMDIR file."""

    def __init__(self) -> None:
        self._patients: dict[str, _Node] = {}
        self.left_out = 0

    def add(self, header: Dataset) -> list[str]:
        """The File ID (components) the instance whose header (file meta and attributes, pixel
        data not needed) is given is to be stored under, its records added. An instance no
        record can be made for (a leaf type whose required attributes it lacks) is stored
        outside the directory, DICOM/UNINDEX/Fnnnnnnn. Fills invented values for missing Type 1
        record attributes into `header`."""
        for keyword, invented in _INVENTED.items():
            if header.get(keyword) in (None, ""):
                setattr(header, keyword, invented)
        sop_class = header.file_meta.get("MediaStorageSOPClassUID") or header.get("SOPClassUID")
        sop_instance = header.file_meta.get("MediaStorageSOPInstanceUID") or header.get(
            "SOPInstanceUID"
        )
        try:
            leaf_type = leaf_record_type(header)
            leaf = _record(leaf_type, header)
        except (ValueError, KeyError, AttributeError) as exc:
            self.left_out += 1
            logger.warning("DICOMDIR: instance %s left out: %s", sop_instance, exc)
            return [ROOT, "UNINDEX", f"F{self.left_out:07d}"]
        keys = (str(header.PatientID), header.StudyInstanceUID, header.SeriesInstanceUID)
        siblings, file_id = self._patients, [ROOT]
        for kind, key in zip(("PATIENT", "STUDY", "SERIES"), keys, strict=True):
            node = siblings.get(key)
            if node is None:
                node = siblings[key] = _Node(_encoded(_record(kind, header)))
            file_id.append(f"{_PREFIX[kind]}{list(siblings).index(key):06d}")
            siblings = node.children
        file_id.append(f"{_LEAF_PREFIX}{len(siblings):06d}")
        leaf.ReferencedFileID = file_id
        leaf.ReferencedSOPClassUIDInFile = sop_class
        leaf.ReferencedSOPInstanceUIDInFile = sop_instance
        leaf.ReferencedTransferSyntaxUIDInFile = header.file_meta.TransferSyntaxUID
        siblings[str(sop_instance)] = _Node(_encoded(leaf))
        return file_id

    def encoded(self) -> bytes:
        """The DICOMDIR file: preamble, file meta, and the directory records with their
        offsets (from the file's first byte, PS3.3 F.3.2.1)."""
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        fp = DicomBytesIO()
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        head = fp.getvalue()
        # File-set ID (empty), offsets of the first and last root records, consistency flag,
        # then the Directory Record Sequence's header: 8 + 12 + 12 + 10 + 12 bytes.
        first_item = len(head) + 54
        ordered: list[_Node] = []

        def visit(siblings: dict[str, _Node]) -> None:
            for node in siblings.values():
                ordered.append(node)
                visit(node.children)

        visit(self._patients)
        offset = first_item
        for node in ordered:
            node.offset = offset
            offset += 8 + len(node.record)
        for node in ordered:
            children = list(node.children.values())
            if children:
                struct.pack_into("<I", node.record, _LOWER_AT, children[0].offset)
            for before, after in itertools.pairwise(children):
                struct.pack_into("<I", before.record, _NEXT_AT, after.offset)
        roots = list(self._patients.values())
        for before, after in itertools.pairwise(roots):
            struct.pack_into("<I", before.record, _NEXT_AT, after.offset)
        first, last = (roots[0].offset, roots[-1].offset) if roots else (0, 0)
        body = [
            head,
            struct.pack("<HH2sH", 0x0004, 0x1130, b"CS", 0),
            struct.pack("<HH2sHI", 0x0004, 0x1200, b"UL", 4, first),
            struct.pack("<HH2sHI", 0x0004, 0x1202, b"UL", 4, last),
            struct.pack("<HH2sHH", 0x0004, 0x1212, b"US", 2, 0),
            struct.pack("<HH2sHI", 0x0004, 0x1220, b"SQ", 0, offset - first_item),
        ]
        for node in ordered:
            body.append(struct.pack("<HHI", 0xFFFE, 0xE000, len(node.record)))
            body.append(bytes(node.record))
        return b"".join(body)
