"""A stored file to stream as it is: a value shared by retrieval (which finds it) and the DIMSE
codec (which sends it); here so that neither the codec nor the transport that imports it loads
Django's models."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredFile:
    """A stored instance sent as it is, its data set read from `offset` in its file."""

    path: Path
    offset: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
