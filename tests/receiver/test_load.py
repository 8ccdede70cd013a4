"""More senders than places: never more than the limit at a time, the rest refused cleanly,
all accepted data intact, and nothing that grows with every burst."""

import copy
import os
import threading
import time
from collections import Counter

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from archive.models import Instance
from tests.conftest import sample_file, stored_files
from tests.peers import eventually, scu


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _burst(port: int, senders: int) -> tuple[Counter, int]:
    """`senders` associations at once, each storing 3 instances and holding its place 1.5 s.
    Returns the outcomes and the most associations held at the same time."""
    base = dcmread(sample_file("CT_small.dcm"))
    outcomes: Counter = Counter()
    holding = [0, 0]  # now, most at once
    lock = threading.Lock()
    start = threading.Barrier(senders)

    def sender() -> None:
        ae = scu()
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        start.wait()
        assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
        if not assoc.is_established:
            with lock:
                outcomes["rejected" if assoc.is_rejected else "failed"] += 1
            return
        with lock:
            holding[0] += 1
            holding[1] = max(holding)
        for _ in range(3):
            ds = copy.deepcopy(base)
            ds.SOPInstanceUID = generate_uid()
            assert assoc.send_c_store(ds).Status == 0x0000
        time.sleep(1.5)
        with lock:
            holding[0] -= 1
            outcomes["served"] += 1
        assoc.release()

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, holding[1]


def _files_after_a_query() -> int:
    Instance.objects.count()  # a lock and unlock lets SQLite close what it can
    return _open_files()


def test_fifty_senders_against_a_limit_of_ten(start_scp, storage_dir):
    server = start_scp(max_associations=10)
    threads_before, files_before = threading.active_count(), _files_after_a_query()

    for _ in range(2):
        outcomes, most = _burst(server.port, 50)
        # The senders of one test process do not all arrive at the same instant, so more than
        # ten may be served in turn; never more than ten at a time, the rest refused cleanly.
        assert most == 10
        assert outcomes["served"] + outcomes["rejected"] == 50 and outcomes["rejected"] > 0
        served = outcomes["served"]
        assert eventually(lambda: threading.active_count() <= threads_before)
        # SQLite keeps the descriptors of closed connections of a busy file for reuse (about one
        # per connection that was open at the same time); a leak of one per association would
        # pass this bound in the second burst.
        assert eventually(lambda: _files_after_a_query() <= files_before + 50), _open_files()
        assert Instance.objects.count() == 3 * served
        assert len(stored_files(storage_dir)) == 3 * served
        Instance.objects.all().delete()  # the next burst counts afresh
        for path in stored_files(storage_dir):
            path.unlink()
