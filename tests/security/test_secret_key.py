"""SECRET_KEY without the environment: a random key made once, kept 0600, shared by every
process; the key that used to be in our source signs nothing any more."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.messages import constants
from django.contrib.messages.storage.base import Message
from django.contrib.messages.storage.cookie import CookieStorage
from django.test import override_settings

from pacsproject.secret_key import secret_key_from_file

ROOT = Path(__file__).resolve().parents[2]
_PUBLISHED_KEY = "django-insecure-development-key-set-SECRET_KEY-in-production"
_PRINT_KEY = (
    "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
)


def _env(**extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "HTTPS"}}
    return {**clean, "DJANGO_SETTINGS_MODULE": "pacsproject.settings", **extra}


def test_processes_started_at_once_share_one_generated_key(tmp_path):
    key_file = tmp_path / "keys" / "secret-key"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PRINT_KEY],
            cwd=ROOT,
            env=_env(SECRET_KEY_FILE=str(key_file)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    keys = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert len(keys) == 1
    (key,) = keys
    assert len(key) >= 50 and not key.startswith("django-insecure")
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in key_file.parent.iterdir()] == ["secret-key"]  # no leftovers


def test_the_kept_key_survives_a_restart(tmp_path):
    key_file = tmp_path / "secret-key"
    assert secret_key_from_file(key_file) == secret_key_from_file(key_file)


def test_a_key_file_readable_by_others_stops_the_start_naming_the_key(tmp_path):
    key_file = tmp_path / "secret-key"
    secret_key_from_file(key_file)
    key_file.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=_env(SECRET_KEY_FILE=str(key_file)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"SECRET_KEY_FILE: {key_file} is readable by others (mode -rw-r--r--); chmod 600 {key_file}"
    ]


def test_a_place_where_no_file_can_be_made_stops_the_start_naming_the_key(tmp_path):
    not_a_directory = tmp_path / "plain-file"
    not_a_directory.write_text("")
    with pytest.raises(SystemExit, match=r"SECRET_KEY_FILE: cannot (read|create)"):
        secret_key_from_file(not_a_directory / "secret-key")


def test_generated_key_passes_the_deploy_check(tmp_path):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_env(
            SECRET_KEY_FILE=str(tmp_path / "secret-key"),
            DEBUG="false",
            HTTPS="true",
            ALLOWED_HOSTS="pacs.example.org",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.django_db
def test_a_messages_cookie_signed_with_the_published_key_is_ignored(admin_client):
    """The probe's attack: HTML in a `messages` cookie signed with the key our source used to
    carry rendered in a logged-in admin."""
    with override_settings(SECRET_KEY=_PUBLISHED_KEY):
        forged = CookieStorage(request=None)._encode(
            [Message(constants.INFO, "<script>alert(1)</script>x", "safe")]
        )
    admin_client.cookies["messages"] = forged
    page = admin_client.get("/admin/").content.decode()
    assert "alert(1)" not in page
    # The same message signed with the key in use is shown (escaped): the test can tell.
    admin_client.cookies["messages"] = CookieStorage(request=None)._encode(
        [Message(constants.INFO, "<script>alert(1)</script>x", "safe")]
    )
    page = admin_client.get("/admin/").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;x" in page and "<script>alert(1)" not in page
