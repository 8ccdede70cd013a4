"""What the ingest service can refuse, independent of the protocol that carried the data."""


class IngestError(Exception):
    """Base class: the instance was not stored."""


class DatasetUnreadable(IngestError):
    """The dataset cannot be parsed, or lacks a valid SOP Instance, Study or Series UID."""


class DatasetMismatch(IngestError):
    """The dataset's SOP Class or Instance UID differs from the one the request announced."""


class StorageFailure(IngestError):
    """The file could not be written durably (disk full, I/O error, permissions)."""


class IndexFailure(IngestError):
    """The index row could not be committed; the file written for it has been removed."""


class DuplicateRejected(IngestError):
    """The instance exists with different content and the duplicate policy is `reject`."""


class StorageMismatch(Exception):
    """The storage directory is not the one the index describes; the message says which index,
    which storage, and how to proceed."""
