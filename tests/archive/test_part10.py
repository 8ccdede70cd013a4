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
