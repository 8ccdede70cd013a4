"""Events for other Django apps: instance_stored, series_stable and study_stable, sent by a real
SCP's dispatcher and sweeper threads after real C-STOREs (pynetdicom as the sender)."""

import copy
import datetime as dt
import logging
import threading
import time

import pytest
from django.db import connections
from django.test import override_settings
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from archive import events
from archive.events import MAX_PENDING, dispatcher_flush, instance_stored_enqueue
from archive.models import Instance, Patient, Series, Study
from archive.routers import ArchiveReadOnly, ArchiveRouter
from archive.signals import (
    instance_stored,
    instance_stored_in_transaction,
    series_stable,
    study_stable,
)
from archive.stability import CLAIM_BATCH, SLACK, StableAges, stable_announce
from tests.conftest import sample_file
from tests.peers import eventually, scu

STABLE_AGE = 1.0


def make_study(series: int, per_series: int) -> list:
    base = dcmread(sample_file("CT_small.dcm"))
    study_uid = generate_uid()
    datasets = []
    for _ in range(series):
        series_uid = generate_uid()
        for number in range(per_series):
            ds = copy.deepcopy(base)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = number + 1
            datasets.append(ds)
    return datasets


def send(port: int, datasets: list) -> list[int]:
    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


class Recorder:
    """Connects to a signal for the duration of a test and records what it was sent."""

    def __init__(self, signal, action=None) -> None:
        self.signal = signal
        self.action = action
        self.calls: list[dict] = []
        self.times: list[float] = []
        self.lock = threading.Lock()

        def record(sender, **kwargs) -> None:
            with self.lock:
                self.calls.append(kwargs)
                self.times.append(time.monotonic())
            if self.action is not None:
                self.action(**kwargs)

        self.receiver = record

    def __enter__(self) -> "Recorder":
        self.signal.connect(self.receiver, weak=False)
        return self

    def __exit__(self, *exc) -> None:
        self.signal.disconnect(self.receiver)


def test_study_stable_fires_once_after_the_quiet_period_and_again_updated_after_a_late_instance(
    start_scp,
):
    scp = start_scp(stable_age=STABLE_AGE)
    datasets = make_study(series=2, per_series=3)
    with Recorder(study_stable) as studies, Recorder(series_stable) as series:
        assert send(scp.port, datasets[:5]) == [0] * 5
        last_sent = time.monotonic()
        assert eventually(lambda: len(studies.calls) == 1, timeout=15)
        # Never before the quiet period has elapsed since the last committed instance.
        assert studies.times[0] - last_sent >= STABLE_AGE
        assert eventually(lambda: len(series.calls) == 2, timeout=5)
        time.sleep(STABLE_AGE + SLACK + 1)  # more sweeps: still once per quiet period
        assert len(studies.calls) == 1 and len(series.calls) == 2
        (first,) = studies.calls
        assert first["updated"] is False
        assert first["study"].study_instance_uid == datasets[0].StudyInstanceUID
        assert first["study"].series.count() == 2
        assert all(call["updated"] is False for call in series.calls)

        assert send(scp.port, datasets[5:]) == [0]  # a late instance re-arms study and series
        study = Study.objects.get()
        assert study.stable is False
        assert eventually(lambda: len(studies.calls) == 2, timeout=15)
        assert studies.calls[1]["updated"] is True
        assert eventually(lambda: len(series.calls) == 3, timeout=5)
        assert series.calls[2]["updated"] is True
        assert series.calls[2]["series"].series_instance_uid == datasets[5].SeriesInstanceUID
        assert Instance.objects.filter(series__study=studies.calls[1]["study"]).count() == 6
    study = Study.objects.get()
    assert study.stable and study.stable_announced_at is not None
    assert study.last_received_at >= Instance.objects.latest("received_at").received_at


def test_a_study_still_receiving_is_not_announced(start_scp):
    scp = start_scp(stable_age=STABLE_AGE)
    datasets = make_study(series=1, per_series=8)
    with Recorder(study_stable) as studies:
        for ds in datasets:  # one instance every 0.5 s for 4 s, longer than the stable age
            assert send(scp.port, [ds]) == [0]
            time.sleep(0.5)
        assert studies.calls == []
        assert eventually(lambda: len(studies.calls) == 1, timeout=15)


def test_instance_stored_reports_new_and_resent_instances_without_delaying_the_c_store(
    start_scp,
):
    scp = start_scp(stable_age=60)
    (ds,) = make_study(series=1, per_series=1)
    with Recorder(instance_stored, action=lambda **kw: time.sleep(2)) as stored:
        started = time.monotonic()
        assert send(scp.port, [ds, ds]) == [0, 0]  # the second is an identical resend
        # Each C-STORE was answered while the slow receiver was still busy.
        assert time.monotonic() - started < 1.5
        assert eventually(lambda: len(stored.calls) == 2, timeout=10)
    first, second = stored.calls
    assert first["created"] is True and first["outcome"] == "stored"
    assert second["created"] is False and second["outcome"] == "identical"
    assert first["instance"].sop_instance_uid == ds.SOPInstanceUID
    # The instance arrives with its parents loaded, for receivers that route by them.
    assert first["instance"].series.study.patient.patient_id == ds.PatientID


def test_a_failing_receiver_is_logged_with_the_study_and_harms_nothing(start_scp, caplog):
    scp = start_scp(stable_age=STABLE_AGE)
    datasets = make_study(series=1, per_series=2)

    def fail(**kwargs) -> None:
        raise RuntimeError("research pipeline is down")

    with (
        Recorder(study_stable, action=fail),
        Recorder(instance_stored, action=fail),
        Recorder(study_stable) as healthy,
        caplog.at_level(logging.ERROR, logger="archive"),
    ):
        assert send(scp.port, datasets) == [0, 0]
        assert eventually(lambda: len(healthy.calls) == 1, timeout=15)
        assert dispatcher_flush()
    assert Instance.objects.count() == 2
    study_uid = datasets[0].StudyInstanceUID
    failures = [r.getMessage() for r in caplog.records if "research pipeline" in r.getMessage()]
    assert any("study_stable receiver" in m and study_uid in m for m in failures)
    assert any("instance_stored receiver" in m and study_uid in m for m in failures)


def test_a_rolled_back_instance_is_never_announced(start_scp):
    scp = start_scp(stable_age=STABLE_AGE)
    (ds,) = make_study(series=1, per_series=1)

    def refuse(**kwargs) -> None:
        raise RuntimeError("forwarding queue full")

    with (
        Recorder(instance_stored_in_transaction, action=refuse),
        Recorder(instance_stored) as stored,
        Recorder(study_stable) as studies,
    ):
        assert send(scp.port, [ds]) == [0xA700]
        time.sleep(STABLE_AGE + SLACK + 1)
        assert dispatcher_flush()
    assert stored.calls == [] and studies.calls == []
    assert not Instance.objects.exists()


def test_the_in_transaction_hook_commits_with_the_instance(start_scp):
    scp = start_scp(stable_age=60)
    (ds,) = make_study(series=1, per_series=1)
    with Recorder(instance_stored_in_transaction) as hooked:
        assert send(scp.port, [ds]) == [0]
    (call,) = hooked.calls
    instance = Instance.objects.get(pk=call["instance_id"])
    assert instance.series_id == call["series_id"] and call["created"] is True
    # Written in the instance's transaction: after its reception began.
    assert Series.objects.get().last_received_at >= instance.received_at


def test_the_router_sends_reads_to_the_index_and_refuses_writes():
    router = ArchiveRouter()
    with override_settings(ARCHIVE_DATABASE="pacs", ARCHIVE_WRITABLE=False):
        assert router.db_for_read(Study) == "pacs"
        with pytest.raises(ArchiveReadOnly):
            router.db_for_write(Study)
        assert router.allow_migrate("pacs", "archive") is False
        assert router.allow_migrate("default", "archive") is False
    with override_settings(ARCHIVE_DATABASE="pacs", ARCHIVE_WRITABLE=True):
        assert router.db_for_write(Study) == "pacs"
        assert router.allow_migrate("pacs", "archive") is True


def test_concurrent_sweepers_announce_each_study_exactly_once(transactional_db):
    patient = Patient.objects.create(patient_id="P1")
    quiet_since = timezone.now() - dt.timedelta(seconds=120)
    uids = [f"1.2.826.0.1.3680043.9.7.{n}" for n in range(CLAIM_BATCH * 3 + 7)]
    Study.objects.bulk_create(
        Study(patient=patient, study_instance_uid=uid, last_received_at=quiet_since) for uid in uids
    )
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        try:
            stable_announce(ages=StableAges(series=60, study=60))
        finally:
            connections.close_all()

    with Recorder(study_stable) as announced:
        sweepers = [threading.Thread(target=sweep) for _ in range(4)]
        for sweeper in sweepers:
            sweeper.start()
        for sweeper in sweepers:
            sweeper.join()
    assert sorted(call["study"].study_instance_uid for call in announced.calls) == sorted(uids)
    assert not Study.objects.filter(stable=False).exists()


def test_a_full_instance_stored_queue_drops_new_events_and_says_so(start_scp, caplog):
    scp = start_scp(stable_age=60)
    (ds,) = make_study(series=1, per_series=1)
    assert send(scp.port, [ds]) == [0]
    instance_id = Instance.objects.get().pk
    release = threading.Event()
    dropped_before = events._dropped
    with (
        Recorder(instance_stored, action=lambda **kwargs: release.wait(30)) as stored,
        caplog.at_level(logging.WARNING, logger="archive.events"),
    ):
        instance_stored_enqueue(instance_id=instance_id, created=True, outcome="stored")
        assert eventually(lambda: len(stored.calls) == 1)  # the receiver is stuck in it
        started = time.monotonic()
        for _ in range(MAX_PENDING + 5):
            instance_stored_enqueue(instance_id=instance_id, created=False, outcome="identical")
        assert time.monotonic() - started < 2  # never waits for the receiver
    release.set()
    assert events._dropped - dropped_before == 5
    assert any("dropped" in record.getMessage() for record in caplog.records)
    assert dispatcher_flush(timeout=30)
