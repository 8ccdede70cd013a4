"""DICOM TLS (PS3.15) with certificates made by the test, against pynetdicom and DCMTK peers."""

import ssl
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage, Verification

from archive.models import Instance
from receiver.config import resolve
from receiver.scp import tls_context
from tests.e2e.test_storescu import SAMPLE_STUDY
from tests.peers import run_dcmtk, scu


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _issue(directory: Path, name: str, ca: str, subject: str, extensions: str) -> None:
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / f"{name}.key",
             "-subj", f"/CN={subject}", "-out", directory / f"{name}.csr")  # fmt: skip
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", directory / f"{name}.csr", "-CA", directory / f"{ca}.pem",
             "-CAkey", directory / f"{ca}.key", "-CAcreateserial", "-days", "2",
             "-extfile", directory / f"{name}.ext", "-out", directory / f"{name}.pem")  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-keyout", directory / f"{ca}.key", "-out", directory / f"{ca}.pem",
                 "-subj", f"/CN=Test {ca}")  # fmt: skip
    _issue(directory, "server", "ca", "localhost",
           "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")  # fmt: skip
    _issue(directory, "client", "ca", "MODALITY", "extendedKeyUsage=clientAuth\n")
    _issue(directory, "rogue", "rogue-ca", "INTRUDER", "extendedKeyUsage=clientAuth\n")
    return directory


@pytest.fixture
def tls_scp(start_scp, pki):
    return start_scp(
        tls_certificate=pki / "server.pem",
        tls_private_key=pki / "server.key",
        tls_ca_certificates=pki / "ca.pem",
        tls_require_client_certificate=True,
    )


def _client_context(pki: Path, certificate: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki / "ca.pem")
    if certificate:
        context.load_cert_chain(pki / f"{certificate}.pem", pki / f"{certificate}.key")
    return context


def test_pynetdicom_client_with_certificate_echoes_and_stores(tls_scp, pki):
    ae = scu()
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1", tls_scp.port, ae_title="TEST_SCP",
        tls_args=(_client_context(pki, "client"), "localhost"),
    )  # fmt: skip
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assert assoc.send_c_store(dcmread(SAMPLE_STUDY / "CT_small.dcm")).Status == 0x0000
    assoc.release()
    assert Instance.objects.count() == 1


def test_client_without_certificate_cannot_associate(tls_scp, pki):
    ae = scu()
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assoc = ae.associate(
        "127.0.0.1", tls_scp.port, ae_title="TEST_SCP",
        tls_args=(_client_context(pki, None), "localhost"),
    )  # fmt: skip
    assert not assoc.is_established


def test_plain_tcp_peer_cannot_associate_with_a_tls_server(tls_scp):
    ae = scu()
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian])
    assert not ae.associate("127.0.0.1", tls_scp.port, ae_title="TEST_SCP").is_established


def test_storescu_over_tls_with_client_certificate_stores(tls_scp, pki):
    result = run_dcmtk(
        "storescu", "+tls", pki / "client.key", pki / "client.pem", "+cf", pki / "ca.pem",
        "-aec", "TEST_SCP", "localhost", tls_scp.port, SAMPLE_STUDY / "CT_small.dcm",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert Instance.objects.get().calling_ae_title == "STORESCU"


def test_storescu_without_certificate_is_refused(tls_scp, pki):
    result = run_dcmtk(
        "storescu", "+tla", "+cf", pki / "ca.pem",
        "-aec", "TEST_SCP", "localhost", tls_scp.port, SAMPLE_STUDY / "CT_small.dcm",
    )  # fmt: skip
    assert result.returncode != 0
    assert not Instance.objects.exists()


def test_storescu_with_certificate_from_another_ca_is_refused(tls_scp, pki):
    result = run_dcmtk(
        "storescu", "+tls", pki / "rogue.key", pki / "rogue.pem", "+cf", pki / "ca.pem",
        "-aec", "TEST_SCP", "localhost", tls_scp.port, SAMPLE_STUDY / "CT_small.dcm",
    )  # fmt: skip
    assert result.returncode != 0
    assert not Instance.objects.exists()


def test_client_certificate_optional_unless_required(start_scp, pki):
    server = start_scp(
        tls_certificate=pki / "server.pem",
        tls_private_key=pki / "server.key",
        tls_ca_certificates=pki / "ca.pem",
    )
    result = run_dcmtk("echoscu", "+tla", "+cf", pki / "ca.pem", "-aec", "TEST_SCP",
                       "localhost", server.port)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_context_allows_tls_1_2_and_later_only(pki):
    context = tls_context(
        resolve({"tls_certificate": pki / "server.pem", "tls_private_key": pki / "server.key"})
    )
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_tls_with_worker_processes(pki, tmp_path):
    from tests.conftest import free_port
    from tests.receiver.test_runscp import runscp, stop, wait_listening

    port = free_port()
    process = runscp(
        port, "TEST_SCP", "--workers", "2", "--bind", "127.0.0.1",
        "--storage-dir", tmp_path / "st", "--index-db", tmp_path / "i.db",
        "--tls-certificate", pki / "server.pem", "--tls-private-key", pki / "server.key",
        "--tls-ca-certificates", pki / "ca.pem", "--tls-require-client-certificate",
    )  # fmt: skip
    wait_listening(port, process)
    for _ in range(2):  # one association to each worker
        result = run_dcmtk(
            "storescu", "+tls", pki / "client.key", pki / "client.pem", "+cf", pki / "ca.pem",
            "-aec", "TEST_SCP", "localhost", port, SAMPLE_STUDY / "CT_small.dcm",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    refused = run_dcmtk(
        "storescu", "+tla", "+cf", pki / "ca.pem",
        "-aec", "TEST_SCP", "localhost", port, SAMPLE_STUDY / "MR_small.dcm",
    )  # fmt: skip
    assert refused.returncode != 0
    code, output = stop(process)
    assert code == 0, output
    assert len(list((tmp_path / "st").rglob("*.dcm"))) == 1  # the same instance twice


def test_query_and_get_over_tls(tls_scp, pki):
    """C-FIND and C-GET (whose C-STOREs travel the other way) on one TLS association."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    ct = dcmread(SAMPLE_STUDY / "CT_small.dcm")
    received = []

    def store(event):
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = scu()
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = ae.associate(
        "127.0.0.1", tls_scp.port, ae_title="TEST_SCP",
        tls_args=(_client_context(pki, "client"), "localhost"),
        ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, store)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ct).Status == 0x0000
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ct.StudyInstanceUID
        found = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
        assert [status.Status for status, _ in found] == [0xFF00, 0x0000]
        got = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        assert got[-1][0].Status == 0x0000
        assert got[-1][0].NumberOfCompletedSuboperations == 1
    finally:
        assoc.release()
    assert received == [ct.SOPInstanceUID]
