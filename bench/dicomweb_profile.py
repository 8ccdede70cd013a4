"""Where STOW-RS and WADO-RS spend their CPU: one request of each under cProfile, in process
(Django's test client, the views and services as gunicorn runs them, no sockets), on a fresh
SQLite index and storage directory. Relative figures only: not a timing benchmark.

    python bench/dicomweb_profile.py                      # 100 instances of 512x512
    python bench/dicomweb_profile.py --count 20 --top 15  # smaller

Prints the functions with the most time of their own, and the most time below them, for a
STOW-RS of the study (one multipart body) and a WADO-RS of it (transfer-syntax=*), then for a
WADO-RS in the default transfer syntax (explicit VR little endian).
"""

import argparse
import base64
import cProfile
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100, help="instances in the study")
    parser.add_argument("--pixels", type=int, default=512)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomweb-profile-"))
    os.environ.update(
        DATABASE_URL=f"sqlite:///{work / 'index.db'}",
        DICOM_STORAGE_DIR=str(work / "store"),
        SECRET_KEY="profile-secret-key-0123456789abcdefghijklmnopqrstuv",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="pacsproject.settings",
    )
    os.environ.pop("DICOM_CONFIG", None)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from bench.qr import study_write

    call_command("migrate", verbosity=0)
    User.objects.create_superuser("profile", "p@example.org", "profile-password-1")
    keys = study_write(args.count, args.pixels, work / "corpus", tag="PF")
    files = sorted((work / "corpus").glob("*.dcm"))
    body = io.BytesIO()
    for path in files:
        body.write(b"--PROFILE\r\nContent-Type: application/dicom\r\n\r\n")
        body.write(path.read_bytes())
        body.write(b"\r\n")
    body.write(b"--PROFILE--\r\n")
    basic = base64.b64encode(b"profile:profile-password-1").decode()
    client = Client(HTTP_AUTHORIZATION=f"Basic {basic}", HTTP_HOST="localhost")
    # One request first, so that imports and connections are not in the profiles.
    client.get("/dicomweb/studies?limit=1", HTTP_ACCEPT="application/dicom+json")

    def stow() -> None:
        response = client.generic(
            "POST",
            "/dicomweb/studies",
            body.getvalue(),
            content_type='multipart/related; type="application/dicom"; boundary=PROFILE',
        )
        assert response.status_code == 200, response.content[:300]

    def wado(syntax: str) -> None:
        response = client.get(
            f"/dicomweb/studies/{keys['StudyInstanceUID']}",
            HTTP_ACCEPT=f'multipart/related; type="application/dicom"; transfer-syntax={syntax}',
        )
        assert response.status_code == 200
        for _ in response.streaming_content:
            pass

    for name, call in (
        (f"STOW-RS, {args.count} instances", stow),
        ("WADO-RS transfer-syntax=*", lambda: wado("*")),
        ("WADO-RS explicit VR little endian", lambda: wado("1.2.840.10008.1.2.1")),
    ):
        profile = cProfile.Profile()
        profile.runcall(call)
        stats = pstats.Stats(profile)
        print(f"\n=== {name}: {stats.total_tt:.2f} s of CPU under the profiler")  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        if os.environ.get("PROFILE_CALLEES"):
            stats.print_callees(os.environ["PROFILE_CALLEES"])


if __name__ == "__main__":
    main()
