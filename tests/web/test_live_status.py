"""Live status: receiver processes and their associations as other processes see them."""

import datetime as dt
import io
import json
import os
import socket

from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, Verification

from receiver.config import AllowedPeer
from receiver.models import AssociationLog, ReceiverProcess
from tests.conftest import sample_file
from tests.peers import eventually, scu, send_raw


def _status(client) -> dict:
    response = client.get(reverse("receiver-status-json"))
    assert response.status_code == 200
    return response.json()


def test_status_shows_the_running_receiver_and_a_live_association(
    admin_client, start_scp, fast_heartbeat
):
    server = start_scp()
    status = _status(admin_client)
    [receiver] = [r for r in status["receivers"] if r["port"] == server.port]
    assert receiver["state"] == "running"
    assert receiver["ae_title"] == "TEST_SCP"
    assert receiver["pid"] == os.getpid() and receiver["host"] == socket.gethostname()
    assert status["associations"] == []

    ae = scu("LIVE_SCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        ds = dcmread(sample_file("CT_small.dcm"))
        for n in range(3):
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7133.1.{n + 1}"
            assert assoc.send_c_store(ds).Status == 0x0000

        def progress_shown() -> bool:
            active = _status(admin_client)["associations"]
            return len(active) == 1 and active[0]["stored"] == 3

        assert eventually(progress_shown), _status(admin_client)
        [active] = _status(admin_client)["associations"]
        assert active["calling_ae_title"] == "LIVE_SCU"
        assert active["called_ae_title"] == "TEST_SCP"
        assert active["bytes"] > 3 * 30_000
        assert active["receiver"] == receiver["id"]
    finally:
        assoc.release()
    assert eventually(lambda: _status(admin_client)["associations"] == [])
    minutes = _status(admin_client)["per_minute"]
    assert len(minutes) == 60
    assert sum(m["instances"] for m in minutes) == 3
    assert minutes[-1]["instances"] + minutes[-2]["instances"] == 3


def test_rejections_and_failures_are_listed_as_problems(admin_client, start_scp):
    server = start_scp(require_known_ae=True, allowed_aes=(AllowedPeer("TEST_SCU"),))
    ae = scu("STRANGER")
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assert ae.associate("127.0.0.1", server.port, ae_title="TEST_SCP").is_rejected
    send_raw(server.port, sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3", payload=b"junk")
    assert eventually(lambda: len(_status(admin_client)["problems"]) == 2)
    failed, rejected = _status(admin_client)["problems"]
    assert rejected["outcome"] == "rejected"
    assert rejected["calling_ae_title"] == "STRANGER"
    assert "STRANGER" in rejected["reason"]
    assert failed["failures"] == {"0xC000": 1}


def test_a_silent_process_is_down_and_its_associations_gone(admin_client, db, fast_heartbeat):
    now = timezone.now()
    silent = ReceiverProcess.objects.create(
        host="other-host",
        pid=4242,
        ae_title="OLD_SCP",
        port=104,
        role="worker 1",
        started_at=now - dt.timedelta(hours=1),
        heartbeat_at=now - dt.timedelta(seconds=5),
    )
    AssociationLog.objects.create(
        started_at=now - dt.timedelta(minutes=5),
        calling_ae_title="CT1",
        called_ae_title="OLD_SCP",
        peer_address="10.0.0.9",
        peer_port=3000,
        outcome=AssociationLog.ACCEPTED,
        receiver=silent,
    )
    status = _status(admin_client)
    [receiver] = status["receivers"]
    assert receiver["state"] == "down"
    assert status["associations"] == []
    [gone] = status["gone"]
    assert gone["calling_ae_title"] == "CT1"


def test_a_new_receiver_ends_what_a_dead_one_left(start_scp, fast_heartbeat):
    now = timezone.now()
    dead = ReceiverProcess.objects.create(
        host=socket.gethostname(),
        pid=2**22 + 12345,  # beyond pid_max: no such process
        ae_title="TEST_SCP",
        port=11112,
        started_at=now,
        heartbeat_at=now,  # fresh, but its process is gone
    )
    row = AssociationLog.objects.create(
        started_at=now,
        calling_ae_title="CT1",
        peer_address="127.0.0.1",
        outcome=AssociationLog.ACCEPTED,
        receiver=dead,
    )
    start_scp()
    row.refresh_from_db()
    dead.refresh_from_db()
    assert dead.stopped_at is not None
    assert row.outcome == AssociationLog.ABORTED
    assert row.reason == "receiver process stopped"


def test_a_stopped_receiver_is_recorded_as_stopped(start_scp):
    server = start_scp()
    server.stop(grace=1)
    process = ReceiverProcess.objects.get(port=server.port)
    assert process.stopped_at is not None
    assert not process.is_alive(timezone.now())


def test_status_page_renders_for_staff(admin_client, scp):
    page = admin_client.get(reverse("receiver-status")).content.decode()
    assert 'id="receivers"' in page and 'id="associations"' in page
    assert "receiver/status.js" in page
    initial = page.split('id="status-initial" type="application/json">')[1].split("</script>")[0]
    assert json.loads(initial)["receivers"][0]["port"] == scp.port
    script = admin_client.get("/static/receiver/status.js")
    assert script.status_code == 200


def test_scpstatus_prints_the_same(scp):
    out = io.StringIO()
    call_command("scpstatus", stdout=out)
    text = out.getvalue()
    assert "running" in text and f"port {scp.port}" in text and "TEST_SCP" in text
    out = io.StringIO()
    call_command("scpstatus", "--json", stdout=out)
    assert json.loads(out.getvalue())["receivers"][0]["port"] == scp.port
