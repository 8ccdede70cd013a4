"""WADO-RS metadata from the InstanceMetadata cache: the same answer as made from the files,
for whatever host the client reaches us by, and made again when an instance's file changes."""

import time

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom import dcmread

from archive.models import Instance, Series
from dicomweb import instances as stored
from dicomweb.models import InstanceMetadata
from tests.conftest import sample_file
from tests.peers import eventually

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def study(client):
    datasets = [dcmread(sample_file(name)) for name in FILES]
    for ds in datasets[1:]:
        ds.StudyInstanceUID = datasets[0].StudyInstanceUID
    client.store_instances(datasets)
    return datasets[0].StudyInstanceUID


def test_metadata_is_the_same_made_or_cached_and_names_the_host_asked(
    root, auth, study, live_server
):
    url = f"{root}/studies/{study}/metadata"
    made = requests.get(url, auth=auth, headers=JSON)
    assert made.status_code == 200
    assert InstanceMetadata.objects.count() == len(FILES)
    cached = requests.get(url, auth=auth, headers=JSON)
    assert cached.content == made.content
    # The same instances reached by another name of the host: their URIs name that one.
    other = root.replace("localhost", "127.0.0.1")
    elsewhere = requests.get(url.replace(root, other), auth=auth, headers=JSON).json()
    uris = [item["7FE00010"]["BulkDataURI"] for item in elsewhere]
    assert all(uri.startswith(f"{other}/studies/{study}/series/") for uri in uris)
    assert elsewhere == [_with_root(item, root, other) for item in made.json()]


def _with_root(item: dict, root: str, other: str) -> dict:
    return {
        tag: {**value, "BulkDataURI": value["BulkDataURI"].replace(root, other)}
        if "BulkDataURI" in value
        else value
        for tag, value in item.items()
    }


def test_metadata_from_the_cache_reads_no_file(root, auth, study, monkeypatch):
    url = f"{root}/studies/{study}/metadata"
    requests.get(url, auth=auth, headers=JSON).raise_for_status()

    def refuse(*args, **kwargs):
        raise AssertionError("a stored file was parsed")

    monkeypatch.setattr(stored, "metadata_json", refuse)
    again = requests.get(url, auth=auth, headers=JSON)
    assert again.status_code == 200
    assert len(again.json()) == len(FILES)


def test_an_overwritten_instance_is_read_again(root, auth, study, client, settings):
    """An instance stored again with other content (duplicates: overwrite) is described as it
    is now, not as the cache remembers it."""
    settings.DICOM_DUPLICATES = "overwrite"
    url = f"{root}/studies/{study}/metadata"
    requests.get(url, auth=auth, headers=JSON).raise_for_status()
    changed = dcmread(sample_file(FILES[0]))
    before = Instance.objects.get(sop_instance_uid=changed.SOPInstanceUID)
    assert InstanceMetadata.objects.get(instance=before).sha256 == before.sha256
    changed.SeriesDescription = "STORED AGAIN"
    client.store_instances([changed])
    after = Instance.objects.get(pk=before.pk)
    assert after.sha256 != before.sha256  # overwritten in place: the same row, a new file

    again = requests.get(url, auth=auth, headers=JSON)
    assert again.status_code == 200
    [item] = [i for i in again.json() if i["00080018"]["Value"][0] == changed.SOPInstanceUID]
    assert item["0008103E"]["Value"] == ["STORED AGAIN"]
    assert InstanceMetadata.objects.get(instance=after).sha256 == after.sha256


def test_a_series_from_the_cache_is_one_query_for_the_json(study):
    from dicomweb.metadata import metadata_rows, metadata_stream

    rows = metadata_rows(study, None, None)
    b"".join(metadata_stream(rows, "http://x/dicomweb"))
    with CaptureQueriesContext(connection) as queries:
        b"".join(metadata_stream(rows, "http://x/dicomweb"))
    assert len(queries) == 1


@pytest.mark.django_db(transaction=True)
def test_a_stable_series_has_its_metadata_made_before_anyone_asks(start_scp, settings):
    """The viewer's first visit finds the metadata ready: it is made when the receiver
    announces the series stable; with DICOMWEB_PREPARE_METADATA false, it is not."""
    from tests.archive.test_stability import make_study, send

    scp = start_scp(stable_age=1.0)
    first, second = make_study(series=2, per_series=3)[:3], make_study(series=1, per_series=2)
    assert send(scp.port, first) == [0] * 3
    assert eventually(lambda: InstanceMetadata.objects.count() == 3, timeout=15)
    cached = InstanceMetadata.objects.select_related("instance")
    assert {m.instance.sop_instance_uid for m in cached} == {ds.SOPInstanceUID for ds in first}
    assert all(m.sha256 == m.instance.sha256 for m in cached)

    settings.DICOMWEB_PREPARE_METADATA = False
    assert send(scp.port, second) == [0] * 2
    assert eventually(lambda: Series.objects.filter(stable=True).count() == 2, timeout=15)
    time.sleep(0.5)
    assert InstanceMetadata.objects.count() == 3
