"""The storage service: every reader and writer of stored instance files goes through here.

`Storage(location)` returns the backend for the location: a directory path gives
`FilesystemStorage` (atomic renames and fsyncs on a local or shared file system), an
`s3://BUCKET/PREFIX` URL gives `S3Storage` (objects in an S3-compatible bucket, staged on local
disk first). Both offer one interface (`archive.storage.base.Storage`), so ingest, duplicates,
deletion, downloads, previews and verification never know which one they use.
"""

from typing import Any

from archive.storage.base import (
    INCOMING,
    MARKER,
    Aside,
    StagedFile,
    Storage,
    is_object_store,
    pid_alive,
)
from archive.storage.filesystem import FilesystemStorage

__all__ = [
    "INCOMING",
    "MARKER",
    "Aside",
    "FilesystemStorage",
    "S3Storage",
    "StagedFile",
    "Storage",
    "is_object_store",
    "pid_alive",
]


def __getattr__(name: str) -> Any:
    # boto3 costs a few hundred milliseconds to import: only S3 sites pay for it.
    if name == "S3Storage":
        from archive.storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(name)
