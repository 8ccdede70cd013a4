"""SIGKILL in the middle of ingest: every acknowledged instance survives, nothing is half there."""

import copy
import hashlib
import signal
import sqlite3
import threading
import time

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import free_port, sample_file
from tests.peers import scu
from tests.receiver.test_runscp import crash_receiver, runscp, wait_listening


def _sender(port: int, datasets: list, acknowledged: list[str]) -> None:
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
    if not assoc.is_established:
        return
    for ds in datasets:
        try:
            status = assoc.send_c_store(ds)
        except Exception:
            break
        if not assoc.is_established or "Status" not in status:
            break
        if status.Status == 0x0000:
            acknowledged.append(ds.SOPInstanceUID)
    if assoc.is_established:
        assoc.abort()


def test_sigkill_during_ingest_loses_nothing_acknowledged(tmp_path):
    storage, index = tmp_path / "st", tmp_path / "i.db"
    args = ("MY_PACS", "--bind", "127.0.0.1", "--storage-dir", storage, "--index-db", index)
    base = dcmread(sample_file("CT_small.dcm"))
    batches = []
    for _ in range(3):
        batch = []
        for _ in range(150):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            batch.append(ds)
        batches.append(batch)

    port = free_port()
    process = runscp(port, *args)
    wait_listening(port, process)
    acknowledged: list[str] = []
    senders = [
        threading.Thread(target=_sender, args=(port, batch, acknowledged)) for batch in batches
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 90 and time.monotonic() < deadline:
        time.sleep(0.01)
    crash_receiver(process)
    for sender in senders:
        sender.join()
    assert 90 <= len(acknowledged) < 450  # killed in the middle

    # Every acknowledged instance is indexed, and its file is complete with the indexed hash.
    with sqlite3.connect(index) as db:
        rows = dict(
            db.execute("SELECT sop_instance_uid, path || '|' || sha256 FROM archive_instance")
        )
    for uid in acknowledged:
        path, sha256 = rows[uid].split("|")
        assert hashlib.sha256((storage / path).read_bytes()).hexdigest() == sha256
    # No partial file under a final name: every file there is a complete dataset.
    for path in storage.rglob("*.dcm"):
        if ".incoming" not in path.parts:
            assert dcmread(path).PixelData == base.PixelData

    # A restart clears the staging area; resending everything completes the archive.
    port = free_port()
    process = runscp(port, *args)
    wait_listening(port, process)
    assert not [p for p in (storage / ".incoming").rglob("*") if p.is_file()]
    everything: list[str] = []
    _sender(port, [ds for batch in batches for ds in batch], everything)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert len(everything) == 450
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT count(*) FROM archive_instance").fetchone() == (450,)
    assert len([p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts]) == 450
