"""`manage.py check --deploy` with production settings from the environment."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check_deploy(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "HTTPS"}}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_pass_the_deploy_check():
    result = _check_deploy(
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="false",
        HTTPS="true",
        ALLOWED_HOSTS="pacs.example.org",
    )
    assert result.returncode == 0, result.stderr


def test_a_weak_key_fails_the_deploy_check():
    result = _check_deploy(
        SECRET_KEY="django-insecure-x",
        DEBUG="false",
        HTTPS="true",
        ALLOWED_HOSTS="pacs.example.org",
    )
    assert result.returncode != 0
    assert "security.W009" in result.stderr  # SECRET_KEY


def test_plain_http_fails_the_deploy_check():
    result = _check_deploy(SECRET_KEY=secrets.token_urlsafe(50), DEBUG="false")
    assert result.returncode != 0
    assert "SESSION_COOKIE_SECURE" in result.stderr
