"""Real DICOM peers for the tests: pynetdicom's SCU, hand-driven DIMSE, and DCMTK's tools."""

import io
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

# Send files' datasets exactly as they are on disk, so stored bytes can be compared to them.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after the file meta group."""
    raw = Path(path).read_bytes()
    assert raw[128:132] == b"DICM", f"{path} is not a Part 10 file"
    group, element, vr, _ = struct.unpack("<HH2sH", raw[132:140])
    assert (group, element, vr) == (2, 0, b"UL")
    (group_length,) = struct.unpack("<I", raw[140:144])
    return raw[144 + group_length :]


def transfer_syntax(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def scu(ae_title: str = "TEST_SCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def send_files(
    port: int,
    paths: Iterable[Path],
    called: str = "TEST_SCP",
    calling: str = "TEST_SCU",
    source: str | None = None,
) -> list[int]:
    """Send each file over one association, each in its own transfer syntax; return statuses.
    `source`: the local address to connect from (another loopback address than a flood's)."""
    paths = list(paths)
    ae = scu(calling)
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(meta.SOPClassUID, [transfer_syntax(path)])
    bind = (source, 0) if source else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called, bind_address=bind)
    assert assoc.is_established, "association was not accepted"
    try:
        statuses = []
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(status.Status if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


def send_dataset(
    port: int, ds: Dataset, called: str = "TEST_SCP", calling: str = "TEST_SCU"
) -> int:
    ae = scu(calling)
    ae.add_requested_context(ds.SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return status.Status if "Status" in status else -1
    finally:
        assoc.release()


@contextmanager
def reactor_paused(assoc) -> Iterator[None]:
    """Pause an SCU association's reactor, as pynetdicom's own send_c_*() do: what the peer
    sends meanwhile (a response, an A-ABORT) stays for us to read, not for the reactor to
    take as unexpected (and, for an A-ABORT, to close the connection on)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def send_raw(
    port: int,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    payload: bytes,
    syntax: str = ExplicitVRLittleEndian,
) -> int:
    """Send `payload` as the C-STORE dataset, whatever it holds, with the given request UIDs;
    return the response status, or -1 if no response came."""
    ae = scu()
    ae.add_requested_context(sop_class_uid, [syntax, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    try:
        context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class_uid)
        request = _store_request(sop_class_uid, sop_instance_uid, payload)
        with reactor_paused(assoc):
            assoc.dimse.send_msg(request, context.context_id)
            _, response = assoc.dimse.get_msg(block=True)
        if response is None:
            return -1  # the association ended without a response
        return response.Status
    finally:
        assoc.release()


def send_partial_then_abort(
    port: int, *, sop_class_uid: str, sop_instance_uid: str, payload: bytes
) -> None:
    """Send the command and the first half of the dataset's fragments, then A-ABORT."""
    ae = scu()
    ae.add_requested_context(sop_class_uid, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    message = C_STORE_RQ()
    message.primitive_to_message(_store_request(sop_class_uid, sop_instance_uid, payload))
    fragments = list(message.encode_msg(context.context_id, 1024))
    assert len(fragments) > 4
    for fragment in fragments[: len(fragments) // 2]:
        assoc.dul.send_pdu(fragment)
    assoc.abort()


def _store_request(sop_class_uid: str, sop_instance_uid: str, payload: bytes) -> C_STORE:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(payload)
    return request


def eventually(check, timeout: float = 10.0) -> bool:
    """Whether `check()` becomes true within `timeout` seconds (for effects that follow an
    event in another thread or process, such as a freed association place)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def system_tool(name: str, package: str) -> str:
    """Path of a program from a Debian package; under CI a missing one is a failure, elsewhere
    a skip."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def dcmtk_tool(name: str) -> str:
    """Path of a DCMTK tool."""
    return system_tool(name, "dcmtk")


def run_dcmtk(name: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a DCMTK tool with Nagle off (Debian's build otherwise waits ~40 ms per message)."""
    return subprocess.run(
        [dcmtk_tool(name), *map(str, args)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
