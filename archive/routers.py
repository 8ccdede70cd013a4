"""A database router for Django projects that read this archive's index from a second database.

In the other project's settings (README, "The archive in another Django project"):

    DATABASES = {"default": {...}, "pacs": {...the receiver's index...}}
    DATABASE_ROUTERS = ["archive.routers.ArchiveRouter"]
    ARCHIVE_DATABASE = "pacs"          # the alias above (this is the default)
    ARCHIVE_WRITABLE = False           # True only in the project that runs the receiver

Reads of the archive's models go to ARCHIVE_DATABASE; writes raise ArchiveReadOnly, and no
migration of the archive runs anywhere, so a research app never writes into the index by
accident. The stability announcer (`announce_stable`) writes its claims with an explicit
`using()`, which routers do not see: that is the one write another project makes, on purpose.
"""

from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models

APP_LABEL = "archive"


class ArchiveReadOnly(RuntimeError):
    """An ORM write to the archive's index from a project that only reads it."""


def index_database() -> str:
    """The DATABASES alias that holds the archive's index in this project."""
    if "archive.routers.ArchiveRouter" in getattr(settings, "DATABASE_ROUTERS", ()):
        return getattr(settings, "ARCHIVE_DATABASE", "pacs")
    return DEFAULT_DB_ALIAS


def _writable() -> bool:
    return bool(getattr(settings, "ARCHIVE_WRITABLE", False))


class ArchiveRouter:
    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        if model._meta.app_label == APP_LABEL:
            return getattr(settings, "ARCHIVE_DATABASE", "pacs")
        return None

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        if model._meta.app_label != APP_LABEL:
            return None
        if not _writable():
            raise ArchiveReadOnly(
                f"{model.__name__}: the archive's index is read-only in this project "
                "(ARCHIVE_WRITABLE is off)"
            )
        return getattr(settings, "ARCHIVE_DATABASE", "pacs")

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        labels = {obj1._meta.app_label, obj2._meta.app_label}
        if APP_LABEL in labels:
            return labels == {APP_LABEL}
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == APP_LABEL:
            return _writable() and db == getattr(settings, "ARCHIVE_DATABASE", "pacs")
        return None
