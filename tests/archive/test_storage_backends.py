"""The storage service on both backends: a directory, and a bucket on an S3-compatible server
(moto's server mode on loopback). Ingest, resends, overwrite, restore of a lost file, deletion,
reading back and verification behave the same on both."""

import hashlib
import os
import socket
import threading
import time

import pytest
from django.db import connections
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from archive.deletion import index_delete
from archive.exceptions import IndexFailure, StorageFailure
from archive.models import Instance, Patient
from archive.services import IngestSettings, instance_store, series_cache_clear
from archive.storage import FilesystemStorage, S3Storage, Storage, pid_alive
from archive.verification import storage_verify
from tests.archive.test_services import instance_inserts_fail
from tests.conftest import free_port, sample_file

pytestmark = pytest.mark.django_db(transaction=True)


def _incoming_files(storage: Storage) -> list:
    return [p for p in storage.incoming.rglob("*") if p.is_file()]


def _store(
    storage: Storage, *, payload: bytes | None = None, duplicates: str = "keep", **ds_changes
):
    path = sample_file("CT_small.dcm")
    ds = dcmread(path)
    for keyword, value in ds_changes.items():
        setattr(ds, keyword, value)
    # The dataset without its file meta group, as it arrives over the network.
    encoded = payload or dataset_bytes_of(ds)
    return instance_store(
        dataset=encoded,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        calling_ae_title="UNIT",
        remote_address="127.0.0.1",
        settings=IngestSettings(storage=storage, duplicates=duplicates),
    )


def dataset_bytes_of(ds) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_the_factory_picks_the_backend(storage):
    assert isinstance(storage, FilesystemStorage | S3Storage)
    assert isinstance(storage, Storage)


def test_a_stored_instance_reads_back_bit_for_bit(storage):
    result = _store(storage)
    row = Instance.objects.get()
    assert result.outcome == "stored"
    assert list(storage.names()) == [row.path]
    assert storage.exists(row.path)
    assert storage.size(row.path) == row.size
    with storage.open(row.path) as fh:
        data = fh.read()
    assert hashlib.sha256(data).hexdigest() == row.sha256
    assert data[128:132] == b"DICM"
    assert _incoming_files(storage) == []  # staging left clean


def test_an_identical_resend_is_acknowledged_once(storage):
    first = _store(storage)
    again = _store(storage)
    assert (first.outcome, again.outcome) == ("stored", "identical")
    assert len(list(storage.names())) == 1
    assert Instance.objects.count() == 1


def test_different_content_is_kept_or_overwritten_as_configured(storage):
    _store(storage)
    original = Instance.objects.get().sha256
    kept = _store(storage, PatientName="Other^Name")
    assert kept.outcome == "kept"
    assert Instance.objects.get().sha256 == original
    overwritten = _store(storage, PatientName="Other^Name", duplicates="overwrite")
    assert overwritten.outcome == "overwritten"
    row = Instance.objects.get()
    assert row.sha256 != original
    with storage.open(row.path) as fh:
        assert b"Other^Name" in fh.read()
    assert len(list(storage.names())) == 1
    assert _incoming_files(storage) == []


def test_a_lost_file_is_restored_by_a_resend(storage):
    _store(storage)
    row = Instance.objects.get()
    storage.remove(row.path)
    assert not storage.exists(row.path)
    _store(storage)
    assert storage.exists(row.path)
    assert storage_verify(storage).consistent


def test_an_index_failure_leaves_nothing_stored(storage):
    with instance_inserts_fail(), pytest.raises(IndexFailure):
        _store(storage)
    assert Instance.objects.count() == 0
    assert list(storage.names()) == []
    assert _incoming_files(storage) == []


def test_deletion_removes_rows_and_files_together(storage):
    _store(storage)
    _store(storage, SOPInstanceUID="1.2.826.0.1.3680043.9.7133.3.1")
    assert len(list(storage.names())) == 2
    counts = index_delete(Patient.objects.all(), storage)
    assert counts.instances == 2
    assert list(storage.names()) == []
    assert Instance.objects.count() == 0
    assert storage_verify(storage).consistent


def test_verify_repair_indexes_orphans_and_drops_rows_of_lost_files(storage):
    _store(storage)
    lost = Instance.objects.get().path
    # An orphan: published without a row, as a crash between upload and commit leaves it.
    with open(sample_file("MR_small.dcm"), "rb") as fh:
        staged = storage.stage([fh.read()])
    storage.publish(staged, "orphans/MR_small.dcm")
    storage.remove(lost)
    report = storage_verify(storage)
    assert report.missing == [lost]
    assert report.orphans == ["orphans/MR_small.dcm"]
    repaired = storage_verify(storage, repair=True)
    assert repaired.consistent
    assert Instance.objects.get().path == "orphans/MR_small.dcm"
    assert storage_verify(storage).consistent


def test_names_that_leave_the_storage_are_refused(storage):
    for name in ("../outside.dcm", "/etc/passwd", ".incoming/x.dcm", ""):
        with pytest.raises(StorageFailure):
            storage.open(name)


def test_a_large_instance_goes_up_in_checked_parts(s3_environment, tmp_path, monkeypatch):
    from archive.storage import s3

    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 2**20)
    monkeypatch.setattr(s3, "PART_SIZE", 5 * 2**20)  # S3's smallest part
    bucket = s3_environment.bucket_new()
    storage = Storage(f"s3://{bucket}/big", staging_dir=tmp_path / "staging")
    storage.prepare()
    payload = bytes(range(256)) * (12 * 2**20 // 256)
    staged = storage.stage([payload[: 2**20], payload[2**20 :]])
    storage.publish(staged, "a/big.dcm")
    assert s3_environment.keys(bucket) == ["big/a/big.dcm"]
    assert storage.size("a/big.dcm") == len(payload)
    with storage.open("a/big.dcm") as fh:
        assert fh.read() == payload
    assert not staged.path.exists()


def test_an_object_is_read_from_the_bucket_as_it_is_read(s3_environment, tmp_path):
    """S3Storage.open streams: reads and seeks anywhere give the object's bytes, and a read
    after the object was replaced fails instead of mixing two versions (ranged GETs pinned to
    the ETag opened; a copy downloaded at open would have gone on with the old bytes)."""
    bucket = s3_environment.bucket_new()
    storage = Storage(f"s3://{bucket}/read", staging_dir=tmp_path / "staging")
    storage.prepare()
    payload = hashlib.sha256(b"seed").digest() * (12 * 2**20 // 32)
    storage.publish(storage.stage([payload]), "a/big.dcm")
    with storage.open("a/big.dcm") as fh:
        assert fh.read(132) == payload[:132]
        for offset in (5 * 2**20 + 7, 11, 12 * 2**20 - 3, 2**20):
            assert fh.seek(offset) == offset
            assert fh.read(4096) == payload[offset : offset + 4096]
        assert fh.seek(-10, 2) == len(payload) - 10
        assert fh.read() == payload[-10:]
        assert fh.read(1) == b""
        fh.seek(0)
        assert hashlib.sha256(fh.read()).digest() == hashlib.sha256(payload).digest()

    with storage.open("a/big.dcm") as fh:
        assert fh.read(16) == payload[:16]
        s3_environment.client().put_object(
            Bucket=bucket, Key="read/a/big.dcm", Body=b"another object" * 1000
        )
        fh.seek(9 * 2**20)
        with pytest.raises(StorageFailure, match="replaced while being read"):
            fh.read(16)
    with pytest.raises(FileNotFoundError):
        storage.open("a/none.dcm")


def test_sha256_checksums_can_replace_content_md5(s3_environment, tmp_path):
    bucket = s3_environment.bucket_new()
    storage = Storage(f"s3://{bucket}", staging_dir=tmp_path / "staging", checksum="sha256")
    storage.prepare()
    _store(storage)
    assert storage_verify(storage).consistent
    assert s3_environment.keys(bucket) == [Instance.objects.get().path]


def test_a_missing_bucket_is_named_at_start(s3_environment, tmp_path):
    storage = Storage("s3://no-such-bucket-here/x", staging_dir=tmp_path / "staging")
    with pytest.raises(StorageFailure, match="bucket no-such-bucket-here does not exist"):
        storage.prepare()


def test_an_unreachable_endpoint_is_named_at_start(s3_environment, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage = Storage("s3://anything/x", staging_dir=tmp_path / "staging")
    with pytest.raises(StorageFailure, match="unreachable \\(AWS_ENDPOINT_URL\\)"):
        storage.prepare()


def test_missing_credentials_are_named_at_start(s3_environment, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = Storage("s3://anything/x", staging_dir=tmp_path / "staging")
    with pytest.raises(StorageFailure, match="no credentials"):
        storage.prepare()


def test_a_bad_location_is_refused(tmp_path):
    with pytest.raises(StorageFailure, match=r"storage\.directory"):
        Storage("s3:///prefix-only", staging_dir=tmp_path)


def test_an_upload_in_progress_never_holds_up_another_instances_commit(s3_environment, tmp_path):
    # Real threads, a real bucket on moto: the first instance's upload is held (just before it
    # sends the PUT) until a second instance, of another patient, has been
    # stored and committed meanwhile. With the upload inside SQLite's one write lock, the
    # second would wait for it. (On PostgreSQL the upload runs in the index transaction, whose
    # new patient, study and series rows an instance of the same new series waits for: README,
    # "Object storage".)
    series_cache_clear()  # series rows remembered from earlier tests are gone
    storage = Storage(f"s3://{s3_environment.bucket_new()}/p", staging_dir=tmp_path / "staging")
    storage.prepare()
    first_uid = "1.2.826.0.1.3680043.9.7133.5.1"
    held, release = threading.Event(), threading.Event()

    put = storage._put

    def hold(staged, key):
        if first_uid in key and not release.is_set():
            held.set()
            release.wait(30)
        put(staged, key)

    storage._put = hold
    outcomes: dict[str, object] = {}

    def store(uid: str, **changes: str) -> None:
        try:
            outcomes[uid] = _store(storage, SOPInstanceUID=uid, **changes).outcome
        except Exception as exc:
            outcomes[uid] = exc
        finally:
            connections.close_all()

    first = threading.Thread(target=store, args=(first_uid,))
    first.start()
    try:
        assert held.wait(10), outcomes
        second = threading.Thread(
            target=store,
            args=("1.2.826.0.1.3680043.9.7133.5.2",),
            kwargs={
                "PatientID": "OTHER",
                "StudyInstanceUID": "1.2.826.0.1.3680043.9.7133.6.1",
                "SeriesInstanceUID": "1.2.826.0.1.3680043.9.7133.6.2",
            },
        )
        second.start()
        second.join(15)
        assert not second.is_alive(), "the second instance waited for the first one's upload"
        assert outcomes == {"1.2.826.0.1.3680043.9.7133.5.2": "stored"}
        assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [
            "1.2.826.0.1.3680043.9.7133.5.2"
        ]
    finally:
        release.set()
        first.join(30)
    assert outcomes[first_uid] == "stored"
    assert Instance.objects.count() == 2
    assert len(list(storage.names())) == 2


def test_a_resend_racing_the_upload_of_its_first_copy_is_settled_once(s3_environment, tmp_path):
    # The same instance from two associations at once, the first one's upload held: the second
    # waits for it (the instance's own lock), then is an identical resend; one row, one object.
    series_cache_clear()  # series rows remembered from earlier tests are gone
    storage = Storage(f"s3://{s3_environment.bucket_new()}/p", staging_dir=tmp_path / "staging")
    storage.prepare()
    held, release = threading.Event(), threading.Event()

    put = storage._put

    def hold(staged, key):
        if not release.is_set():
            held.set()
            release.wait(30)
        put(staged, key)

    storage._put = hold
    outcomes: list[object] = []

    def store() -> None:
        try:
            outcomes.append(_store(storage).outcome)
        except Exception as exc:
            outcomes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=store) for _ in range(2)]
    threads[0].start()
    assert held.wait(10)
    threads[1].start()
    time.sleep(0.5)
    assert outcomes == []  # the second waits for the first one's instance lock
    release.set()
    for thread in threads:
        thread.join(30)
    assert sorted(map(str, outcomes)) == ["identical", "stored"]
    assert Instance.objects.count() == 1
    assert len(list(storage.names())) == 1


def test_staging_files_of_a_zombie_process_are_removed(tmp_path):
    """A worker killed with its parent stays a zombie where PID 1 reaps nothing (a container):
    its pid answers kill(pid, 0), yet its staging files are stale."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pid, 0)  # not reaped yet: still in the process table, as a zombie
        assert not pid_alive(pid)
        assert pid_alive(os.getpid())
        dead = tmp_path / ".incoming" / f"{socket.gethostname()}.{pid}"
        dead.mkdir(parents=True)
        (dead / "1.part").write_bytes(b"half a dataset")
        assert FilesystemStorage(tmp_path).prepare() == 1
        assert not dead.exists()
    finally:
        os.waitpid(pid, 0)


def test_staging_files_under_this_process_id_from_an_earlier_start_are_removed(tmp_path):
    """A container gives its receiver the same pid at every start: what a crashed one staged is
    in the folder the next one takes as its own. Before its first prepare(), nothing there is
    this process's; after it, the folder is (a later prepare() leaves it alone)."""
    own = tmp_path / ".incoming" / f"{socket.gethostname()}.{os.getpid()}"
    own.mkdir(parents=True)
    (own / "1.part").write_bytes(b"half a dataset")
    assert FilesystemStorage(tmp_path).prepare() == 1
    assert list(own.iterdir()) == []
    (own / "2.part").write_bytes(b"being written")
    assert FilesystemStorage(tmp_path).prepare() == 0
    assert [p.name for p in own.iterdir()] == ["2.part"]
