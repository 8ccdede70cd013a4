"""A minimal research project that reads the archive's index from a second database.

PACS_INDEX is the receiver's SQLite index file; this project's own data (stable_log) is in
RESEARCH_DB.
"""

import os

SECRET_KEY = "research-project-test-key"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "archive", "stable_log"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["RESEARCH_DB"],
    },
    "pacs": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["PACS_INDEX"],
        # As the receiver opens it: writers queue instead of failing with "database is locked".
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    },
}
DATABASE_ROUTERS = ["archive.routers.ArchiveRouter"]
ARCHIVE_DATABASE = "pacs"
DICOM_STABLE_AGE = 1.0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
