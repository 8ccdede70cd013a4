"""One configuration for every command: management commands, the shell and the web pages run
in subprocesses whose environment names only DICOM_CONFIG (or passes `--config`), and see the
receiver's database and storage directory."""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pacsproject.site_config import config_option_take
from receiver.config import workers_auto
from tests.conftest import free_port, sample_file
from tests.peers import eventually, send_files
from tests.receiver.test_runscp import wait_listening

ROOT = Path(__file__).resolve().parents[2]


def clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_", "DATABASE_URL"))}
    return {**env, **extra}


def manage(*args: str | Path, env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *map(str, args)],
        cwd=kwargs.pop("cwd", ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


def site_file(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "site" / "store_scp.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            server: {{port: {port}, ae_title: SITE_PACS, bind: 127.0.0.1}}
            storage: {{directory: ../data/dicom}}
            database: {{path: ../data/index.db}}
            access:
              allowed_aes:
                - ae_title: FILE_SCANNER
                  host: 10.0.0.0/8
            """
        )
        + extra
    )
    return path


@pytest.fixture
def site_with_one_instance(tmp_path):
    """A configuration file, and a receiver that ran from it (DICOM_CONFIG only) and stored CT."""
    port = free_port()
    config = site_file(tmp_path, port)
    env = clean_environment(DICOM_CONFIG=str(config))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscp"],
        cwd=tmp_path,  # not the project: nothing may depend on the working directory
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_listening(port, process)
    assert send_files(port, [sample_file("CT_small.dcm")], called="SITE_PACS") == [0]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert (tmp_path / "data" / "index.db").is_file()
    return config, env


def test_every_command_reads_database_and_storage_from_dicom_config(
    site_with_one_instance, tmp_path
):
    _, env = site_with_one_instance
    verified = manage("verifystorage", env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "indexed instances checked: 1" in verified.stdout
    assert "orphan files (not indexed): 0" in verified.stdout

    stats = manage("storagestats", env=env)
    assert "instances  1" in stats.stdout, stats.stderr

    status = manage("scpstatus", "--json", env=env)
    receivers = json.loads(status.stdout)["receivers"]
    # Ended by SIGTERM in the fixture: stopped, not "down"; a row for each worker (the default
    # is one per core).
    assert [(r["ae_title"], r["state"]) for r in receivers] == [
        ("SITE_PACS", "stopped")
    ] * workers_auto()

    created = manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "admin",
        "--email",
        "a@example.org",
        env={**env, "DJANGO_SUPERUSER_PASSWORD": "a-long-password-1"},
    )
    assert created.returncode == 0, created.stderr
    shell = manage(
        "shell",
        "-v",
        "0",
        "-c",
        "from django.conf import settings; from django.contrib.auth.models import User; "
        "from archive.models import Instance; "
        "print(settings.DICOM_STORAGE_DIR, settings.DICOM_AE_TITLE, "
        "User.objects.filter(username='admin').count(), Instance.objects.count())",
        env=env,
    )
    assert shell.stdout.split() == [str(tmp_path / "data" / "dicom"), "SITE_PACS", "1", "1"]


def test_config_option_on_any_command_is_the_same_as_dicom_config(site_with_one_instance):
    config, _ = site_with_one_instance
    without = clean_environment()
    verified = manage("verifystorage", "--config", config, env=without)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "indexed instances checked: 1" in verified.stdout
    shell = manage(
        f"--config={config}",
        "shell",
        "-v",
        "0",
        "-c",
        "from archive.models import Instance; print(Instance.objects.count())",
        env=without,
    )
    assert shell.stdout.strip() == "1", shell.stderr


def test_web_pages_read_the_files_where_the_file_says(site_with_one_instance, tmp_path):
    """What gunicorn serves (pacsproject.wsgi, the same settings) through Django's test client:
    download, preview and header of the instance the receiver stored."""
    _, env = site_with_one_instance
    script = textwrap.dedent(
        """
        import django, os, sys
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacsproject.settings")
        from pacsproject.wsgi import application  # what gunicorn loads
        from django.contrib.auth.models import User
        from django.test import Client
        from archive.models import Instance
        User.objects.create_superuser("web", "w@example.org", "pw")
        client = Client(HTTP_HOST="localhost")
        client.login(username="web", password="pw")
        instance = Instance.objects.get()
        base = f"/admin/archive/instance/{instance.pk}"
        download = client.get(f"{base}/file.dcm")
        preview = client.get(f"{base}/preview.png")
        page = client.get(f"{base}/change/")
        print(download.status_code, len(b"".join(download.streaming_content)))
        print(preview.status_code, preview["Content-Type"])
        print(page.status_code, b"(0010,0020)" in page.content, b"Errno" in page.content)
        aes = client.get("/admin/receiver/allowedae/").content.decode()
        print('<tr class="from-file"><td>FILE_SCANNER</td><td>10.0.0.0/8</td>' in aes)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    stored = next((tmp_path / "data" / "dicom").rglob("*.dcm"))
    download, preview, page, file_aes = result.stdout.splitlines()
    assert download == f"200 {stored.stat().st_size}"
    assert preview == "200 image/png"
    assert page == "200 True False"
    assert file_aes == "True"  # the file's access rules, shown beside the admin's


def test_a_mistake_in_the_file_stops_every_command_with_one_line(tmp_path):
    config = site_file(tmp_path, 11112, "storage_typo: {}\n")
    for command in (
        ["verifystorage"],
        ["shell", "-v", "0", "-c", "print(1)"],
        ["runscp", "--check-config"],
    ):
        result = manage(*command, env=clean_environment(DICOM_CONFIG=str(config)))
        assert result.returncode != 0
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert f"{config}: unknown section 'storage_typo'" in lines[0]


def test_check_config_shows_precedence_with_dicom_config(tmp_path):
    config = site_file(tmp_path, 4242)
    env = clean_environment(DICOM_CONFIG=str(config), DICOM_DUPLICATES="reject")
    result = manage("runscp", "5555", "--check-config", env=env)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert f"configuration file               {config}" in result.stdout
    assert lines["port"].endswith("[command line]")
    assert lines["ae_title"].endswith(f"[file {config}]")
    assert lines["duplicates"].endswith("[environment]")
    assert str(tmp_path / "data" / "index.db") in lines["index_db"]
    assert lines["naming"].endswith("[default]")


def test_database_url_in_the_file_wins_over_the_environment(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{tmp_path}/from-file.db'}}\n")
    env = clean_environment(DICOM_CONFIG=str(config), DATABASE_URL="sqlite:////nonexistent/x.db")
    show = "from django.conf import settings; print(settings.DATABASES['default'])"
    result = manage("shell", "-v", "0", "-c", show, env=env)
    assert f"{tmp_path}/from-file.db" in result.stdout, result.stderr


def test_config_option_is_taken_from_any_position():
    environ: dict[str, str] = {}
    argv = config_option_take(
        ["manage.py", "verifystorage", "--config", "site.yaml", "--quick"], environ
    )
    assert argv == ["manage.py", "verifystorage", "--quick"]
    assert environ["DICOM_CONFIG"] == str(Path("site.yaml").resolve())
    assert config_option_take(["m", "runscp", "--check-config"], environ) == [
        "m",
        "runscp",
        "--check-config",
    ]


def test_a_moved_storage_directory_is_refused_until_relocated(site_with_one_instance, tmp_path):
    """The issue's case through the real commands: storage.directory changed to a new folder
    (the files copied there without the marker), index kept."""
    config, env = site_with_one_instance
    old, new = tmp_path / "data" / "dicom", tmp_path / "moved"
    shutil.copytree(old, new, ignore=shutil.ignore_patterns(".pacs-storage.json", ".incoming"))
    config.write_text(config.read_text().replace("../data/dicom", str(new)))

    refused = manage("runscp", env=env)
    assert refused.returncode != 0
    line = (refused.stdout + refused.stderr).strip()
    assert "\n" not in line, line
    assert f"describes storage {old} (1 instance), but storage {new} has no marker" in line
    assert f"verifystorage --relocate {new}" in line

    verified = manage("verifystorage", env=env)
    assert f"warning: storage {new} is not the storage this index describes" in verified.stderr
    relocated = manage("verifystorage", "--relocate", new, env=env)
    assert relocated.returncode == 0, relocated.stdout + relocated.stderr
    assert f"the index's storage is now {new}" in relocated.stdout
    assert manage("verifystorage", env=env).stderr == ""

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runscp"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    port = int(config.read_text().split("port: ")[1].split(",")[0])
    wait_listening(port, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"Storage {new} is the index's storage" in output


def test_gunicorn_explains_a_refused_host_in_its_log(tmp_path):
    """README's gunicorn command with ALLOWED_HOSTS copied as is: a request for another host
    gets 400, and gunicorn's log says which host was refused."""
    port = free_port()
    env = clean_environment(
        DICOM_CONFIG=str(site_file(tmp_path, 11112)), ALLOWED_HOSTS="pacs.example.org"
    )
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    server = subprocess.Popen(
        [gunicorn, "pacsproject.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def status(host: str) -> int | None:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/admin/login/", headers={"Host": host})
                return connection.getresponse().status
            except OSError:
                return None

        assert eventually(lambda: status("pacs.example.org") == 200, timeout=30)
        assert status("10.1.2.3") == 400
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert "django.security.DisallowedHost: Invalid HTTP_HOST header: '10.1.2.3'" in output


def test_gunicorn_with_a_bad_file_stops_with_one_line_naming_the_key(tmp_path):
    config = tmp_path / "site.yaml"
    config.write_text("storage:\n  directroy: ./received\n")
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    run = subprocess.run(
        [gunicorn, "pacsproject.wsgi", "--bind", f"127.0.0.1:{free_port()}", "--workers", "1"],
        cwd=ROOT,
        env=clean_environment(DICOM_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert f"Configuration error: {config}: unknown key storage.directroy" in run.stderr
    assert "Traceback" not in run.stderr
