"""archive.dimse_codec's framing of a C-STORE-RQ, read back from a real socket pair."""

import socket
import threading
from io import BytesIO

import pytest

from archive.dicom_bytes import PDU_HEADER, PDV_ITEM_HEADER
from archive.dimse_codec import message_send, store_request


def _pdus(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(message control header, PDU length, PDV data) of each P-DATA-TF (one PDV each)."""
    pdus, offset = [], 0
    while offset < len(raw):
        kind, _, length = PDU_HEADER.unpack_from(raw, offset)
        assert kind == 0x04
        item_length, context_id, control = PDV_ITEM_HEADER.unpack_from(raw, offset + 6)
        assert context_id == 5 and item_length == length - 4
        pdus.append((control, length, raw[offset + 12 : offset + 6 + length]))
        offset += 6 + length
    assert offset == len(raw)
    return pdus


def _send(
    data: bytes, peer_maximum: int, *, send_buffer: int | None = None
) -> list[tuple[int, int, bytes]]:
    ours, theirs = socket.socketpair()
    if send_buffer is not None:  # a small buffer: sendmsg() writes part of what it is given
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    received = bytearray()

    def read() -> None:
        while chunk := theirs.recv(65536):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    command = store_request(sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4", message_id=7)
    stream = BytesIO(b"meta" + data)
    stream.seek(4)
    with ours:
        message_send(ours, 5, command, stream, peer_maximum, len(data))
        ours.shutdown(socket.SHUT_WR)
    reader.join(10)
    theirs.close()
    pdus = _pdus(bytes(received))
    assert pdus[0][0] == 0x03 and pdus[0][2] == command  # the command set, last fragment
    return pdus


@pytest.mark.parametrize(
    ("size", "peer_maximum"),
    [(0, 16384), (10, 16384), (16378, 16384), (16379, 16384), (3 * 2**20 + 7, 16384),
     (3 * 2**20 + 7, 0)],
)  # fmt: skip
def test_data_set_arrives_whole_in_pdus_no_longer_than_the_peer_takes(size, peer_maximum):
    data = bytes(i % 251 for i in range(size))
    pdus = _send(data, peer_maximum, send_buffer=4096)[1:]
    assert b"".join(fragment for _, _, fragment in pdus) == data
    assert [control for control, _, _ in pdus] == [0x00] * (len(pdus) - 1) + [0x02]
    assert all(length <= (peer_maximum or 131072) for _, length, _ in pdus)
    if size:
        assert all(len(fragment) for _, _, fragment in pdus)


def test_a_file_shorter_than_announced_is_refused():
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(ValueError, match="ended early"):
        message_send(ours, 5, b"", BytesIO(b"short"), 16384, 100)
