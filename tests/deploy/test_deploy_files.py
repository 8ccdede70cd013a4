"""deploy/: the systemd units pass `systemd-analyze verify`, the HAProxy configuration passes
`haproxy -c`, and the DICOM health check tells a live node from a dead one."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.echo_check import echo_check
from tests.conftest import free_port
from tests.peers import system_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ("pacs-receiver.service", "pacs-web.service")


def test_systemd_units_verify(tmp_path):
    analyze = system_tool("systemd-analyze", "systemd")
    # A root where the units' programs exist as /opt/pacs would hold them, with the system's
    # own units (sysinit.target, ...) beside ours.
    root = tmp_path / "root"
    bin_dir = root / "opt/pacs/.venv/bin"
    bin_dir.mkdir(parents=True)
    for program in ("python", "gunicorn"):
        (bin_dir / program).write_text("#!/bin/sh\n")
        (bin_dir / program).chmod(0o755)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(DEPLOY / unit, units / unit)
    result = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            f"--root={root}",
            *(f"/etc/systemd/system/{u}" for u in UNITS),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # systemd only warns about bad values


@pytest.mark.parametrize("unit", UNITS)
def test_units_are_hardened_and_drain_on_sigterm(unit):
    text = (DEPLOY / unit).read_text()
    for line in (
        "User=pacs",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ReadWritePaths=/var/lib/pacs",
    ):
        assert line in text.splitlines(), line


def test_haproxy_configuration_is_valid():
    haproxy = system_tool("haproxy", "haproxy")
    environment = {
        **os.environ,
        "PACS_FRONT": "127.0.0.1:11112",
        "PACS_NODE1": "127.0.0.1:11113",
        "PACS_NODE2": "127.0.0.1:11114",
    }
    result = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_echo_check_tells_live_from_dead(start_scp):
    plain = start_scp()
    assert echo_check("127.0.0.1", plain.port, called="TEST_SCP")
    assert not echo_check("127.0.0.1", free_port(), called="TEST_SCP", timeout=2)
    proxied = start_scp(proxy_protocol=True, proxy_addresses=("127.0.0.1",))
    assert echo_check("127.0.0.1", proxied.port, called="TEST_SCP", proxy_v2=True)
    assert not echo_check("127.0.0.1", proxied.port, called="TEST_SCP", timeout=2)
    command = [sys.executable, "-m", "receiver.echo_check", "127.0.0.1", str(plain.port)]
    run = subprocess.run(
        [*command, "--aec", "TEST_SCP"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.django_db(transaction=True)
def test_haproxy_runs_the_dicom_health_check(start_scp):
    from receiver.models import AssociationLog
    from tests.peers import eventually

    haproxy = system_tool("haproxy", "haproxy")
    scp = start_scp(proxy_protocol=True, proxy_addresses=("127.0.0.1",))
    process = subprocess.Popen(
        [haproxy, "-db", "-f", str(DEPLOY / "haproxy-dicom-check.cfg")],
        env={
            **os.environ,
            "PACS_FRONT": f"127.0.0.1:{free_port()}",
            "PACS_NODE1": f"127.0.0.1:{scp.port}",
            "PACS_NODE2": f"127.0.0.1:{scp.port}",
            "PACS_CHECK": str(DEPLOY / "dicom-check"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The checks' C-ECHO associations reach the node, announced as HAProxy's own (LOCAL).
        assert eventually(
            lambda: AssociationLog.objects.filter(
                calling_ae_title="HEALTH_CHECK", outcome="released"
            ).exists(),
            timeout=20,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
