"""Hostile and malformed input over real associations, bounded in time (not a timed test).

Random and mutated datasets inside well-formed C-STOREs, then random and mutated PDUs on raw
TCP connections. After every case the receiver must still answer a normal association; a
dataset it refused must leave nothing behind; one it accepted must be stored exactly as sent.
"""

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AddressInformation

from archive.models import Instance
from tests.conftest import sample_file, staging_files, stored_files
from tests.peers import dataset_bytes, scu, send_raw

SECONDS = float(os.environ.get("FUZZ_SECONDS", "20"))  # per part; two parts
SEED = int(os.environ.get("FUZZ_SEED", "20261126"))
MEGABYTE = os.urandom(2**20)
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtdose_rle_1frame.dcm", "test-SR.dcm"]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        position = rng.randrange(len(data)) if data else 0
        if choice < 0.4 and data:
            data[position] = rng.randrange(256)  # flip a byte
        elif choice < 0.55:
            del data[position:]  # truncate
        elif choice < 0.7:
            data[position:position] = os.urandom(rng.randint(1, 64))  # insert garbage
        elif choice < 0.8 and len(data) > position + 8:
            # An element length far beyond what follows, or undefined.
            data[position + 4 : position + 8] = rng.choice(
                [b"\xff\xff\xff\xff", struct.pack("<I", rng.randrange(2**31))]
            )
        elif choice < 0.9:
            data[position:position] = _deep_sequence(rng.randint(50, 400))
        else:
            data[position:position] = (
                b"\x08\x00\x18\x00UI" + struct.pack("<H", 80) + "1.2.ü.".encode() * 10
            )  # non-ASCII, over-long UID
    return bytes(data)


def _deep_sequence(depth: int) -> bytes:
    """Nested sequences of undefined length that never close."""
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    return (b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + item) * depth


def _alive(port: int) -> bool:
    ae = scu("PROBE")
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0x0000
    assoc.release()
    return ok


@pytest.fixture
def fuzz_scp(start_scp):
    return start_scp(acse_timeout=2.0, network_timeout=3.0, max_associations=20)


def test_mutated_datasets_get_a_status_and_never_leave_partial_data(fuzz_scp, storage_dir):
    rng = random.Random(SEED)
    originals = {name: dataset_bytes(sample_file(name)) for name in SAMPLES}
    headers = {name: dcmread(sample_file(name), stop_before_pixels=True) for name in SAMPLES}
    cases = accepted = 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        name = rng.choice(SAMPLES)
        header = headers[name]
        payload = _mutate(rng, originals[name])
        # Each case starts without the instance, so "accepted" and "refused" are both visible.
        for previous in Instance.objects.filter(sop_instance_uid=header.SOPInstanceUID):
            (storage_dir / previous.path).unlink()
            previous.delete()
        status = send_raw(
            fuzz_scp.port,
            sop_class_uid=header.SOPClassUID,
            sop_instance_uid=header.SOPInstanceUID,
            payload=payload,
        )
        cases += 1
        rows = Instance.objects.filter(sop_instance_uid=header.SOPInstanceUID)
        if status == 0x0000:
            accepted += 1
            stored = storage_dir / rows.get().path
            assert dataset_bytes(stored) == payload, f"case {cases}: stored bytes differ"
        else:
            # -1: no response, e.g. a payload mutated down to nothing never completes a message
            # and the receiver drops the association after the network timeout.
            assert status in (0xA700, 0xA900, 0xC000, -1), f"case {cases}: status {status:#x}"
            assert not rows.exists(), f"case {cases}: refused dataset was indexed"
        assert staging_files(storage_dir) == []
        if cases % 25 == 0:
            assert _alive(fuzz_scp.port), f"receiver stopped answering after case {cases}"
    assert _alive(fuzz_scp.port)
    assert len(stored_files(storage_dir)) == Instance.objects.count()
    print(f"{cases} mutated datasets, {accepted} accepted as valid, seed {SEED}")
    assert cases > 20


def _association_request(port: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "FUZZER"
    primitive.called_ae_title = "TEST_SCP"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 0)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", port)
    context = build_context(CTImageStorage, [ExplicitVRLittleEndian])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _p_data(payload: bytes, context_id: int = 1, header: int = 0x02) -> bytes:
    item = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return struct.pack(">BBI", 0x04, 0, len(item)) + item


def _rss_mb() -> float:
    """This process's resident memory (the receiver runs in it, in threads)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


class HonestSender(threading.Thread):
    """One well-behaved association storing instances for as long as the fuzzing lasts."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        ae = scu("HONEST")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", self.port, ae_title="TEST_SCP")
        assert assoc.is_established
        ds = dcmread(sample_file("CT_small.dcm"))
        try:
            while not self.stop.is_set():
                ds.SOPInstanceUID = generate_uid()
                self.statuses.append(assoc.send_c_store(ds).get("Status", -1))
                time.sleep(0.05)
        finally:
            assoc.release()


def test_mutated_and_random_pdus_never_stop_the_receiver(fuzz_scp, storage_dir):
    rng = random.Random(SEED + 1)
    request = _association_request(fuzz_scp.port)
    dataset = dataset_bytes(sample_file("CT_small.dcm"))
    honest = HonestSender(fuzz_scp.port)
    honest.start()
    rss_before = _rss_mb()
    rss_half = None
    cases = 0
    halfway = time.monotonic() + SECONDS / 2
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        if rss_half is None and time.monotonic() > halfway:
            rss_half = _rss_mb()
        kind = rng.randrange(7)
        if kind == 0:
            stream = os.urandom(rng.randint(1, 512))  # noise
        elif kind == 1:
            stream = _mutate(rng, request)  # damaged A-ASSOCIATE-RQ
        elif kind == 2:
            # Valid request, then a PDU whose length promises far more than follows.
            stream = request + struct.pack(">BBI", 0x04, 0, rng.randrange(2**20, 2**32)) + b"x"
        elif kind == 3:
            stream = request[: rng.randrange(len(request))]  # truncated
        elif kind == 4:
            # Valid request, then P-DATA with a damaged command set and dataset fragments.
            stream = request + _p_data(os.urandom(rng.randint(0, 200)), header=0x03)
            stream += _p_data(_mutate(rng, dataset)[:4000])
        elif kind == 5:
            # Valid request, then a PDU of an unknown type or a release out of order.
            stream = request + bytes([rng.choice([0x00, 0x08, 0x05, 0x06, 0xFF])]) + os.urandom(9)
        else:
            # Valid request, then a P-DATA announcing gigabytes and really sending megabytes.
            stream = request + struct.pack(">BBI", 0x04, 0, 2**31 + rng.randrange(2**30))
            megabytes = rng.randint(1, 8)
        with socket.create_connection(("127.0.0.1", fuzz_scp.port), timeout=5) as sock:
            try:
                sock.sendall(stream)
                for _ in range(megabytes if kind == 6 else 0):
                    sock.sendall(MEGABYTE)  # one buffer, sent again: the receiver's memory counts
                sock.settimeout(0.5)
                sock.recv(65536)
            except OSError:
                pass  # refused, reset or silent: all fine, as long as the receiver lives on
        cases += 1
        if cases % 20 == 0:
            assert _alive(fuzz_scp.port), f"receiver stopped answering after case {cases}"
    assert _alive(fuzz_scp.port)
    rss_after = _rss_mb()
    honest.stop.set()
    honest.join(timeout=30)
    # The honest association went on unharmed, and only what it sent is stored.
    assert honest.statuses and set(honest.statuses) == {0x0000}
    assert Instance.objects.count() == len(honest.statuses)
    assert len(stored_files(storage_dir)) == len(honest.statuses)
    print(
        f"{cases} hostile connections, seed {SEED + 1}; meanwhile {len(honest.statuses)} "
        f"instances stored by an honest association; resident memory {rss_before:.0f} MB "
        f"before, {rss_half:.0f} MB halfway, {rss_after:.0f} MB after"
    )
    # The first half warms up (a thread per connection, allocator arenas); after that, what
    # the hostile connections send must not accumulate.
    assert rss_after - rss_half < 20, f"memory grew {rss_after - rss_half:.0f} MB in the 2nd half"
    assert cases > 20
