"""Large datasets are received into a file, not memory, and stored bit for bit."""

import pytest
from pynetdicom import dimse_messages

from archive.models import Instance
from receiver.transport import spool
from tests.conftest import sample_file, staging_files
from tests.peers import dataset_bytes, send_files


def test_buffer_stays_in_memory_up_to_the_threshold_then_moves_to_a_file(tmp_path):
    buffer = spool.SpoolBuffer(1000, lambda: tmp_path / "incoming")
    buffer.write(b"a" * 600)
    assert not buffer.rolled
    assert buffer.payload() == b"a" * 600
    buffer.write(b"b" * 600)
    assert buffer.rolled
    assert buffer.payload() is buffer
    with pytest.raises(ValueError):
        buffer.getvalue()
    assert buffer.seek(0, 2) == 1200
    buffer.seek(0)
    assert buffer.read() == b"a" * 600 + b"b" * 600
    buffer.close()


def test_received_c_store_messages_use_the_spool(scp):
    spooling = dimse_messages._MESSAGE_TYPES[0x0001][1]
    assert spooling.__name__ == "C_STORE_RQ"
    assert issubclass(spooling, dimse_messages.C_STORE_RQ)
    message = dimse_messages.DIMSEMessage()
    message.__class__ = spooling  # as pynetdicom's decode_msg does on a C-STORE-RQ command set
    assert isinstance(message.data_set, spool.SpoolBuffer)


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm", "MR_small_jp2klossless.dcm"])
def test_dataset_spooled_to_disk_is_stored_bit_for_bit(scp, storage_dir, name):
    # A threshold below these files' size sends them down the large-instance path.
    spool.install(lambda: storage_dir / ".incoming" / "spool-test", threshold=2048)
    try:
        path = sample_file(name)
        assert send_files(scp.port, [path]) == [0x0000]
    finally:
        spool.install(lambda: storage_dir / ".incoming" / "spool-test")
    instance = Instance.objects.get()
    assert dataset_bytes(storage_dir / instance.path) == dataset_bytes(path)
    assert staging_files(storage_dir) == []
