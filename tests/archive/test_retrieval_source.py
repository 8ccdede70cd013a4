"""archive.retrieval.instance_source on each storage backend: the stored data set as it is,
opened once, or a decoded Dataset when the receiver cannot take the stored syntax."""

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from archive.retrieval import RetrieveFailed, RetrieveItem, instance_source
from archive.stored_file import StoredFile
from tests.conftest import sample_file


def _stored(storage, name: str) -> tuple[RetrieveItem, bytes]:
    raw = Path(sample_file(name)).read_bytes()
    storage.publish(storage.stage([raw]), f"s/{name}")
    with open(sample_file(name), "rb") as stream:
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
        data_set = stream.read()
    item = RetrieveItem(
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        f"s/{name}",
    )
    return item, data_set


def test_an_accepted_syntax_sends_the_stored_data_set_bytes(storage):
    item, data_set = _stored(storage, "CT_small.dcm")
    source = instance_source(storage=storage, item=item, accepted={ExplicitVRLittleEndian})
    assert isinstance(source, StoredFile)
    try:
        assert source.length == len(data_set)
        assert source.stream.read() == data_set
    finally:
        source.close()


def test_a_syntax_not_accepted_is_decoded_for_conversion(storage):
    item, _ = _stored(storage, "JPEG2000.dcm")
    source = instance_source(storage=storage, item=item, accepted={ExplicitVRLittleEndian})
    assert isinstance(source, Dataset)
    assert not source.file_meta.TransferSyntaxUID.is_compressed


def test_a_missing_file_fails_its_sub_operation(storage):
    item = RetrieveItem("1.2.840.10008.5.1.4.1.1.2", "1.2.3", ImplicitVRLittleEndian, "s/gone")
    with pytest.raises(RetrieveFailed, match="missing"):
        instance_source(storage=storage, item=item, accepted={ImplicitVRLittleEndian})
