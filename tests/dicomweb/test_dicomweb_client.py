"""DICOMweb through a real client (dicomweb-client, PyPI) against the live Django server:
store, search, retrieve instances, metadata and frames, byte for byte."""

import io

import pytest
import requests
from pydicom import dcmread
from pydicom.encaps import generate_frames

from archive.models import Instance
from archive.storage import Storage
from dicomweb.multipart import parts_read
from tests.conftest import sample_file

FILES = ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jp2klossless.dcm"]


def _datasets(names=FILES):
    return [dcmread(sample_file(name)) for name in names]


def _multipart(response: requests.Response) -> list[tuple[str, bytes]]:
    kind = response.headers["Content-Type"]
    boundary = kind.split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for part in parts_read(io.BytesIO(response.content), boundary):
        parts.append((part.content_type, part.body.read()))
    return parts


def test_store_then_search_and_retrieve_with_dicomweb_client(client, storage_dir):
    datasets = _datasets()
    result = client.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == len(FILES)
    assert Instance.objects.count() == len(FILES)
    ct = datasets[0]

    studies = client.search_for_studies(search_filters={"PatientID": ct.PatientID})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ct.StudyInstanceUID]
    assert studies[0]["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert studies[0]["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances
    series = client.search_for_series(ct.StudyInstanceUID)
    assert series[0]["00201209"]["Value"] == [1]  # NumberOfSeriesRelatedInstances
    instances = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert instances[0]["00080018"]["Value"] == [ct.SOPInstanceUID]

    for ds in datasets:
        got = client.retrieve_instance(
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            media_types=(("application/dicom", "*"),),
        )
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert got.PixelData == ds.PixelData


def test_retrieved_instances_equal_the_stored_bytes(client, root, auth, storage_dir):
    client.store_instances(_datasets())
    storage = Storage(storage_dir)
    for row in Instance.objects.select_related("series__study"):
        url = (
            f"{root}/studies/{row.series.study.study_instance_uid}/series/"
            f"{row.series.series_instance_uid}/instances/{row.sop_instance_uid}"
        )
        response = requests.get(
            url,
            auth=auth,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert response.status_code == 200
        [(kind, body)] = _multipart(response)
        assert f"transfer-syntax={row.transfer_syntax_uid}" in kind
        with storage.open(row.path) as stream:
            assert body == stream.read()


def test_default_syntax_decompresses(client, root, auth):
    [ds] = _datasets(["MR_small_jp2klossless.dcm"])
    client.store_instances([ds])
    got = client.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (got.pixel_array == dcmread(sample_file("MR_small.dcm")).pixel_array).all()


def test_metadata_has_bulk_data_uris(client):
    datasets = _datasets()
    client.store_instances(datasets)
    for ds in datasets:
        meta = client.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        assert meta["00080018"]["Value"] == [ds.SOPInstanceUID]
        assert meta["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
        assert meta["00083002"]["Value"] == [ds.file_meta.TransferSyntaxUID]
    series = client.retrieve_series_metadata(
        datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID
    )
    assert len(series) == 1


def test_frames_uncompressed_and_compressed(client, root, auth):
    datasets = _datasets()
    client.store_instances(datasets)
    ct = datasets[0]
    [frame] = client.retrieve_instance_frames(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == ct.PixelData
    jp2 = datasets[2]
    url = (
        f"{root}/studies/{jp2.StudyInstanceUID}/series/{jp2.SeriesInstanceUID}"
        f"/instances/{jp2.SOPInstanceUID}/frames/1"
    )
    # What OHIF asks: the part's Content-Type must name the syntax it is in.
    response = requests.get(
        url,
        auth=auth,
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert response.status_code == 200
    [(kind, body)] = _multipart(response)
    assert kind == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert body == next(generate_frames(jp2.PixelData, number_of_frames=1))
    # Native bytes when only octet-stream is accepted: decompressed.
    [raw] = client.retrieve_instance_frames(
        jp2.StudyInstanceUID,
        jp2.SeriesInstanceUID,
        jp2.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    assert raw == dcmread(sample_file("MR_small.dcm")).pixel_array.astype("<i2").tobytes()


def test_search_paging_includefield_and_fuzzy(client, root, auth):
    client.store_instances(_datasets())
    all_studies = client.search_for_studies()
    assert len(all_studies) >= 2
    page = client.search_for_studies(limit=1, offset=1)
    assert page == all_studies[1:2]
    response = requests.get(
        f"{root}/studies",
        params={"includefield": "00081030,PatientAge", "fuzzymatching": "true"},
        auth=auth,
    )
    assert response.status_code == 200
    assert all("00101010" in s for s in response.json())
    name = "Lestrade^G"
    fuzzy = requests.get(
        f"{root}/studies",
        params={"PatientName": name[:3].lower(), "fuzzymatching": "true"},
        auth=auth,
    ).json()
    assert len(fuzzy) == 1


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/dicom+json",
        'application/dicom+json; q=0.9, application/json; q="0.5"',
    ],
)
def test_accept_headers_read_leniently(client, root, auth, accept):
    client.store_instances(_datasets(["CT_small.dcm"]))
    headers = {"Accept": accept} if accept else {}
    response = requests.get(f"{root}/studies", auth=auth, headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom+json"


def test_rendered_and_thumbnail(client, root, auth):
    from PIL import Image

    [ct] = _datasets(["CT_small.dcm"])
    client.store_instances([ct])
    jpeg = client.retrieve_instance_rendered(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        ct.SOPInstanceUID,
        media_types=("image/jpeg",),
    )
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (128, 128)
    base = f"{root}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    png = requests.get(
        f"{base}/instances/{ct.SOPInstanceUID}/rendered",
        params={"window": "40,400,LINEAR", "viewport": "64,64"},
        headers={"Accept": "image/png"},
        auth=auth,
    )
    assert png.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    thumb = requests.get(f"{base}/thumbnail", auth=auth)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    bad = requests.get(f"{base}/thumbnail", params={"window": "x"}, auth=auth)
    assert bad.status_code == 400


def _multiframe_ct(frames: int = 4):
    """CT_small made multi-frame, each frame a different ramp, so frames are told apart."""
    import numpy as np
    from pydicom.uid import generate_uid

    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ramp = np.arange(128 * 128, dtype="<i2").reshape(128, 128) % 512
    pixels = np.stack([ramp + 300 * k for k in range(frames)]).astype("<i2")
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds, pixels


def test_frames_rendered(client, root, auth):
    import numpy as np
    from PIL import Image

    ds, pixels = _multiframe_ct()
    rle = dcmread(sample_file("SC_rgb_rle_2frame.dcm"))
    client.store_instances([ds, rle])
    base = f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    url = f"{base}/instances/{ds.SOPInstanceUID}/frames"
    center, width = 600.0, 1200.0
    for number in (1, 3):
        png = requests.get(
            f"{url}/{number}/rendered",
            params={"window": f"{center:g},{width:g},LINEAR"},
            headers={"Accept": "image/png"},
            auth=auth,
        )
        assert png.status_code == 200 and png.headers["Content-Type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(png.content)))
        values = pixels[number - 1] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        low = center - width / 2
        expected = (np.clip((values - low) / width, 0, 1) * 255 + 0.5).astype(np.uint8)
        assert (got == expected).all(), number
    # Through dicomweb-client too, JPEG and a viewport.
    jpeg = client.retrieve_instance_frames_rendered(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        frame_numbers=[2],
        media_types=("image/jpeg",),
        params={"viewport": "64,64"},
    )
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (64, 64)
    # A compressed (RLE, RGB) instance: each frame decoded as itself.
    rle_url = (
        f"{root}/studies/{rle.StudyInstanceUID}/series/{rle.SeriesInstanceUID}"
        f"/instances/{rle.SOPInstanceUID}/frames"
    )
    for number in (1, 2):
        png = requests.get(
            f"{rle_url}/{number}/rendered", headers={"Accept": "image/png"}, auth=auth
        )
        assert png.status_code == 200
        got = np.asarray(Image.open(io.BytesIO(png.content)))
        assert (got == rle.pixel_array[number - 1]).all(), number
    assert requests.get(f"{url}/5/rendered", auth=auth).status_code == 404
    assert requests.get(f"{url}/1,2/rendered", auth=auth).status_code == 400
    assert requests.get(f"{url}/0/rendered", auth=auth).status_code == 400


def _here(root: str, uri: str) -> str:
    """dicomweb-client sends its Host header without the port, so the URIs the server builds
    from it lack the live server's port: the same path under `root`."""
    return root + uri.split("/dicomweb", 1)[1]


def test_bulk_data_in_sequences(client, root, auth):
    """An icon's pixel data in its sequence (and a value two sequences deep) is a BulkDataURI
    in the metadata, and that URI serves the value; small values stay inline."""
    import base64

    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon_pixels = bytes(range(256)) * 16
    icon.PixelData = icon_pixels
    ds.IconImageSequence = [icon]
    inner = Dataset()
    inner.EncapsulatedDocument = b"%PDF-" + bytes(3001) + b"%%EOF\n"  # even: no padding
    small = Dataset()
    small.EncapsulatedDocument = b"tiny"
    outer = Dataset()
    outer.ContentSequence = [small, inner]
    ds.add_new(0x00400555, "SQ", [outer])  # AcquisitionContextSequence
    client.store_instances([ds])
    meta = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    icon_json = meta["00880200"]["Value"][0]["7FE00010"]
    assert "InlineBinary" not in icon_json
    assert icon_json["BulkDataURI"].endswith("/bulkdata/00880200/0/7FE00010")
    assert client.retrieve_bulkdata(_here(root, icon_json["BulkDataURI"])) == [icon_pixels]
    items = meta["00400555"]["Value"][0]["0040A730"]["Value"]
    assert base64.b64decode(items[0]["00420011"]["InlineBinary"]) == b"tiny"
    deep = items[1]["00420011"]["BulkDataURI"]
    assert deep.endswith("/bulkdata/00400555/0/0040A730/1/00420011")
    assert client.retrieve_bulkdata(_here(root, deep)) == [inner.EncapsulatedDocument]
    instance = _here(root, deep.split("/bulkdata/")[0])
    for wrong in ("00880200/1/7FE00010", "00880200/0", "00880200/x/7FE00010"):
        response = requests.get(f"{instance}/bulkdata/{wrong}", auth=auth)
        assert response.status_code in (400, 404), wrong


def test_search_matches_names_without_regard_to_case_in_any_script(client):
    client.store_instances(_datasets(["chrGerm.dcm", "chrGreek.dcm", "chrFren.dcm"]))

    def patients(name: str) -> list[str]:
        studies = client.search_for_studies(search_filters={"PatientName": name})
        return [s["00100020"]["Value"][0] for s in studies]

    assert patients("äneas^rüdiger") == ["SCSGERM"]
    assert patients("ÄNEAS*") == ["SCSGERM"]
    assert patients("ΔΙΟΝΥΣΙΟΣ") == ["SCSGREEK"]
    assert patients("buc^j?rôme") == ["SCSFREN"]
    assert patients("müller*") == []
