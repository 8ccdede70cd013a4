"""A forwarding rule with `deidentify: true` sends de-identified copies (dicognito) to DCMTK
storescp: pseudonyms consistent per patient across studies, a restart and separate forwarder
processes; pixel data unchanged; the stored files untouched. Real processes (runscp), a real
SQLite index file."""

import copy
import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.storage import Storage
from tests.conftest import free_port, sample_file
from tests.e2e.test_forwarding_crashes import queue
from tests.peers import eventually, run_dcmtk
from tests.receiver.test_runscp import runscp, stop, wait_listening
from tests.routing.test_forwarding import StoreSCP

pytestmark = pytest.mark.slow


def write_study(folder: Path, count: int) -> list[Path]:
    """`count` instances of a new study of the sample's patient, with a private element."""
    base = dcmread(sample_file("CT_small.dcm"))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientComments = "lives next to the hospital"
        block = ds.private_block(0x0011, "ACME private", create=True)
        block.add_new(0x01, "LO", "original name in a private tag")
        path = folder / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def config(tmp_path: Path, dest_port: int) -> Path:
    path = tmp_path / "store_scp.yaml"
    path.write_text(
        f"storage: {{directory: {tmp_path / 'received'}}}\n"
        f"database: {{path: {tmp_path / 'index.db'}}}\n"
        f"remote_aes:\n  - {{ae_title: DEST, host: 127.0.0.1, port: {dest_port}}}\n"
        "forwarding:\n  - {destination: DEST, deidentify: true}\n"
    )
    return path


def stored_sha256(tmp_path: Path) -> dict[str, str]:
    """SOP instance UID → sha256 of its stored file, read through the storage service."""
    with sqlite3.connect(tmp_path / "index.db") as db:
        rows = db.execute("SELECT sop_instance_uid, path FROM archive_instance").fetchall()
    storage = Storage(tmp_path / "received")
    result = {}
    for uid, path in rows:
        with storage.open(path) as stream:
            result[uid] = hashlib.sha256(stream.read()).hexdigest()
    return result


def receive_and_forward(
    tmp_path: Path,
    dest_port: int,
    paths: list[Path],
    *,
    sent: int,
    received: Callable[[], None] = lambda: None,
) -> None:
    """One runscp process: receives `paths`, calls `received()`, forwards until `sent` rows
    are sent, stops."""
    port = free_port()
    process = runscp(
        port, "MY_PACS", "--config", config(tmp_path, dest_port), "--bind", "127.0.0.1"
    )
    try:
        wait_listening(port, process)
        result = run_dcmtk(
            "storescu", "-aet", "MODALITY", "-aec", "MY_PACS", "127.0.0.1", port, *paths
        )
        assert result.returncode == 0, result.stderr
        received()
        index = tmp_path / "index.db"
        assert eventually(lambda: queue(index) == {"sent": sent}, timeout=60), queue(index)
    finally:
        code, output = stop(process)
    assert code == 0, output


def test_deidentifying_rule_sends_consistent_pseudonyms_and_keeps_the_stored_files(tmp_path):
    dest_port = free_port()
    first = write_study(tmp_path / "first", 2)
    second = write_study(tmp_path / "second", 1)
    originals = [dcmread(p) for p in first + second]
    original_uids = {
        str(ds[keyword].value)
        for ds in originals
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        )
    }
    before: dict[str, str] = {}
    dests: list[StoreSCP] = []

    def destination_up() -> None:
        # The destination was down so far: nothing was sent yet.
        before.update(stored_sha256(tmp_path))
        dests.append(StoreSCP(tmp_path / "dest", port=dest_port))

    try:
        # Two runscp processes, one after the other: the second study is de-identified by a
        # process that never saw the first.
        receive_and_forward(tmp_path, dest_port, first, sent=2, received=destination_up)
        receive_and_forward(tmp_path, dest_port, second, sent=3)
        received = [dcmread(p) for p in dests[0].received().values()]
    finally:
        for dest in dests:
            dest.stop()
    assert len(received) == 3
    after = stored_sha256(tmp_path)
    assert len(after) == 3
    assert len(before) == 2
    assert {uid: after[uid] for uid in before} == before  # the stored files were not touched
    # The stored copies are still the originals.
    assert set(after) == {str(ds.SOPInstanceUID) for ds in originals}

    patient_name, patient_id = str(originals[0].PatientName), originals[0].PatientID
    for ds in received:
        assert str(ds.PatientName) != patient_name
        assert ds.PatientID != patient_id
        assert patient_id not in ds.PatientID
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert str(ds[keyword].value) not in original_uids
        assert str(ds.FrameOfReferenceUID) not in original_uids
        assert ds.SOPClassUID == originals[0].SOPClassUID
        assert "PatientComments" not in ds
        assert not any(element.tag.is_private for element in ds)
        assert "DICOGNITO" in str(ds.DeidentificationMethod)
        assert ds.StudyDate != originals[0].StudyDate  # shifted
    # One pseudonym per patient, across both studies and both processes.
    assert len({str(ds.PatientName) for ds in received}) == 1
    assert len({ds.PatientID for ds in received}) == 1
    # Studies and series stay grouped as they were; instances stay distinct.
    by_study: dict[str, int] = {}
    for ds in received:
        by_study[str(ds.StudyInstanceUID)] = by_study.get(str(ds.StudyInstanceUID), 0) + 1
    assert sorted(by_study.values()) == [1, 2]
    assert len({str(ds.SOPInstanceUID) for ds in received}) == 3
    # Pixel data unchanged.
    pixels = {ds.PixelData for ds in originals}
    assert len(pixels) == 1
    assert all(ds.PixelData in pixels for ds in received)

    with sqlite3.connect(tmp_path / "index.db") as db:
        details = [
            json.loads(detail)
            for (detail,) in db.execute("SELECT detail FROM audit_auditevent WHERE action='export'")
        ]
    assert details
    assert all(detail.get("deidentified") is True for detail in details)
    assert sum(detail["forwarded"] for detail in details) == 3
