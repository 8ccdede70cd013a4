"""archive.deletion on real rows and files written by the receiver."""

import pytest
from pydicom import dcmread

from archive.deletion import deletion_preview, index_delete
from archive.exceptions import StorageFailure
from archive.models import Instance, Patient, Series
from archive.storage import Storage
from tests.conftest import sample_file, stored_files
from tests.peers import send_dataset


@pytest.fixture
def one_series(scp, storage_dir):
    ds = dcmread(sample_file("CT_small.dcm"))
    for n in range(3):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7133.2.{n + 1}"
        ds.InstanceNumber = n + 1
        assert send_dataset(scp.port, ds) == 0x0000
    return Storage(storage_dir)


def test_deleting_some_instances_keeps_the_series(one_series, storage_dir):
    first = Instance.objects.filter(instance_number__lte=2)
    assert deletion_preview(first).instances == 2
    assert deletion_preview(first).series == 0  # the series keeps an instance
    counts = index_delete(first, one_series)
    assert (counts.instances, counts.series, counts.studies, counts.patients) == (2, 0, 0, 0)
    assert Series.objects.count() == 1
    [kept] = Instance.objects.all()
    assert stored_files(storage_dir) == [storage_dir / kept.path]


def test_a_failed_deletion_puts_the_files_back(one_series, storage_dir):
    before = stored_files(storage_dir)
    # The last row's path leads outside the storage directory: refused after the first files
    # were moved aside, which must then come back.
    last = Instance.objects.order_by("instance_number").last()
    Instance.objects.filter(pk=last.pk).update(path="../outside.dcm")
    with pytest.raises(StorageFailure):
        index_delete(Patient.objects.all(), one_series)
    assert Instance.objects.count() == 3
    assert stored_files(storage_dir) == before
