"""WADO-RS metadata (DICOM JSON, PS3.18 F.2) written from a stored file's encoded elements,
without building a pydicom Dataset.

`dicomweb.instances.metadata_json_pydicom` (dcmread, then Dataset.to_json_dict) spent nearly all
of its ~6-20 ms an instance in pydicom's per-element machinery (Dataset.__getitem__, raw element
conversion, DataElement.to_json_dict, VM): a 300-image series took 7-20 s before OHIF could show
any of it. Here the header is walked once and each value converted straight to its JSON form.

The output must be exactly what the pydicom path makes (the InstanceMetadata cache holds both
kinds of rows under one format): anything this module is not sure to encode the same way raises
`Unsupported` and the caller uses the pydicom path. That covers retired big endian, deflate,
files without a Part 10 preamble or transfer syntax, character sets other than the default,
ISO_IR 100 and ISO_IR 192, escape sequences, ambiguous VRs ("US or SS", "OB or OW"), VR UN
replaced by a dictionary VR, implicit VR items in explicit datasets, out-of-order or duplicate
tags, and values the reference rejects or drops. Text values go through pydicom's own
converters and validators (the rules are subtle and cheap to reuse); numbers, binary values,
UIDs, codes, dates and sequences are converted here.

The reference converts every value in pydicom's reading validation mode (by default WARN: a
value that breaks the standard is kept, with a warning) before to_json_dict, and so does this
module: a DS of 17 characters, as scanners write Image Position Patient, must reach OHIF. DS, IS
and UI values that the standard allows are converted here; any other goes through pydicom for
that one element. tests/dicomweb/test_metadata_encode.py compares both paths byte for byte on
every file pydicom ships as test data.
"""

import base64
import functools
import struct
from typing import Any, BinaryIO

from pydicom import config
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import validate_value
from pydicom.values import convert_value

from archive import dicom_bytes

__all__ = ["Unsupported", "metadata_encode"]


class Unsupported(Exception):
    """Something this encoder leaves to the pydicom path."""


# Values at least this long are sent as BulkDataURI (dicomweb.instances.BULK_THRESHOLD).
_BULK = 1024
# How much of a file is read at first, and at most, for its header.
_FIRST_READ = 64 * 1024
_MOST_READ = 64 * 2**20

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005
_ITEM, _ITEM_END, _SEQUENCE_END = (
    dicom_bytes.ITEM,
    dicom_bytes.ITEM_END,
    dicom_bytes.SEQUENCE_END,
)
_UNDEFINED = dicom_bytes.UNDEFINED_LENGTH
_LONG_VRS = frozenset(vr.decode() for vr in dicom_bytes.LONG_VRS)
_HEAD = dicom_bytes.ELEMENT_IMPLICIT  # tag and 4-byte length
_SHORT_LENGTH = dicom_bytes.UINT16
_LONG_LENGTH = dicom_bytes.UINT32

# The character sets whose text pydicom decodes with one Python codec and no code extensions.
_CODECS = {"": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8"}

_BINARY_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN"))
# Struct codes of the binary number VRs (pydicom's convert_numbers), and their sizes.
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_NUMBER_SIZE = {vr: struct.calcsize("<" + code) for vr, code in _NUMBERS.items()}
# Text VRs whose values are split on backslashes and stripped of trailing spaces and NULs
# (pydicom's multi_string with str); DA, DT and TM too while pydicom does not convert them.
_PLAIN_TEXT = frozenset(("AS", "CS", "DA", "DT", "TM"))
# VRs left to pydicom's converters (charsets, validation, person names).
_CONVERTED = frozenset(("AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"))
_KNOWN_VRS = (
    _BINARY_VRS | frozenset(_NUMBERS) | _PLAIN_TEXT | _CONVERTED | {"AT", "DS", "IS", "SQ", "UI"}
)


# LUT Descriptor, Red/Green/Blue Palette Color LUT Descriptor (pydicom's _LUT_DESCRIPTOR_TAGS).
_LUT_DESCRIPTORS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))


def metadata_encode(stream: BinaryIO, instance_uri: str) -> dict[str, Any]:
    """What `dicomweb.instances.metadata_json_pydicom` makes of the stored file in `stream`,
    or Unsupported."""
    if (
        config.use_DS_decimal
        or config.use_DS_numpy
        or config.use_IS_numpy
        or config.datetime_conversion
    ):
        raise Unsupported("pydicom is set to convert values as this encoder does not")
    stream.seek(0)
    want = _FIRST_READ
    data = stream.read(want)
    while True:
        whole = len(data) < want
        encoder = _Encoder(data, whole, instance_uri)
        try:
            # In the reading validation mode the reference reads in (pydicom's default, WARN):
            # values that break the standard are kept, as the reference keeps them.
            result, syntax, has_pixels = encoder.file()
            break
        except _NeedMore:
            if whole or want >= _MOST_READ:
                raise Unsupported("the header is cut short or too long") from None
            data += stream.read(want)
            want *= 2
        except Unsupported:
            raise
        except Exception as exc:  # a value pydicom rejects, a walk gone wrong
            raise Unsupported(f"{type(exc).__name__}: {exc}") from None
    if has_pixels:
        bits = result.get("00280100", {"Value": [16]}).get("Value")
        if not (isinstance(bits, list) and len(bits) == 1):
            raise Unsupported("Bits Allocated is not one number")
        try:
            compressed = UID(syntax).is_compressed
        except Exception:
            raise Unsupported("the transfer syntax is not one pydicom knows") from None
        vr = "OB" if compressed or bits[0] <= 8 else "OW"
        result["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_uri}/bulkdata/7FE00010"}
    return dict(sorted(result.items()))


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@functools.lru_cache(maxsize=1024)
def _private_vr(tag: int, creator: str) -> str:
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"


def _is_upper_letter(byte: int) -> bool:
    return 0x40 < byte < 0x5B


class _Encoder:
    def __init__(self, data: bytes, whole: bool, instance_uri: str) -> None:
        self.data = data
        self.whole = whole
        self.bulk_prefix = f"{instance_uri}/bulkdata/"
        self.codec = "iso8859"
        self.encodings = ["iso8859"]

    def need(self, end: int) -> None:
        if end > len(self.data):
            if self.whole:
                raise Unsupported("an element runs past the end of the file")
            raise _NeedMore

    def file(self) -> tuple[dict[str, Any], str, bool]:
        """The top-level elements' JSON (unsorted), the transfer syntax, and whether the pixel
        data (7FE0,0010) ends the header."""
        data = self.data
        self.need(132)
        if data[128:132] != b"DICM":
            raise Unsupported("no Part 10 preamble")
        offset, syntax = self.file_meta(132)
        if syntax is None:
            raise Unsupported("no transfer syntax")
        if syntax == _EXPLICIT_BE or syntax in _DEFLATED:
            raise Unsupported(f"transfer syntax {syntax}")
        implicit = syntax == _IMPLICIT_LE
        self.need(offset + 6)  # what pydicom peeks at to check the VR
        group = _SHORT_LENGTH.unpack_from(data, offset)[0]
        if group == 0x0000:
            raise Unsupported("a command set in the file")
        first_tag = group << 16 | _SHORT_LENGTH.unpack_from(data, offset + 2)[0]
        looks_explicit = _is_upper_letter(data[offset + 4]) and _is_upper_letter(data[offset + 5])
        if looks_explicit == implicit and first_tag not in _PIXEL_TAGS:
            raise Unsupported("the dataset's VR encoding is not its transfer syntax's")
        result: dict[str, Any] = {}
        _, has_pixels = self.dataset(offset, None, implicit, (), result, top=True)
        # What metadata_json_pydicom sets: the stored syntax, in place of any value read.
        result["00083002"] = {"vr": "UI", "Value": [syntax]} if syntax else {"vr": "UI"}
        return result, syntax, has_pixels

    def file_meta(self, offset: int) -> tuple[int, str | None]:
        """Skip the file meta group (explicit VR little endian); return where the dataset
        starts and the transfer syntax."""
        data = self.data
        syntax = None
        while True:
            self.need(offset + 8)
            group, element, vr = struct.unpack_from("<HH2s", data, offset)
            if group != 0x0002:
                return offset, syntax
            vr = vr.decode("latin-1")
            if vr in _LONG_VRS:
                self.need(offset + 12)
                length = _LONG_LENGTH.unpack_from(data, offset + 8)[0]
                start = offset + 12
            elif _is_upper_letter(data[offset + 4]) and _is_upper_letter(data[offset + 5]):
                length = _SHORT_LENGTH.unpack_from(data, offset + 6)[0]
                start = offset + 8
            else:
                raise Unsupported("the file meta group is not explicit VR")
            if length == _UNDEFINED:
                raise Unsupported("an undefined length in the file meta group")
            self.need(start + length)
            if element == 0x0010:
                text = data[start : start + length].decode("latin-1").rstrip("\0 ").strip()
                if "\\" in text:
                    raise Unsupported("several transfer syntaxes")
                syntax = text
            offset = start + length

    def dataset(
        self,
        offset: int,
        end: int | None,
        implicit: bool,
        prefix: tuple[int, ...],
        out: dict[str, Any],
        *,
        top: bool = False,
    ) -> tuple[int, bool]:
        """Encode the elements from `offset` into `out`: up to `end`, or (None) an item
        delimiter, or at the top level the pixel data or the end of the file. Returns the offset
        reached, and whether the top level stopped at the pixel data (7FE0,0010)."""
        data = self.data
        creators: dict[int, bytes] = {}
        last = -1
        while True:
            if end is not None and offset >= end:
                if offset > end:
                    raise Unsupported("an element runs past its item")
                return offset, False
            if top and offset >= len(data):
                if self.whole:
                    return offset, False
                raise _NeedMore
            self.need(offset + 8)
            group, element, length = _HEAD.unpack_from(data, offset)
            tag = group << 16 | element
            if top and tag in _PIXEL_TAGS:
                return offset, tag == _PIXEL_DATA
            if tag == _ITEM_END:
                if end is None and not top:
                    return offset + 8, False
                raise Unsupported("an item delimiter out of place")
            if group == 0xFFFE:
                raise Unsupported("an item tag out of place")
            if tag <= last:
                raise Unsupported("elements out of order or repeated")
            last = tag
            if tag == _CHARSET and not top:
                raise Unsupported("a character set inside a sequence item")
            if implicit:
                vr = None
                start = offset + 8
            else:
                raw_vr = data[offset + 4 : offset + 6]
                if not (_is_upper_letter(raw_vr[0]) and _is_upper_letter(raw_vr[1])):
                    # pydicom reads an item in implicit VR when its first element looks so
                    raise Unsupported("implicit VR inside an explicit VR dataset")
                vr = raw_vr.decode("ascii")
                if vr in _LONG_VRS:
                    self.need(offset + 12)
                    length = _LONG_LENGTH.unpack_from(data, offset + 8)[0]
                    start = offset + 12
                else:
                    length = _SHORT_LENGTH.unpack_from(data, offset + 6)[0]
                    start = offset + 8
            vr = self.vr(tag, vr, length, creators)
            if vr == "US or SS":
                vr = _us_or_ss(tag, out if top else None)
            if top and tag < _CHARSET and (vr == "SQ" or vr in _CONVERTED):
                raise Unsupported("text before the character set")
            if length == _UNDEFINED:
                if vr != "SQ":
                    raise Unsupported("an undefined length outside a sequence")
                items, offset = self.sequence(start, None, implicit, (*prefix, tag))
                out[f"{tag:08X}"] = {"vr": "SQ", "Value": items}
                continue
            self.need(start + length)
            offset = start + length
            key = f"{tag:08X}"
            if vr == "SQ":
                items, _ = self.sequence(start, offset, implicit, (*prefix, tag))
                out[key] = {"vr": "SQ", "Value": items}
                continue
            value = data[start:offset]
            if top and tag == _CHARSET:
                self.charset(value)
            if group & 1 and 0x0010 <= element <= 0x00FF:
                creators[tag] = value
            out[key] = self.element(tag, vr, value, prefix, implicit)

    def vr(self, tag: int, vr: str | None, length: int, creators: dict[int, bytes]) -> str:
        """The VR pydicom gives the element (its raw_element_vr hook)."""
        if vr is None:
            found = _dictionary_vr(tag)
            if found is None:
                if tag >> 16 & 1:
                    found = self.private_vr(tag, creators)
                elif tag & 0xFFFF == 0:
                    found = "UL"
                elif config.settings.reading_validation_mode == config.RAISE:
                    raise Unsupported("an unknown tag in implicit VR")
                else:
                    found = "UN"  # what pydicom's raw_element_vr makes of it, with a warning
            vr = found
        elif vr == "UN":
            if tag >> 16 & 1:
                vr = self.private_vr(tag, creators)
            elif length < 0xFFFF:  # an undefined length is 0xFFFFFFFF
                found = _dictionary_vr(tag)
                if found is not None:
                    raise Unsupported("VR UN of a known tag")
        if vr not in _KNOWN_VRS and vr != "US or SS":
            raise Unsupported(f"VR {vr}")
        return vr

    def private_vr(self, tag: int, creators: dict[int, bytes]) -> str:
        element = tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return "LO"
        if not element & 0xFF00:
            return "UN"
        raw = creators.get((tag & 0xFFFF0000) | element >> 8)
        if raw is None:
            return "UN"
        creator = convert_value("LO", _raw(tag, "LO", raw), self.encodings)
        if not isinstance(creator, str):
            raise Unsupported("a private creator with several values")
        if not creator:
            return "UN"
        return _private_vr(tag, creator)

    def charset(self, value: bytes) -> None:
        text = value.decode("latin-1").rstrip(" \0")
        if "\\" in text or text not in _CODECS:
            raise Unsupported(f"character set {text!r}")
        self.codec = _CODECS[text]
        self.encodings = [self.codec]

    def sequence(
        self, offset: int, end: int | None, implicit: bool, prefix: tuple[int, ...]
    ) -> tuple[list[dict[str, Any]], int]:
        data = self.data
        items: list[dict[str, Any]] = []
        while True:
            if end is not None and offset >= end:
                if offset > end:
                    raise Unsupported("an item runs past its sequence")
                return items, offset
            self.need(offset + 8)
            group, element, length = _HEAD.unpack_from(data, offset)
            tag = group << 16 | element
            offset += 8
            if tag == _SEQUENCE_END:
                if end is not None:
                    raise Unsupported("a sequence delimiter in a sequence of defined length")
                return items, offset
            if tag != _ITEM:
                raise Unsupported("not a sequence item")
            item: dict[str, Any] = {}
            where = (*prefix, len(items))
            if length == _UNDEFINED:
                offset, _ = self.dataset(offset, None, implicit, where, item)
            else:
                self.need(offset + length)
                offset, _ = self.dataset(offset, offset + length, implicit, where, item)
            items.append(item)

    def element(
        self, tag: int, vr: str, value: bytes, prefix: tuple[int, ...], implicit: bool
    ) -> dict[str, Any]:
        if not value:
            return {"vr": vr}
        if tag in _LUT_DESCRIPTORS:
            # pydicom turns a negative first value into an unsigned one, or not, depending on
            # how the VR was learnt: its own reading decides.
            raise Unsupported("a LUT descriptor")
        if vr in _PLAIN_TEXT:
            items = value.decode("latin-1").rstrip(" \0").split("\\")
            if len(items) == 1 and not items[0]:
                return {"vr": vr}
            return {"vr": vr, "Value": items}
        if vr == "UI":
            items = value.decode("latin-1").rstrip(" \0").split("\\")
            if len(items) == 1 and not items[0]:
                return {"vr": vr}
            try:
                for item in items:
                    validate_value("UI", item, config.RAISE)
            except ValueError:
                return self.pydicom_element(tag, vr, value, implicit)
            return {"vr": vr, "Value": items}
        if vr in _BINARY_VRS:
            if len(value) >= _BULK:
                return {"vr": vr, "BulkDataURI": self.bulk_prefix + _bulk_path((*prefix, tag))}
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        code = _NUMBERS.get(vr)
        if code is not None:
            size = _NUMBER_SIZE[vr]
            if len(value) % size:
                raise Unsupported("a number value of a wrong length")
            numbers = list(struct.unpack(f"<{len(value) // size}{code}", value))
            return {"vr": vr, "Value": numbers}
        if vr == "DS" or vr == "IS":
            try:
                return self.decimal(vr, value) if vr == "DS" else self.integer(vr, value)
            except _NotPlain:
                return self.pydicom_element(tag, vr, value, implicit)
        if vr == "AT":
            if len(value) % 4:
                raise Unsupported("an AT value of a wrong length")
            pairs = struct.unpack(f"<{len(value) // 2}H", value)
            tags = zip(pairs[::2], pairs[1::2], strict=True)
            return {"vr": vr, "Value": [f"{g << 16 | e:08X}" for g, e in tags]}
        # AE, LO, LT, PN, SH, ST, UC, UR, UT: pydicom's own conversion and validation
        if 0x1B in value:
            raise Unsupported("an escape sequence in a text value")
        converted = convert_value(vr, _raw(tag, vr, value, implicit), self.encodings)
        return _converted_json(vr, converted)

    def decimal(self, vr: str, value: bytes) -> dict[str, Any]:
        if max(value) >= 0x80:
            raise _NotPlain
        items = value.decode("latin-1").strip().rstrip(" \0").split("\\")
        numbers = []
        for item in items:
            try:
                validate_value("DS", item, config.RAISE)
                numbers.append(float(item))
            except ValueError:  # over 16 characters (as scanners often write), no number
                raise _NotPlain from None
        return {"vr": vr, "Value": numbers}

    def integer(self, vr: str, value: bytes) -> dict[str, Any]:
        if max(value) >= 0x80:
            raise _NotPlain
        items = value.decode("latin-1").rstrip(" \0").split("\\")
        numbers = []
        for item in items:
            if not item.strip(" ").lstrip("+-").isdigit():
                raise _NotPlain
            try:
                validate_value("IS", item, config.RAISE)
            except ValueError:
                raise _NotPlain from None
            number = int(item)
            if not -(2**31) <= number < 2**31:
                raise _NotPlain
            numbers.append(number)
        return {"vr": vr, "Value": numbers}

    def pydicom_element(self, tag: int, vr: str, value: bytes, implicit: bool) -> dict[str, Any]:
        """What the reference makes of a value that breaks the standard (pydicom converts it
        in the reading mode, keeping most such values with a warning, and encodes it in strict
        mode, within to_json_dict): one element through pydicom, not worth copying its rules
        for values this rare."""
        element = convert_raw_data_element(_raw(tag, vr, value, implicit), encoding=self.encodings)
        with config.strict_reading():
            return element.to_json_dict(None, 0)


class _NotPlain(Exception):
    """A DS, IS or UI value that breaks the standard: left to pydicom's converters."""


def _us_or_ss(tag: int, top: dict[str, Any] | None) -> str:
    """The VR pydicom's ambiguous VR correction gives a top-level "US or SS" element read in
    implicit VR: US unless Pixel Representation, read before it, says signed."""
    if top is None or tag not in _US_OR_SS_AFTER_PIXEL_REPRESENTATION:
        raise Unsupported("VR US or SS")
    representation = top.get("00280103")
    if representation is None:
        return "US"  # neither Pixel Representation nor, before stop_before_pixels, pixel data
    value = representation.get("Value")
    if representation["vr"] != "US" or not isinstance(value, list) or len(value) != 1:
        raise Unsupported("an unusual Pixel Representation")
    return "US" if value[0] == 0 else "SS"


# pydicom's _AMBIGUOUS_US_SS_TAGS that come after Pixel Representation (0028,0103) in a
# dataset, where nothing but it decides their VR.
_US_OR_SS_AFTER_PIXEL_REPRESENTATION = frozenset(
    (
        *(0x00280104, 0x00280105, 0x00280106, 0x00280107, 0x00280108, 0x00280109),
        *(0x00280110, 0x00280111, 0x00280120, 0x00280121, 0x00281101, 0x00281102),
        *(0x00281103, 0x00283002, 0x00409211, 0x00409216, 0x00603004, 0x00603006),
    )
)


def _raw(tag: int, vr: str, value: bytes, implicit: bool = False) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)


def _converted_json(vr: str, value: Any) -> dict[str, Any]:
    """DataElement.to_json_dict of a text value as pydicom's converters returned it."""
    if isinstance(value, str):
        return {"vr": vr, "Value": [value]} if value else {"vr": vr}
    if vr == "PN":
        names = [value] if _is_name(value) else list(value)
        if len(names) == 1 and not names[0]:
            return {"vr": vr}
        result = []
        for name in names:
            components = name.components
            comps = {"Alphabetic": components[0]}
            if len(components) > 1:
                comps["Ideographic"] = components[1]
            if len(components) > 2:
                comps["Phonetic"] = components[2]
            result.append(comps)
        return {"vr": vr, "Value": result}
    values = list(value)
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _is_name(value: Any) -> bool:
    return hasattr(value, "components")


def _bulk_path(path: tuple[int, ...]) -> str:
    return "/".join(f"{v:08X}" if i % 2 == 0 else str(v) for i, v in enumerate(path))
