import io

from pydicom import dcmread

from archive.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, file_header
from tests.conftest import sample_file
from tests.peers import dataset_bytes


def test_file_header_is_read_back_by_pydicom_with_odd_length_values():
    path = sample_file("MR_small.dcm")
    original = dcmread(path)
    header = file_header(
        sop_class_uid=original.SOPClassUID,
        sop_instance_uid="1.2.345",  # odd length: padded with NUL
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        source_ae_title="ODD",  # odd length: padded with space
    )
    ds = dcmread(io.BytesIO(header + dataset_bytes(path)))
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.345"
    assert ds.file_meta.SourceApplicationEntityTitle == "ODD"
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert ds.file_meta.FileMetaInformationGroupLength == len(header) - 144
    assert ds.PixelData == original.PixelData


def test_file_meta_scan_reads_what_pydicom_reads():
    """Over pydicom's sample files: the hand-read UIDs and dataset offset equal pydicom's, or
    the scan declines (None) and pydicom reads the file instead."""
    from pathlib import Path

    from pydicom.data import get_testdata_files
    from pydicom.filereader import _read_file_meta_info

    from archive.part10 import file_meta_scan

    scanned = 0
    for name in get_testdata_files("*.dcm"):
        data = Path(name).read_bytes()
        if data[128:132] != b"DICM":
            continue
        meta = file_meta_scan(data[:4096])
        stream = io.BytesIO(data)
        stream.seek(132)
        try:
            group = _read_file_meta_info(stream)
        except Exception:
            continue
        if meta is None:
            continue
        scanned += 1
        assert meta.dataset_offset == stream.tell(), name
        assert meta.transfer_syntax_uid == str(group.get("TransferSyntaxUID", "")).strip("\0 ")
        assert meta.sop_class_uid == str(group.get("MediaStorageSOPClassUID", "")).strip("\0 ")
        assert meta.sop_instance_uid == str(group.get("MediaStorageSOPInstanceUID", "")).strip(
            "\0 "
        )
    assert scanned > 50
    assert (
        file_meta_scan(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xff\xff\x00\x00")
        is None
    )
