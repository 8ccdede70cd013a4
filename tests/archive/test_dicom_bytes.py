"""The shared byte codec agrees with pydicom and pynetdicom, which encode the same things slowly."""

import io

import pytest
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.valuerep import EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32
from pynetdicom.pdu import A_ABORT_RQ

from archive import dicom_bytes


def _pydicom_encoded(tag: int, vr: str, value, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_data_element(buffer, DataElement(tag, vr, value))
    return buffer.getvalue()


def test_vr_sets_are_the_standard_ones():
    for ours, pydicoms in (
        (dicom_bytes.LONG_VRS, EXPLICIT_VR_LENGTH_32),
        (dicom_bytes.SHORT_VRS, EXPLICIT_VR_LENGTH_16),
    ):
        assert {vr.decode() for vr in ours} == {str(vr) for vr in pydicoms}


@pytest.mark.parametrize(
    ("vr", "value", "raw"),
    [
        ("UI", "1.2.3", dicom_bytes.uid_encode("1.2.3")),
        ("OB", b"\x00\x01", b"\x00\x01"),
        ("UT", "some text", dicom_bytes.text_encode("some text")),
        ("SH", "PACSRECV_1_0", dicom_bytes.text_encode("PACSRECV_1_0")),
    ],
)
def test_explicit_elements_match_pydicom(vr, value, raw):
    ours = dicom_bytes.explicit_element(0x0008, 0x0018, vr.encode(), raw)
    assert ours == _pydicom_encoded(0x00080018, vr, value, implicit=False)


def test_implicit_elements_pad_uids_with_nul_like_pydicom():
    ours = dicom_bytes.implicit_element(0x0000, 0x0002, b"1.2.840.10008.5.1.4.1.1.2")
    assert ours == _pydicom_encoded(0x00000002, "UI", "1.2.840.10008.5.1.4.1.1.2", implicit=True)


def test_uid_values_round_trip_whatever_the_padding():
    assert dicom_bytes.uid_encode("1.23") == b"1.23"
    assert dicom_bytes.uid_encode("1.2.3") == b"1.2.3\0"
    assert dicom_bytes.uid_decode(b"1.2.3\0") == "1.2.3"
    assert dicom_bytes.uid_decode(b"1.2.3 ") == "1.2.3"
    assert dicom_bytes.uid_decode(None) == ""


def test_a_abort_matches_pynetdicom():
    pdu = A_ABORT_RQ()
    pdu.source = 0x02
    pdu.reason_diagnostic = 0x06
    assert dicom_bytes.a_abort(source=0x02, reason=0x06) == pdu.encode()


def test_pdu_and_pdv_headers():
    header = dicom_bytes.PDU_HEADER.pack(dicom_bytes.P_DATA_TF, 0, 10)
    assert header == b"\x04\x00\x00\x00\x00\x0a"
    item = dicom_bytes.PDV_ITEM_HEADER.pack(6, 1, dicom_bytes.PDV_COMMAND | dicom_bytes.PDV_LAST)
    assert io.BytesIO(item).read() == b"\x00\x00\x00\x06\x01\x03"
