"""The DICOM Part 10 file wrapper (PS3.10 7.1): preamble, 'DICM' and the file meta group.

Written by hand rather than through pydicom: the group is a handful of fixed elements, and
building it directly costs microseconds instead of pydicom's fraction of a millisecond per
instance.
"""

from archive.dicom_bytes import UINT32, explicit_element, text_encode, uid_encode

# Our root under the UUID-derived 2.25 arc (PS3.5 B.2): unique without registering an org root.
IMPLEMENTATION_CLASS_UID = "2.25.134334723121356784459245733081972169182"
IMPLEMENTATION_VERSION_NAME = "PACSRECV_1_0"

PREAMBLE = b"\0" * 128 + b"DICM"


def file_header(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """Return preamble, prefix and file meta group for a dataset that follows it as received."""
    body = b"".join(
        (
            explicit_element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            explicit_element(0x0002, 0x0002, b"UI", uid_encode(sop_class_uid)),
            explicit_element(0x0002, 0x0003, b"UI", uid_encode(sop_instance_uid)),
            explicit_element(0x0002, 0x0010, b"UI", uid_encode(transfer_syntax_uid)),
            explicit_element(0x0002, 0x0012, b"UI", uid_encode(IMPLEMENTATION_CLASS_UID)),
            explicit_element(0x0002, 0x0013, b"SH", text_encode(IMPLEMENTATION_VERSION_NAME)),
            explicit_element(0x0002, 0x0016, b"AE", text_encode(source_ae_title.strip())),
        )
    )
    return PREAMBLE + explicit_element(0x0002, 0x0000, b"UL", UINT32.pack(len(body))) + body
