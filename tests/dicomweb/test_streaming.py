"""A large instance is sent and received with memory flat: WADO-RS reads it a chunk at a time
from the storage service, STOW-RS spools its part to disk (tracemalloc, in process)."""

import io
import tracemalloc

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from archive.header import HEADER_PREFIX
from archive.models import Instance
from dicomweb.stow import stow_store
from dicomweb.views import _instances_body
from tests.conftest import sample_file

SIZE = 64 * 2**20


def _large_part10() -> bytes:
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    frames = SIZE // (128 * 128 * 2)
    ds.NumberOfFrames = frames
    ds.PixelData = np.zeros((frames, 128, 128), dtype="<i2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_64_mb_instance_is_stored_and_sent_with_memory_flat(transactional_db, storage_dir):
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + _large_part10() + b"\r\n--B--\r\n"
    stream = io.BytesIO(body)
    del body
    tracemalloc.start()
    try:
        outcome = stow_store(body=stream, boundary="B", study_uid=None, address="test")
        stow_peak = tracemalloc.get_traced_memory()[1]
        assert len(outcome.stored) == 1, outcome.failed
        tracemalloc.reset_peak()
        row = Instance.objects.get()
        rows = [(row.path, row.sop_instance_uid, row.transfer_syntax_uid, "")]
        sent = 0
        for chunk in _instances_body(rows, "*", "XYZ"):
            sent += len(chunk)
        wado_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    mib = 2**20
    print(
        f"64 MB instance: STOW peak {stow_peak / mib:.1f} MiB, WADO peak {wado_peak / mib:.1f} MiB"
    )
    assert sent > SIZE
    # The ingest service reads the header from at most HEADER_PREFIX bytes (as for C-STORE);
    # beyond that, only the spool's memory part and a few chunks: bounded, whatever the size.
    assert stow_peak < HEADER_PREFIX + 8 * mib
    assert wado_peak < 4 * 2**20
