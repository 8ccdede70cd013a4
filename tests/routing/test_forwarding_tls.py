"""Forwarding to a destination with TLS on: DCMTK storescp +tls, certificates made by the test.
The archive presents its own certificate (tls.certificate) as client certificate, which
storescp requires, and verifies the destination's against tls.ca_certificates."""

import ssl
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from receiver.config import ForwardingEntry, RemoteAEEntry
from routing import forwarding, scu
from routing.models import ForwardItem
from tests.peers import dataset_bytes, eventually
from tests.peers import scu as scu_ae
from tests.receiver.test_tls import _issue, _openssl
from tests.routing.test_forwarding import StoreSCP, all_sent, datasets, stored_dataset

SERVER = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
# A DICOM node's certificate: the archive is a server to modalities, a client to destinations.
NODE = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", directory / f"{ca}.key", "-out", directory / f"{ca}.pem",
                 "-subj", f"/CN=Test {ca}")  # fmt: skip
    _issue(directory, "dest", "ca", "localhost", SERVER)
    _issue(directory, "archive", "ca", "localhost", NODE)
    _issue(directory, "impostor", "rogue-ca", "localhost", SERVER)
    return directory


@pytest.fixture(autouse=True)
def fresh_client_context(monkeypatch):
    # The receiver configures the process's outgoing TLS side; no test leaves it to the next.
    monkeypatch.setattr(scu, "_client_context", None)
    monkeypatch.setattr(forwarding, "FIRST_BACKOFF", 0.2)
    monkeypatch.setattr(forwarding, "MAX_BACKOFF", 1.0)
    forwarding._down.clear()
    yield
    forwarding.forwarding_rules_forget()


def tls_storescp(folder: Path, pki: Path, certificate: str) -> StoreSCP:
    # +tls key certificate; +cf: the CA that client certificates must chain to (storescp
    # requires one by default, --require-peer-cert).
    return StoreSCP(
        folder,
        "+tls", str(pki / f"{certificate}.key"), str(pki / f"{certificate}.pem"),
        "+cf", str(pki / "ca.pem"),
    )  # fmt: skip


def start_tls_archive(start_scp, pki: Path, dest_port: int):
    return start_scp(
        tls_certificate=pki / "archive.pem",
        tls_private_key=pki / "archive.key",
        tls_ca_certificates=pki / "ca.pem",
        remote_aes=(RemoteAEEntry("DEST", "127.0.0.1", dest_port, tls=True),),
        forwarding=(ForwardingEntry("DEST"),),
    )


def send_tls(port: int, pki: Path, items) -> list[int]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki / "ca.pem")
    ae = scu_ae("MODALITY")
    ae.add_requested_context(items[0].SOPClassUID, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="TEST_SCP", tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in items]
    finally:
        assoc.release()


def test_storescp_with_tls_receives_each_instance_bit_for_bit(
    start_scp, storage_dir, pki, tmp_path
):
    dest = tls_storescp(tmp_path / "dest", pki, "dest")
    try:
        scp = start_tls_archive(start_scp, pki, dest.port)
        items = datasets(3)
        for ds in items:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert send_tls(scp.port, pki, items) == [0] * 3
        assert eventually(lambda: len(dest.received()) == 3 and all_sent(), timeout=30), list(
            ForwardItem.objects.values_list("state", "last_error")
        )
        for uid, path in dest.received().items():
            assert dataset_bytes(path) == stored_dataset(storage_dir, uid)
    finally:
        dest.stop()


def test_destination_with_a_certificate_of_another_ca_gets_nothing(start_scp, pki, tmp_path):
    dest = tls_storescp(tmp_path / "dest", pki, "impostor")
    try:
        scp = start_tls_archive(start_scp, pki, dest.port)
        items = datasets(1)
        items[0].file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert send_tls(scp.port, pki, items) == [0]
        assert eventually(
            lambda: (
                "CERTIFICATE_VERIFY_FAILED"
                in (ForwardItem.objects.values_list("last_error", flat=True).first() or "")
            ),
            timeout=20,
        )
        assert not dest.received()
        assert ForwardItem.objects.get().state == ForwardItem.PENDING  # retried, not dropped
    finally:
        dest.stop()
