"""The benchmark itself works: a tiny run against our SCP and DCMTK's (not a timed test)."""

import os
import pstats
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import dcmtk_tool, system_tool

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_stores_everything_and_prints_the_table(tmp_path):
    dcmtk_tool("storescp")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--count", "24", "--repeat", "1",
         "--associations", "1", "2", "--peers", "ours", "dcmtk", "--workers", "2",
         "--header", "scanner", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ours")]
    assert len(rows) == 2
    for line in result.stdout.splitlines():
        if line.startswith(("| ours", "| dcmtk")):
            assert "| 24/24 |" in line, line
            # p50 comes from the separate run with clients logging each C-STORE.
            assert float(line.split("|")[5]) > 0, line
    # Rates from quiet clients, and what a reader needs to repeat the figures.
    assert "cores;" in result.stdout and "at WARN level for the rates" in result.stdout
    assert "$ " in result.stdout and "bench/run.py --count 24" in result.stdout
    assert "scanner header" in result.stdout


def test_postgresql_pair_smoke_run_stores_everything(tmp_path):
    """ours-pg against Orthanc's PostgreSQL index plugin and against itself with every commit
    flushed, and two nodes of ours behind HAProxy, on the suite's PostgreSQL run."""
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith(("postgres://", "postgresql://")):
        pytest.skip("runs with the suite on PostgreSQL (DATABASE_URL=postgres://...)")
    system_tool("Orthanc", "orthanc")
    if not Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so").exists():
        message = "Orthanc's PostgreSQL plugin is not installed (Debian package orthanc-postgresql)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    system_tool("haproxy", "haproxy")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--count", "24", "--repeat", "1",
         "--associations", "1", "--peers", "ours-pg", "ours-pg-full", "orthanc-pg",
         "ours-2nodes",
         "--pg-url", database_url,
         "--latency-count", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("| ours-pg", "| orthanc-pg", "| ours-2nodes"))
    ]
    assert len(rows) == 4, result.stdout
    assert all("| 24/24 |" in line for line in rows), rows
    assert "ours-pg ÷ orthanc-pg at 1 association(s)" in result.stdout
    assert "ours-pg-full ÷ ours-pg at 1 association(s)" in result.stdout
    assert "ours-2nodes (HAProxy, 2 nodes) ÷ ours-pg (1 node) at 1" in result.stdout


def test_forwarding_benchmark_smoke_run_delivers_both_ways(tmp_path):
    dcmtk_tool("storescp")
    system_tool("Orthanc" if not Path("/usr/sbin/Orthanc").is_file() else "true", "orthanc")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "forward.py"), "--count", "6", "--pixels", "64",
         "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "64x64 CT" in result.stdout


def test_ingest_service_benchmark_runs_with_a_forwarding_rule():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_service.py"), "--count", "8", "--series",
         "2", "--repeat", "1", "--forwarding-rule"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SQL statements per instance" in result.stdout


def test_ingest_service_profile_holds_the_store_loop_alone(tmp_path: Path) -> None:
    profile = tmp_path / "ingest.prof"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest_service.py"), "--count", "8", "--series",
         "2", "--repeat", "1", "--profile", str(profile)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    calls = {
        function: primitive_calls
        for (_, _, function), (primitive_calls, *_) in pstats.Stats(str(profile)).stats.items()
    }
    assert calls["instance_store"] == 8
    assert "corpus" not in calls  # building the instances is not part of what is measured
