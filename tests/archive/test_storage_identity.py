"""The index knows its storage: a marker in the storage directory, its identity in the index,
refused starts on the wrong storage, `verifystorage --relocate`, and accurate resend logs."""

import logging
import shutil
import signal
import sqlite3
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from pydicom import dcmread

from archive.exceptions import StorageMismatch
from archive.models import Instance, StorageLocation
from archive.services import IngestSettings, instance_store
from archive.storage import MARKER, Storage
from archive.storage_identity import storage_identity_bind
from tests.conftest import free_port, sample_file
from tests.peers import dataset_bytes, send_files
from tests.receiver.test_runscp import runscp, wait_listening

pytestmark = pytest.mark.django_db(transaction=True)


def store_one(storage: Storage, name: str = "CT_small.dcm") -> Instance:
    path = sample_file(name)
    meta = dcmread(path, stop_before_pixels=True)
    result = instance_store(
        dataset=dataset_bytes(path),
        transfer_syntax_uid=str(meta.file_meta.TransferSyntaxUID),
        sop_class_uid=str(meta.SOPClassUID),
        sop_instance_uid=str(meta.SOPInstanceUID),
        calling_ae_title="TEST_SCU",
        remote_address="127.0.0.1",
        settings=IngestSettings(storage=storage),
    )
    return Instance.objects.get(pk=result.instance_id)


def prepared(root: Path) -> Storage:
    storage = Storage(root)
    storage.prepare()
    return storage


def test_first_start_writes_the_marker_and_records_the_storage(tmp_path):
    storage = prepared(tmp_path / "a")
    line = storage_identity_bind(storage=storage, index_label="pacs.db")
    assert "recorded as the storage of index pacs.db" in line
    location = StorageLocation.objects.get()
    assert location.directory == str(storage.root)
    assert storage.marker_read()["identity"] == str(location.identity)
    assert storage_identity_bind(storage=storage, index_label="pacs.db").endswith(
        "is the index's storage"
    )


def test_non_empty_index_refuses_another_storage_with_one_line_saying_how(tmp_path):
    first = prepared(tmp_path / "a")
    storage_identity_bind(storage=first, index_label="/data/pacs.db")
    store_one(first)
    elsewhere = prepared(tmp_path / "b")
    with pytest.raises(StorageMismatch) as refused:
        storage_identity_bind(storage=elsewhere, index_label="/data/pacs.db")
    message = str(refused.value)
    assert "\n" not in message
    for expected in ("/data/pacs.db", str(first.root), str(elsewhere.root), "(1 instance)"):
        assert expected in message
    assert f"verifystorage --relocate {elsewhere.root}" in message
    assert elsewhere.marker_read() is None  # nothing recorded for the wrong storage
    assert StorageLocation.objects.get().directory == str(first.root)


def test_storage_of_another_index_is_refused(tmp_path):
    mine = prepared(tmp_path / "mine")
    storage_identity_bind(storage=mine, index_label="i.db")
    store_one(mine)
    theirs = prepared(tmp_path / "theirs")
    theirs.marker_write({"identity": "00000000-0000-4000-8000-000000000001"})
    with pytest.raises(StorageMismatch, match="has another index's marker"):
        storage_identity_bind(storage=theirs, index_label="i.db")


def test_a_directory_moved_with_its_marker_is_recognised_and_recorded(tmp_path):
    storage = prepared(tmp_path / "a")
    storage_identity_bind(storage=storage, index_label="i.db")
    instance = store_one(storage)
    moved = tmp_path / "moved"
    shutil.move(storage.root, moved)
    line = storage_identity_bind(storage=prepared(moved), index_label="i.db")
    assert f"moved from {storage.root}" in line
    assert StorageLocation.objects.get().directory == str(moved)
    assert (moved / instance.path).is_file()


def test_an_index_from_before_identities_is_checked_by_its_newest_files(tmp_path):
    storage = prepared(tmp_path / "a")
    store_one(storage)  # no StorageLocation row, no marker: an index from an older version
    with pytest.raises(StorageMismatch, match="none of its newest files"):
        storage_identity_bind(storage=prepared(tmp_path / "empty"), index_label="i.db")
    assert "recorded" in storage_identity_bind(storage=storage, index_label="i.db")


def test_an_empty_index_takes_any_storage(tmp_path):
    storage_identity_bind(storage=prepared(tmp_path / "a"), index_label="i.db")
    other = prepared(tmp_path / "b")
    storage_identity_bind(storage=other, index_label="i.db")
    assert StorageLocation.objects.get().directory == str(other.root)


def test_relocate_checks_the_files_then_records_the_move(tmp_path):
    old = prepared(tmp_path / "old")
    storage_identity_bind(storage=old, index_label="i.db")
    store_one(old)
    new = tmp_path / "new"
    new.mkdir()
    out = StringIO()
    with pytest.raises(CommandError, match="not relocated: 1 of 1 indexed files"):
        call_command("verifystorage", "--relocate", str(new), stdout=out)
    assert "missing: " in out.getvalue()
    assert StorageLocation.objects.get().directory == str(old.root)

    for path in old.root.rglob("*.dcm"):
        target = new / path.relative_to(old.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    call_command("verifystorage", "--relocate", str(new), stdout=out)
    assert f"the index's storage is now {new}" in out.getvalue()
    assert "orphan files (not indexed): 0" in out.getvalue()  # the marker is not an orphan
    assert (new / MARKER).is_file()
    assert "is the index's storage" in storage_identity_bind(
        storage=prepared(new), index_label="i.db"
    )


def test_runscp_on_a_moved_storage_directory_refuses_with_one_line(tmp_path):
    """The issue's case: index kept, storage.directory changed to a new folder."""
    index, first, second = tmp_path / "pacs.db", tmp_path / "received", tmp_path / "new-folder"
    port = free_port()
    options = ["--bind", "127.0.0.1", "--index-db", index]
    process = runscp(port, "MY_PACS", "--storage-dir", first, *options)
    wait_listening(port, process)
    assert send_files(port, [sample_file("CT_small.dcm")], called="MY_PACS") == [0]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    refused = runscp(port, "MY_PACS", "--storage-dir", second, *options)
    output, _ = refused.communicate(timeout=60)
    assert refused.returncode != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert f"index {index} describes storage {first} (1 instance)" in lines[0]
    assert f"verifystorage --relocate {second}" in lines[0]
    with sqlite3.connect(index) as db:
        assert db.execute("SELECT directory FROM archive_storagelocation").fetchall() == [
            (str(first),)
        ]


def test_resend_of_a_lost_file_logs_one_accurate_line(scp, storage_dir, caplog):
    """`keep` never overwrites: a resend of identical bytes whose file was gone is restored."""
    path = sample_file("CT_small.dcm")
    assert send_files(scp.port, [path]) == [0]
    instance = Instance.objects.get()
    (storage_dir / instance.path).unlink()
    caplog.set_level(logging.INFO, logger="receiver")
    with caplog.at_level(logging.INFO, logger="archive"):
        assert send_files(scp.port, [path]) == [0]
        # The association's own line counts the restore as a store: a file was written.
        deadline = time.monotonic() + 10
        while not (
            ended := [r.getMessage() for r in caplog.records if "released:" in r.getMessage()]
        ):
            assert time.monotonic() < deadline, "no association end line"
            time.sleep(0.05)
    assert "released: 1 stored, 0 duplicate(s)" in ended[-1]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("archive")]
    assert lines == [
        f"Instance {instance.sop_instance_uid} received again and its stored file was gone: "
        "restored"
    ]
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(path)
    assert Instance.objects.get().sha256 == instance.sha256  # the same bytes written again
