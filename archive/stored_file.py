"""A stored file to stream as it is: a value shared by retrieval (which opens it) and the DIMSE
codec (which sends it); here so that neither the codec nor the transport that imports it loads
Django's models."""

from dataclasses import dataclass
from typing import BinaryIO


@dataclass
class StoredFile:
    """A stored instance sent as it is: its file, opened once by archive.retrieval and left
    positioned at the data set, of which `length` bytes (everything after the file meta group)
    are to be sent. Whoever holds it closes it, sent or not."""

    stream: BinaryIO
    length: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    def close(self) -> None:
        self.stream.close()
