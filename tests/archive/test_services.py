"""The ingest service against a real database and a real storage directory."""

import fcntl
import os
from contextlib import contextmanager

import pytest
from django.db import connection, connections
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive import unflushed
from archive.exceptions import IndexFailure, StorageFailure
from archive.ingest_hooks import hook_add, hook_remove
from archive.models import Instance, Patient
from archive.services import (
    IngestSettings,
    instance_store,
    series_cache_clear,
    unflushed_repair,
    unflushed_watch_start,
)
from archive.storage import Storage
from tests.conftest import sample_file, staging_files, stored_files
from tests.peers import dataset_bytes, scu, send_files

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def instance_inserts_fail():
    """Make the database itself refuse instance rows, as a broken index would."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("CREATE TABLE index_gone (x)")
            cursor.execute(
                "CREATE TRIGGER instance_insert_fails BEFORE INSERT ON archive_instance "
                "BEGIN INSERT INTO index_gone VALUES (1); END"
            )
            cursor.execute("DROP TABLE index_gone")  # the trigger now fails with "no such table"
        else:
            cursor.execute(
                "CREATE FUNCTION instance_insert_fails() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'index unavailable' USING ERRCODE = 'XX000'; END $$ "
                "LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER instance_insert_fails BEFORE INSERT ON archive_instance "
                "FOR EACH ROW EXECUTE FUNCTION instance_insert_fails()"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER instance_insert_fails"
                + ("" if connection.vendor == "sqlite" else " ON archive_instance")
            )
            if connection.vendor != "sqlite":
                cursor.execute("DROP FUNCTION instance_insert_fails()")


def _store(storage_dir, **overrides):
    path = sample_file("CT_small.dcm")
    ds = dcmread(path, stop_before_pixels=True)
    storage = Storage(storage_dir)
    storage.prepare()
    arguments = {
        "dataset": dataset_bytes(path),
        "transfer_syntax_uid": ExplicitVRLittleEndian,
        "sop_class_uid": ds.SOPClassUID,
        "sop_instance_uid": ds.SOPInstanceUID,
        "calling_ae_title": "UNIT",
        "remote_address": "127.0.0.1",
        "settings": IngestSettings(storage=storage),
    }
    return instance_store(**{**arguments, **overrides})


def test_index_failure_removes_the_published_file(storage_dir):
    with instance_inserts_fail(), pytest.raises(IndexFailure):
        _store(storage_dir)
    assert not Instance.objects.exists()
    assert stored_files(storage_dir) == []
    assert staging_files(storage_dir) == []
    # The rows written before the failing insert were rolled back with it.
    assert not Patient.objects.exists()


def test_storage_failure_leaves_no_row_and_no_partial_file(storage_dir):
    storage_dir.mkdir(parents=True)
    (storage_dir / "1CT1").write_text("a file where the patient folder should be")
    with pytest.raises(StorageFailure):
        _store(storage_dir)
    assert not Instance.objects.exists()
    assert staging_files(storage_dir) == []


def test_index_failure_is_out_of_resources_and_the_next_store_works(scp, storage_dir):
    with instance_inserts_fail():
        assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0xA700]
    assert stored_files(storage_dir) == []
    assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0x0000]
    assert Instance.objects.count() == 1


def test_storage_failure_is_out_of_resources_and_the_association_stays_usable(scp, storage_dir):
    blocker = storage_dir / "1CT1"
    blocker.write_text("a file where the patient folder should be")
    ct = dcmread(sample_file("CT_small.dcm"))
    mr = dcmread(sample_file("MR_small.dcm"))
    ae = scu()
    ae.add_requested_context(ct.SOPClassUID, [ExplicitVRLittleEndian])
    ae.add_requested_context(mr.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    try:
        assert assoc.send_c_store(ct).Status == 0xA700
        assert assoc.send_c_store(mr).Status == 0x0000
        blocker.unlink()
        assert assoc.send_c_store(ct).Status == 0x0000
    finally:
        assoc.release()
    assert Instance.objects.count() == 2
    assert staging_files(storage_dir) == []


def test_series_deleted_while_receiving_is_created_again(scp, storage_dir):
    ct = dcmread(sample_file("CT_small.dcm"))
    assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0x0000]
    # The series (and its instance) go, as an admin deletion would take them; the receiver
    # still remembers the series row.
    Patient.objects.all().delete()
    ct.SOPInstanceUID = ct.SOPInstanceUID + ".2"
    from tests.peers import send_dataset

    assert send_dataset(scp.port, ct) == 0x0000
    instance = Instance.objects.select_related("series").get()
    assert instance.series.series_instance_uid == ct.SeriesInstanceUID
    assert (storage_dir / instance.path).is_file()
    assert staging_files(storage_dir) == []


@pytest.mark.skipif("connection.vendor != 'sqlite'", reason="the writer lock is SQLite's")
def test_index_locked_past_its_timeout_refuses_then_recovers(scp, storage_dir):
    options = connections.settings["default"]["OPTIONS"]
    previous = options.get("timeout", 30)
    options["timeout"] = 1  # read at every write; the receiver threads share this dict
    lock = os.open(f"{connection.settings_dict['NAME']}-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another receiver process stuck mid-write
        assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0xA700]
        assert stored_files(storage_dir) == []
        assert staging_files(storage_dir) == []
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert send_files(scp.port, [sample_file("CT_small.dcm")]) == [0x0000]
    finally:
        os.close(lock)
        options["timeout"] = previous
    assert Instance.objects.count() == 1


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="a database server to cut off")
def test_database_connection_lost_mid_association_recovers_on_the_next_store(scp, storage_dir):
    ct = dcmread(sample_file("CT_small.dcm"))
    ae = scu()
    ae.add_requested_context(ct.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TEST_SCP")
    try:
        assert assoc.send_c_store(ct).Status == 0x0000  # the association's connection is open
        with connection.cursor() as cursor:
            # The server drops every other session to this database, as a restart would.
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ct.SOPInstanceUID = generate_uid()
        first = assoc.send_c_store(ct).Status
        ct.SOPInstanceUID = generate_uid()
        second = assoc.send_c_store(ct).Status
    finally:
        assoc.release()
    # The store that met the dead connection may fail (0xA700) but leaves nothing behind; the
    # next one, on the same association, reconnects and succeeds.
    assert first in (0x0000, 0xA700), hex(first)
    print(f"after the cut: {first:#06x}, then {second:#06x}")
    assert second == 0x0000
    assert Instance.objects.count() == 1 + (first == 0x0000) + 1
    assert len(stored_files(storage_dir)) == Instance.objects.count()
    assert staging_files(storage_dir) == []


def _wal_syncs() -> int:
    """PostgreSQL's count of WAL flushes to disk, this session's own included."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # when it is next idle: now
        cursor.execute("SELECT wal_sync FROM pg_stat_wal")
        return cursor.fetchone()[0]


def _ct_instance() -> tuple[str, bytes]:
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, ds)
    return ds.SOPInstanceUID, encoded.getvalue()


@pytest.mark.parametrize(
    ("index_flush", "hooked", "waits"),
    [(False, False, False), (True, False, True), (False, True, True)],
    ids=["normal", "full", "normal-with-forwarding-hook"],
)
def test_on_postgresql_only_rows_a_repair_can_rebuild_skip_the_wal_flush(
    storage_dir, index_flush, hooked, waits
):
    if connection.vendor != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('fsync'), current_setting('wal_sync_method'), "
            "current_setting('server_version_num')::int"
        )
        fsync, method, version = cursor.fetchone()
    if fsync != "on" or method not in ("fdatasync", "fsync") or not 150000 <= version < 180000:
        # pg_stat_wal.wal_sync counts these methods' flushes, from PostgreSQL 15 to 17.
        pytest.skip(f"this server cannot count WAL flushes ({fsync=}, {method=}, {version=})")
    series_cache_clear()  # series rows an earlier test remembered are gone
    storage = Storage(storage_dir)
    storage.prepare()
    settings = IngestSettings(storage=storage, index_flush=index_flush)
    count = 40
    instances = [_ct_instance() for _ in range(count + 1)]

    def store(uid: str, dataset: bytes) -> None:
        _store(storage_dir, sop_instance_uid=uid, dataset=dataset, settings=settings)

    store(*instances[0])  # the series' rows: an atomic block, flushed as any other
    forwarding = lambda stored: None  # noqa: E731 - an ingest hook that writes nothing
    if hooked:
        hook_add(forwarding)
    try:
        before = _wal_syncs()
        for uid, dataset in instances[1:]:
            store(uid, dataset)
        syncs = _wal_syncs() - before
    finally:
        hook_remove(forwarding)
    assert Instance.objects.count() == count + 1
    # Waiting, each commit flushes the WAL itself; not waiting, PostgreSQL's WAL writer
    # flushes them together, every 200 ms at most.
    if waits:
        assert syncs >= count
    else:
        assert syncs < count // 2


def test_on_postgresql_unflushed_instances_are_forgotten_once_flushed_or_indexed_again(
    storage_dir,
):
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL commits without waiting for the flush")
    series_cache_clear()
    unflushed.reset()
    storage = Storage(storage_dir)
    storage.prepare()
    settings = IngestSettings(storage=storage, index_flush=False)

    def store(count: int) -> list[str]:
        uids = []
        for uid, dataset in (_ct_instance() for _ in range(count)):
            _store(storage_dir, sop_instance_uid=uid, dataset=dataset, settings=settings)
            uids.append(uid)
        return uids

    def remembered() -> list[str]:
        return [entry.sop_instance_uid for entry in unflushed.remembered()]

    unflushed_watch_start()
    uids = store(3)
    # The first made the series' rows, in a flushed transaction; the others did not wait.
    assert remembered() == uids[1:]
    # No crash: the look's own commit waits for the flush, and they are durable after it.
    assert unflushed_repair(storage) == 0
    assert remembered() == []

    # A crash undoes the last commit and, as its recovery does, empties the marker table.
    more = store(2)
    lost = more[1]
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM archive_instance WHERE sop_instance_uid = %s", [lost])
        cursor.execute("DELETE FROM archive_crashmarker")
    assert unflushed_repair(storage) == 1
    restored = Instance.objects.get(sop_instance_uid=lost)
    assert storage.open(restored.path).read()[128:132] == b"DICM"
    # Indexed again, the marker written again; remembered until a look finds them durable.
    assert remembered() == more
    assert unflushed_repair(storage) == 0
    assert remembered() == []
    unflushed.reset()
