"""Retention never recycles a study that routing still owes something for: instances waiting in
the forwarding queue, or a Storage Commitment report not yet delivered."""

import pytest
from pydicom.uid import CTImageStorage

from archive import retention
from archive.models import Instance, Study
from archive.retention import RetentionPolicy, retention_pass
from archive.storage import Storage
from routing import forwarding
from routing.models import CommitmentTransaction, ForwardItem, RemoteAE
from routing.retention_guard import studies_with_pending_routing
from tests.archive.test_retention import _three_studies

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def storage(tmp_path):
    storage = Storage(tmp_path / "received")
    storage.prepare()
    yield storage
    storage.release()


def test_the_routing_guard_is_registered_when_the_app_loads():
    assert studies_with_pending_routing in retention._guards


def _recycle_down_to_one_study(storage) -> list[str]:
    size = Instance.objects.first().size
    retention_pass(storage=storage, policy=RetentionPolicy(max_bytes=size))
    return sorted(Study.objects.values_list("study_instance_uid", flat=True))


def test_a_study_waiting_to_be_forwarded_is_kept_until_sent(storage):
    uids = _three_studies(storage)
    oldest = Instance.objects.get(sop_instance_uid=f"{uids[0]}.1.1")
    remote = RemoteAE.objects.create(ae_title="DEST", host="127.0.0.1", port=104)
    forwarding.forward_enqueue(instance_ids=[oldest.pk], destination=remote, origin="test")
    assert _recycle_down_to_one_study(storage) == [uids[0], uids[2]]
    ForwardItem.objects.update(state=ForwardItem.SENT)
    assert _recycle_down_to_one_study(storage) == [uids[2]]


def test_a_study_named_by_a_pending_commitment_is_kept_until_reported(storage):
    uids = _three_studies(storage)
    transaction = CommitmentTransaction.objects.create(
        transaction_uid="1.2.826.0.1.3680043.9.7133.6.1",
        calling_ae_title="MODALITY",
        references=[[str(CTImageStorage), f"{uids[1]}.1.1"]],
    )
    assert _recycle_down_to_one_study(storage) == [uids[1], uids[2]]
    transaction.state = CommitmentTransaction.DELIVERED
    transaction.save()
    assert _recycle_down_to_one_study(storage) == [uids[2]]
