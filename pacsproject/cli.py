"""Console scripts of the installed package (pyproject.toml, [project.scripts])."""

import os
import sys
from pathlib import Path


def store_scp() -> None:
    """`store_scp ARGS...`: the same as `python manage.py runscp ARGS...` in a checkout.

    Settings are pacsproject.settings unless DJANGO_SETTINGS_MODULE names a site's own (which
    may add apps whose signal receivers should run in the receiver's processes). Installed,
    the settings' base directory is site-packages, so the index and storage defaults are the
    current directory's `pacs.db` and `received/`, as when `manage.py` runs from a checkout.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacsproject.settings")
    here = Path.cwd()
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{here / 'pacs.db'}")
    os.environ.setdefault("DICOM_STORAGE_DIR", str(here / "received"))
    from django.core.management import execute_from_command_line

    execute_from_command_line(["store_scp", "runscp", *sys.argv[1:]])
