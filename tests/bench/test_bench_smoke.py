"""The benchmark itself works: a tiny run against our SCP and DCMTK's (not a timed test)."""

import subprocess
import sys
from pathlib import Path

from tests.peers import dcmtk_tool

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_stores_everything_and_prints_the_table(tmp_path):
    dcmtk_tool("storescp")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--count", "24", "--repeat", "1",
         "--associations", "1", "2", "--peers", "ours", "dcmtk", "--workers", "2",
         "--out", str(tmp_path)],
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
