"""A large instance is sent and received with memory flat: WADO-RS reads it a chunk at a time
from the storage service (and decompresses it a frame at a time), STOW-RS spools its part to
disk (tracemalloc, in process)."""

import io
import tempfile
import tracemalloc

import numpy as np
import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from archive.header import HEADER_PREFIX
from archive.models import Instance
from dicomweb.instances import explicit_little, explicit_little_copy, metadata_json
from dicomweb.multipart import multipart_body, parts_read
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


CONVERTED = [
    "MR_small_implicit.dcm",  # implicit VR: attributes re-encoded, pixels copied
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL_422: decoded to RGB
    "SC_rgb_rle_2frame.dcm",  # RLE, two frames
    "examples_ybr_color.dcm",  # JPEG, 30 frames
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",  # converted whole
]


@pytest.mark.parametrize("name", CONVERTED)
def test_streamed_conversion_equals_pydicoms(name):
    """explicit_little (frame by frame) gives the dataset pydicom's whole-file decompress and
    re-encoding gives: same attributes, same pixels, explicit VR little endian."""
    with open(sample_file(name), "rb") as stream:
        streamed = b"".join(explicit_little(stream))
        whole = explicit_little_copy(stream).read()
    ours, theirs = dcmread(io.BytesIO(streamed)), dcmread(io.BytesIO(whole))
    assert ours.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not ours.original_encoding[0]  # explicit VR, as it says
    # What follows the pixel data (trailing padding here) is not sent.
    assert [e.tag for e in ours] == [e.tag for e in theirs if e.tag <= 0x7FE00010]
    for element in theirs:
        if element.tag < 0x7FE00010:
            assert ours[element.tag] == element, element
    assert ours["PixelData"].VR == theirs["PixelData"].VR
    assert ours.PixelData == theirs.PixelData
    assert (ours.pixel_array == dcmread(sample_file(name)).pixel_array).all()
    if name == "MR_small_bigendian.dcm":
        assert ours.PixelData == dcmread(sample_file("MR_small.dcm")).PixelData


def test_a_compressed_instance_is_sent_decompressed_a_frame_at_a_time(
    transactional_db, storage_dir
):
    """40 RLE frames of 512x512x16 bits, 20 MiB decompressed: sent in explicit VR little
    endian with memory for a few frames, not the instance."""
    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    frames = 40
    rng = np.random.default_rng(1)
    pixels = (rng.integers(0, 64, (frames, 512, 512)) * 16).astype("<i2")
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless, encoding_plugin="pylibjpeg")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + out.getvalue() + b"\r\n--B--\r\n"
    outcome = stow_store(body=io.BytesIO(body), boundary="B", study_uid=None, address="test")
    assert len(outcome.stored) == 1, outcome.failed
    row = Instance.objects.get()
    rows = [(row.path, row.sop_instance_uid, row.transfer_syntax_uid, "")]
    received = tempfile.TemporaryFile()  # noqa: SIM115 (on disk: not counted; gone at exit)
    tracemalloc.start()
    try:
        for chunk in _instances_body(rows, ExplicitVRLittleEndian, "XYZ"):
            received.write(chunk)
            del chunk
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    frame = 512 * 512 * 2
    print(f"RLE {frames} frames: peak {peak / 2**20:.1f} MiB for {frames * frame / 2**20} MiB")
    received.seek(0)
    [part] = parts_read(received, "XYZ")
    assert part.content_type == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    got = dcmread(part.body)
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (got.pixel_array == pixels).all()
    assert peak < 8 * frame + 4 * 2**20  # the instance is 40 frames


def test_a_frame_failing_mid_response_cuts_the_response_short(transactional_db, storage_dir):
    """Once an instance's part has started, a frame that cannot be decoded ends the response
    with an error (the client sees a broken body) rather than a part of the wrong length; an
    instance failing before its part starts is left out and the others are sent."""
    ds = dcmread(sample_file("SC_rgb_rle_2frame.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.NumberOfFrames = 3  # two are there
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    good = sample_file("MR_small_jp2klossless.dcm").read_bytes()
    body = b"".join(
        multipart_body(
            "B", [("application/dicom", [out.getvalue()]), ("application/dicom", [good])]
        )
    )
    outcome = stow_store(body=io.BytesIO(body), boundary="B", study_uid=None, address="test")
    assert len(outcome.stored) == 2, outcome.failed
    rows = {
        r.sop_instance_uid: (r.path, r.sop_instance_uid, r.transfer_syntax_uid, "")
        for r in Instance.objects.all()
    }
    broken = rows.pop(ds.SOPInstanceUID)
    [fine] = rows.values()
    chunks = []
    with pytest.raises(RuntimeError, match="failed while sent"):
        for chunk in _instances_body([fine, broken], ExplicitVRLittleEndian, "XYZ"):
            chunks.append(chunk)
    # The first instance went whole; the second's part began and was cut.
    assert b"".join(chunks).count(b"--XYZ\r\n") == 2


def test_float_pixel_data_is_converted_not_left_out():
    """Float Pixel Data (7FE0,0008), a parametric map's, is where the header read stops too:
    the converted instance keeps it."""
    ds = dcmread(sample_file("CT_small.dcm"))
    del ds.PixelData
    ds.BitsAllocated, ds.SamplesPerPixel, ds.Rows, ds.Columns = 32, 1, 4, 4
    values = np.arange(16, dtype="<f4") / 3
    ds.FloatPixelData = values.tobytes()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    got = dcmread(io.BytesIO(b"".join(explicit_little(out))))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.frombuffer(got.FloatPixelData, "<f4").tolist() == values.tolist()


def test_the_stored_syntax_asked_for_by_name_is_sent_as_stored(transactional_db, storage_dir):
    """transfer-syntax=<the stored one> is "as stored", like *: not a conversion labelled as
    explicit VR little endian."""
    stored = open(sample_file("JPEG2000.dcm"), "rb").read()  # noqa: SIM115
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + stored + b"\r\n--B--\r\n"
    outcome = stow_store(body=io.BytesIO(body), boundary="B", study_uid=None, address="test")
    assert len(outcome.stored) == 1, outcome.failed
    row = Instance.objects.get()
    rows = [(row.path, row.sop_instance_uid, row.transfer_syntax_uid, "")]
    response = io.BytesIO(b"".join(_instances_body(rows, row.transfer_syntax_uid, "XYZ")))
    [part] = parts_read(response, "XYZ")
    assert part.content_type == f"application/dicom; transfer-syntax={row.transfer_syntax_uid}"
    sent = dcmread(part.body)
    assert sent.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
    assert sent.PixelData == dcmread(io.BytesIO(stored)).PixelData


def test_big_endian_binary_values_are_swapped_at_any_depth():
    """A big endian file's OW, OL, OF and OD values (a LUT's data in a sequence, an overlay,
    a float list) are kept by pydicom as the bytes read: converted, they must say the same
    numbers in little endian as the numbers in the big endian file."""
    lut = np.array([0, 1000, 40000, 65535], dtype="u2")
    overlay = np.array([0x0102, 0xA0B0, 0xFFFE, 0x8001], dtype="u2")
    floats = np.array([1.5, -2.25, 1e-3], dtype="f4")
    doubles = np.array([3.141592653589793, -1e300], dtype="f8")
    longs = np.array([1, 0x01020304, 0xFFFFFFF0], dtype="u4")
    ds = dcmread(sample_file("MR_small.dcm"))
    pixels = ds.pixel_array.copy()

    def big(values: np.ndarray) -> bytes:
        return values.astype(values.dtype.newbyteorder(">")).tobytes()

    item = Dataset()
    item.LUTDescriptor = [len(lut), 0, 16]
    item.add_new(0x00283006, "OW", big(lut))  # LUTData
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [item]
    ds.add_new(0x60003000, "OW", big(overlay))  # OverlayData
    ds.add_new(0x00660016, "OF", big(floats))  # PointCoordinatesData
    ds.add_new(0x00660040, "OL", big(longs))  # LongPrimitivePointIndexList
    ds.add_new(0x00221640, "OD", big(doubles))  # a double-float list, as an OD
    ds.PixelData = big(pixels)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    stored = io.BytesIO()
    # Numbers written big endian by pydicom (with the preamble and file meta the dataset was
    # read with); the binary values above are big endian already.
    dcmwrite(stored, ds, little_endian=False, implicit_vr=False, force_encoding=True)

    got = dcmread(io.BytesIO(b"".join(explicit_little(io.BytesIO(stored.getvalue())))))
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.frombuffer(got.ModalityLUTSequence[0].LUTData, "<u2").tolist() == lut.tolist()
    assert list(got.ModalityLUTSequence[0].LUTDescriptor) == [len(lut), 0, 16]
    assert np.frombuffer(got[0x60003000].value, "<u2").tolist() == overlay.tolist()
    assert np.frombuffer(got[0x00660016].value, "<f4").tolist() == floats.tolist()
    assert np.frombuffer(got[0x00660040].value, "<u4").tolist() == longs.tolist()
    assert np.frombuffer(got[0x00221640].value, "<f8").tolist() == doubles.tolist()
    assert (got.pixel_array == pixels).all()
    assert got.Rows == ds.Rows and got.BitsAllocated == 16


def test_metadata_keeps_values_that_strict_reading_would_drop():
    """A DS of more than 16 characters (as scanners write Image Position Patient) breaks the
    standard but is what the file holds: WADO-RS metadata keeps it, since OHIF cannot place a
    slice without it."""
    ds = dcmread(sample_file("CT_small.dcm"))
    position = ["-158.135803222656", "-179.035797119141", "-75.6999969482422"]
    out = io.BytesIO()
    with config.disable_value_validation():
        ds.ImagePositionPatient = position
        ds.save_as(out, enforce_file_format=True)
    assert b"\\".join(v.encode() for v in position) in out.getvalue()
    out.seek(0)
    got = metadata_json(out, "http://x/instance")
    assert got["00200032"]["Value"] == [float(v) for v in position]


def test_metadata_leaves_out_a_value_that_cannot_be_read_not_the_instance():
    """A US of three bytes cannot be converted at all: that element is left out of the
    metadata, the instance's other attributes are sent."""
    ds = dcmread(sample_file("CT_small.dcm"))
    rows = Tag(0x00280010)
    ds._dict[rows] = RawDataElement(rows, "US", 3, b"\x01\x02\x03", 0, False, True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    got = metadata_json(out, "http://x/instance")
    assert "00280010" not in got
    assert got["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert got["00280011"]["Value"] == [ds.Columns]
