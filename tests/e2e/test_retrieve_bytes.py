"""C-MOVE and C-GET send each stored data set as it is on disk, bit for bit, in PDUs of the
receiver's size, on a socket with Nagle's algorithm off (DCMTK peers, loopback)."""

import socket
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage

from routing.direct import DirectStoreAssociation
from routing.models import RemoteAE
from routing.scu import Peer, store_contexts
from tests.conftest import sample_file, stored_files
from tests.peers import run_dcmtk, send_files
from tests.routing.test_forwarding import StoreSCP

SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]


def _data_set(path: Path) -> tuple[str, bytes]:
    """The SOP instance UID and the bytes after the file meta group."""
    with path.open("rb") as stream:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        return str(meta.MediaStorageSOPInstanceUID), stream.read()


def _large_instance(folder: Path) -> Path:
    """A CT of 1100 x 1100 x 16 bits (2.4 MB): several 1 MB blocks, many 16 KB PDUs."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 1100
    ds.PixelData = bytes(range(256)) * (1100 * 1100 * 2 // 256) + b"\x01" * (1100 * 1100 * 2 % 256)
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def archive(start_scp, storage_dir, tmp_path):
    server = start_scp()
    paths = [sample_file(name) for name in SAMPLES] + [_large_instance(tmp_path)]
    assert send_files(server.port, paths) == [0] * len(paths)
    stored = dict(_data_set(path) for path in stored_files(storage_dir))
    assert len(stored) == len(paths)
    return server, stored


def _study_keys(path: Path) -> list[str]:
    return [
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={dcmread(path).StudyInstanceUID}",
    ]


def test_move_to_storescp_sends_every_stored_data_set_bit_for_bit(archive, tmp_path):
    server, stored = archive
    # 16 KB PDUs, every syntax accepted (the JPEG 2000 instance goes as stored).
    destination = StoreSCP(tmp_path / "moved", "-pdu", "16384", "+xa")
    RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=destination.port)
    try:
        for name in ("CT_small.dcm", "JPEG2000.dcm"):  # the large CT shares CT_small's study
            result = run_dcmtk(
                "movescu", "-S", "-aet", "MOVER", "-aec", "TEST_SCP", "-aem", "DEST",
                *_study_keys(sample_file(name)), "127.0.0.1", server.port,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        received = dict(_data_set(path) for path in destination.received().values())
    finally:
        destination.stop()
    expected = {uid: data for uid, data in stored.items() if uid in received}
    assert len(received) == 3
    assert received == expected


def test_get_sends_every_stored_data_set_bit_for_bit(archive, tmp_path):
    server, stored = archive
    out = tmp_path / "got"
    out.mkdir()
    result = run_dcmtk(
        "getscu", "-S", "-aet", "GETTER", "-aec", "TEST_SCP", "-pdu", "16384", "+B", "-od", out,
        *_study_keys(sample_file("CT_small.dcm")), "127.0.0.1", server.port,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    received = dict(_data_set(path) for path in out.iterdir())
    assert len(received) == 2  # CT_small and the large CT
    assert received == {uid: stored[uid] for uid in received}


def test_the_association_we_open_for_a_move_has_nagle_off(tmp_path):
    destination = StoreSCP(tmp_path / "dest")
    try:
        sender = DirectStoreAssociation(
            Peer("DEST", "127.0.0.1", destination.port),
            calling_ae_title="TEST_SCP",
            contexts=store_contexts({CTImageStorage: frozenset(["1.2.840.10008.1.2.1"])}),
        ).open()
        try:
            assert sender.sock is not None
            assert sender.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            sender.release()
    finally:
        destination.stop()
