"""storage.retention on a small archive, on both backends: recycle keeps the newest studies,
age limits, guards, refuse answers 0xA700 with nothing partial, and the configuration keys."""

import datetime as dt

import pytest
from django.utils import timezone
from pydicom import dcmread

from archive import retention
from archive.models import Instance, RecycledStudy, Study
from archive.retention import RetentionPolicy, retention_guard_register, retention_pass
from archive.verification import storage_verify
from receiver.config import ConfigError, resolve
from receiver.metrics import metrics_text
from tests.archive.test_storage_backends import _store
from tests.conftest import sample_file
from tests.peers import send_dataset

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_guards(monkeypatch):
    monkeypatch.setattr(retention, "_guards", [])


def _three_studies(storage) -> list[str]:
    """Three studies of one instance each, received a minute apart, oldest first."""
    uids = []
    now = timezone.now()
    for n in range(3):
        uid = f"1.2.826.0.1.3680043.9.7133.5.{n + 1}"
        _store(
            storage,
            StudyInstanceUID=uid,
            SeriesInstanceUID=f"{uid}.1",
            SOPInstanceUID=f"{uid}.1.1",
        )
        Instance.objects.filter(sop_instance_uid=f"{uid}.1.1").update(
            received_at=now - dt.timedelta(minutes=3 - n)
        )
        uids.append(uid)
    return uids


def test_recycle_keeps_the_newest_studies_within_max_bytes(storage):
    uids = _three_studies(storage)
    size = Instance.objects.first().size
    policy = RetentionPolicy(max_bytes=2 * size, mode="recycle")
    result = retention_pass(storage=storage, policy=policy)
    assert (result.studies, result.instances) == (1, 1)
    assert sorted(Study.objects.values_list("study_instance_uid", flat=True)) == uids[1:]
    assert len(list(storage.names())) == 2
    assert storage_verify(storage).consistent
    [recycled] = RecycledStudy.objects.all()
    assert (recycled.study_instance_uid, recycled.reason) == (uids[0], "max_bytes")
    assert retention_pass(storage=storage, policy=policy).studies == 0  # fits now
    text = metrics_text(storage.location).decode()
    assert "dicom_retention_recycled_studies_total 1.0" in text


def test_the_newest_study_is_never_recycled(storage):
    uids = _three_studies(storage)
    retention_pass(storage=storage, policy=RetentionPolicy(max_bytes=1))
    assert list(Study.objects.values_list("study_instance_uid", flat=True)) == [uids[2]]


def test_passes_are_bounded(storage):
    _three_studies(storage)
    result = retention_pass(storage=storage, policy=RetentionPolicy(max_bytes=1), batch=1)
    assert result.studies == 1
    assert Study.objects.count() == 2


def test_studies_older_than_max_age_go_in_either_mode(storage):
    uids = _three_studies(storage)
    Instance.objects.filter(sop_instance_uid=f"{uids[0]}.1.1").update(
        received_at=timezone.now() - dt.timedelta(days=40)
    )
    policy = RetentionPolicy(max_age_days=30, mode="refuse")
    assert retention_pass(storage=storage, policy=policy).studies == 1
    assert RecycledStudy.objects.get().reason == "max_age_days"
    assert Study.objects.count() == 2


def test_a_guarded_study_is_not_recycled(storage):
    uids = _three_studies(storage)
    oldest = Study.objects.get(study_instance_uid=uids[0]).pk
    retention_guard_register(lambda: [oldest])
    size = Instance.objects.first().size
    retention_pass(storage=storage, policy=RetentionPolicy(max_bytes=2 * size))
    assert sorted(Study.objects.values_list("study_instance_uid", flat=True)) == [
        uids[0],
        uids[2],
    ]


def test_refuse_answers_a700_once_full_and_keeps_nothing_partial(start_scp, storage_dir):
    # Below one instance: the first fills the archive, the second finds it full.
    scp = start_scp(retention=RetentionPolicy(max_bytes=1000, mode="refuse"))
    ds = dcmread(sample_file("CT_small.dcm"))
    assert send_dataset(scp.port, ds) == 0x0000
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.7133.6.1"
    assert send_dataset(scp.port, ds) == 0xA700
    assert Instance.objects.count() == 1
    files = [p for p in storage_dir.rglob("*") if p.is_file()]
    assert len(files) == 1


def test_retention_from_the_configuration_file(tmp_path):
    config = tmp_path / "scp.yaml"
    config.write_text("storage:\n  retention:\n    max_bytes: 1000000\n    mode: refuse\n")
    resolved = resolve({}, config)
    assert resolved.retention == RetentionPolicy(max_bytes=1_000_000, mode="refuse")
    config.write_text("storage:\n  retention:\n    max_bytes: 10\n    mode: sometimes\n")
    with pytest.raises(ConfigError, match=r"storage\.retention"):
        resolve({}, config)
    config.write_text("storage:\n  retention:\n    keep: 10\n")
    with pytest.raises(ConfigError, match=r"storage\.retention\.keep"):
        resolve({}, config)


def test_the_background_loop_recycles_without_being_asked(storage):
    from archive.retention import RetentionLoop
    from tests.peers import eventually

    _three_studies(storage)
    loop = RetentionLoop(storage=storage, policy=RetentionPolicy(max_bytes=1), interval=0.1)
    loop.start()
    try:
        assert eventually(lambda: Study.objects.count() == 1)
    finally:
        loop.stop()
