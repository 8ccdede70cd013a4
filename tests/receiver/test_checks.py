"""runscp runs Django's system checks and the receiver's own before it serves."""

import subprocess
import sys

import pytest
from django.core import checks
from django.core.management import call_command

from receiver import checks as receiver_checks
from receiver import server, transport
from receiver.config import resolve
from tests.conftest import free_port
from tests.receiver.test_runscp import ROOT


def runscp_fails(*args) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runscp", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stderr.strip()


def test_storage_under_a_file_stops_the_start_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    output = runscp_fails(
        free_port(), "X", "--storage-dir", blocker / "received", "--index-db", tmp_path / "i.db"
    )
    assert output.count("\n") == 0
    assert "cannot write to storage directory" in output and "(receiver.E002)" in output


def test_unusable_tls_files_stop_the_start(tmp_path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    output = runscp_fails(
        free_port(),
        "X",
        "--storage-dir",
        tmp_path / "received",
        "--index-db",
        tmp_path / "i.db",
        "--tls-certificate",
        bogus,
        "--tls-private-key",
        bogus,
    )
    assert "(receiver.E005)" in output


def test_receiver_checks_are_registered_with_django():
    registered = checks.registry.registry.get_checks()
    for check in (
        receiver_checks.pynetdicom_version_check,
        receiver_checks.storage_writable_check,
        receiver_checks.tls_files_check,
    ):
        assert check in registered
    call_command("check", tags=[receiver_checks.TAG])  # raises SystemCheckError on an error


def test_other_pynetdicom_version_is_a_check_error(monkeypatch):
    monkeypatch.setattr(transport, "pynetdicom_version", lambda: "9.9.9")
    (error,) = receiver_checks.pynetdicom_version_check()
    assert error.id == "receiver.E001"
    assert "pynetdicom 9.9.9 is installed" in error.msg


@pytest.mark.django_db(transaction=True)
def test_prepare_runs_every_registered_check_against_the_served_configuration(tmp_path):
    seen = []

    def project_check(app_configs=None, **kwargs):
        seen.append(receiver_checks._config().storage_dir)
        return [checks.Error("something is wrong", id="project.E999")]

    checks.register(project_check, "project")
    try:
        config = resolve({"storage_dir": tmp_path / "served", "port": free_port()})
        with pytest.raises(server.StartupError, match=r"something is wrong \(project.E999\)"):
            server.system_check(config)
    finally:
        checks.registry.registry.registered_checks.discard(project_check)
    assert seen == [(tmp_path / "served").resolve()]
