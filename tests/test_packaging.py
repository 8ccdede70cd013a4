"""The archive as a library: a wheel built from the repository, installed into a fresh virtual
environment, runs the receiver as `store_scp`, and a minimal research project
(tests/library_project) reads the index it wrote through the shipped router and receives
`study_stable` there."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.peers import send_files
from tests.receiver.test_stable_processes import write_study

ROOT = Path(__file__).resolve().parents[1]


def test_package_dependencies_are_the_pinned_requirements():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    assert sorted(declared) == sorted(pinned)


# Where the installed packages are, and whether migrations, templates and static files came.
INSTALLED_FILES = """
import json, archive, receiver
from pathlib import Path
a, r = Path(archive.__file__).parent, Path(receiver.__file__).parent
print(json.dumps([
    str(a),
    sorted(p.name for p in (a / "migrations").glob("0*.py")),
    (a / "templates/archive/dashboard.html").is_file(),
    (r / "templates/receiver/status.html").is_file(),
    (r / "static/receiver/status.js").is_file(),
]))
"""
# A research app's ORM queries on the index, and an accidental write.
QUERIES = """
import json
from archive.models import Instance, Study
from archive.routers import ArchiveReadOnly
study = Study.objects.get()
paths = list(
    Instance.objects.filter(series__study=study)
    .order_by("instance_number")
    .values_list("path", flat=True)
)
try:
    Study.objects.filter(pk=study.pk).update(description="oops")
    refused = False
except ArchiveReadOnly:
    refused = True
print(json.dumps([study.study_instance_uid, paths, refused]))
"""
RECORDED = """
from stable_log.models import StudyArrival
print([(a.study_instance_uid, a.updated, a.instances) for a in StudyArrival.objects.all()])
"""


def _run(*args, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's Django and database settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DICOM_STORAGE_DIR"}
    }
    return {**env, **extra}


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_environment_and_serves_another_project(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (
        "archive",
        "receiver",
        "pacsproject",
        "audit",
        "accounts",
        "routing",
        "dicomweb",
    ):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = _clean_env()
    # Built in an isolated environment (pip fetches setuptools for it, from PyPI or the cache).
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", source,
         cwd=tmp_path, env=env)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("pacs_receiver-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python, pip = venv / "bin" / "python", venv / "bin" / "pip"
    # Dependencies from PyPI, or from a wheelhouse given in PIP_FIND_LINKS with PIP_NO_INDEX.
    _run(pip, "install", "--quiet", wheel, cwd=tmp_path, env=env)

    installed = json.loads(_run(python, "-c", INSTALLED_FILES, cwd=tmp_path, env=env))
    location, migrations, *data_files = installed
    assert location.startswith(str(venv))  # the installed copy, not this checkout
    assert "0001_initial.py" in migrations and len(migrations) >= 2
    assert data_files == [True, True, True]

    # The classic command line, verbatim but for the port.
    site = tmp_path / "site"
    site.mkdir()
    port = free_port()
    receiver = subprocess.Popen(
        [venv / "bin" / "store_scp", str(port), "MY_PACS", "--storage-dir", "./received",
         "--index-db", "./pacs.db", "--accept", "CT,MR,US"],
        cwd=site, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_listening(port, receiver)
        (tmp_path / "study").mkdir()
        (paths,) = write_study(tmp_path / "study", series=1, per_series=2)
        assert send_files(port, paths, called="MY_PACS") == [0, 0]
        last_sent = time.monotonic()
    finally:
        receiver.send_signal(signal.SIGTERM)
        output, _ = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, output
    index = site / "pacs.db"
    assert index.is_file() and len(list((site / "received").rglob("*.dcm"))) == 2
    # The project's settings serve other commands (the admin, gunicorn) from the install.
    _run(venv / "bin" / "django-admin", "check", "--settings", "pacsproject.settings",
         cwd=site, env={**env, "DATABASE_URL": f"sqlite:///{index}"})  # fmt: skip

    # The research project next to it: its own database, the index as a second one.
    project = tmp_path / "research"
    shutil.copytree(ROOT / "tests" / "library_project", project, ignore=ignore)
    project_env = _clean_env(RESEARCH_DB=str(tmp_path / "research.db"), PACS_INDEX=str(index))
    manage = (python, project / "manage.py")
    _run(*manage, "migrate", "--verbosity", "0", cwd=project, env=project_env)
    queried = json.loads(
        _run(*manage, "shell", "--no-imports", "-c", QUERIES, cwd=project, env=project_env)
    )
    study_uid, paths_in_index, refused = queried
    assert len(paths_in_index) == 2 and all(p.endswith(".dcm") for p in paths_in_index)
    assert refused

    # study_stable in this project's process, announced by its own announce_stable.
    time.sleep(max(0.0, last_sent + 3.0 - time.monotonic()))  # the stable age, 1 s, and slack
    announced = _run(*manage, "announce_stable", "--stable-age", "1", cwd=project, env=project_env)
    assert announced.strip() == "1 series, 1 studies announced"
    again = _run(*manage, "announce_stable", "--stable-age", "1", cwd=project, env=project_env)
    assert again.strip() == "0 series, 0 studies announced"
    recorded = _run(*manage, "shell", "--no-imports", "-c", RECORDED, cwd=project, env=project_env)
    assert recorded.strip() == repr([(study_uid, False, 2)])


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"store_scp exited early:\n{process.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail("store_scp did not start listening")


def test_store_scp_is_runscp():
    # The console script's target, as the installed package calls it.
    help_text = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv = ['store_scp', '--help'];"
         "from pacsproject.cli import store_scp; store_scp()"],
        cwd=ROOT, env=_clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr
    assert re.search(r"usage: store_scp runscp .*port.*ae_title", help_text.stdout, re.S)
    assert "--stable-age" in help_text.stdout
