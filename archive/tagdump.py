"""A readable dump of a stored file's header (file meta and dataset, no pixel data), in the
style of DCMTK's dcmdump: one line per element, sequence items indented."""

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from archive.dicomfile import HEADER_INFLATE_LIMIT, MiB, file_header_read

_MAX_VALUE = 120
_MAX_LINES = 5000
_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def tag_dump(path: Path | BinaryIO) -> str:
    """The header of the file at `path` (a path or an open binary file), element by element;
    raises OSError or ValueError if the file cannot be read as DICOM. A deflated dataset is
    inflated up to 16 MiB only."""
    read = file_header_read(path)
    dataset = read.dataset
    lines = list(_lines(dataset.file_meta, 0))
    lines.extend(_lines(dataset, 0))
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"... {len(lines) - _MAX_LINES} more lines"]
    if read.truncated:
        lines.append(
            f"... the deflated dataset inflates beyond {HEADER_INFLATE_LIMIT // MiB} MiB:"
            " the rest is not shown"
        )
    return "\n".join(lines)


def _lines(dataset: Dataset, depth: int) -> Iterator[str]:
    indent = "  " * depth
    for element in dataset:
        head = f"{indent}({element.tag.group:04X},{element.tag.element:04X}) {element.VR:<2}"
        name = element.keyword or element.name
        if element.VR == "SQ":
            yield f"{head} {name}: {len(element.value)} item(s)"
            for number, item in enumerate(element.value, start=1):
                yield f"{indent}  item {number}"
                yield from _lines(item, depth + 2)
            continue
        yield f"{head} {name}: {_value(element)}"


def _value(element: DataElement) -> str:
    value = element.value
    if element.VR in _BULK_VRS and isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    text = str(value) if value is not None else ""
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "..."
