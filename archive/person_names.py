"""Person names (VR PN, PS3.5 6.2) as people read them, and as matching compares them.

A PN value holds up to three component groups separated by "=" (alphabetic, ideographic,
phonetic), each of up to five components separated by "^": family name, given name, middle
name, prefix, suffix. `Lestrade^G` reads "Lestrade, G"; empty components are dropped, so
`^^^^` reads as nothing. The admin and DICOMweb pages show this form, with the raw value in the
detail views.
"""

import functools
import unicodedata

_FAMILY, _GIVEN, _MIDDLE, _PREFIX, _SUFFIX = range(5)


def person_name_display(value: str | None) -> str:
    """The name as people read it: "Family, Prefix Given Middle, Suffix".

    The first component group that holds anything is shown (alphabetic, else ideographic,
    else phonetic); a value with no "^" at all is shown as it is.
    """
    if not value:
        return ""
    for group in str(value).split("="):
        shown = _group_display(group)
        if shown:
            return shown
    return ""


def _group_display(group: str) -> str:
    components = [c.strip() for c in group.split("^")]
    if len(components) == 1:
        return components[0]
    components += [""] * (5 - len(components))
    family = components[_FAMILY]
    first = " ".join(c for c in (components[_PREFIX], components[_GIVEN], components[_MIDDLE]) if c)
    parts = [p for p in (family, first, components[_SUFFIX]) if p]
    return ", ".join(parts)


def person_name_fold(value: str) -> str:
    """The form in which case-insensitive matching compares person names (PS3.4 C.2.2.2.1):
    stored beside each indexed name and applied to the key, so that the database compares
    folded text on an index, the same way on SQLite and PostgreSQL.

    Each character becomes its simple case folding (Unicode CaseFolding.txt, status C or S):
    `Ä`→`ä`, capital and final sigma→small sigma, `ẞ`→`ß`. Not the full folding of
    `str.casefold()`, nor `str.upper()`: both turn `ß` into two letters, and a `?` wildcard
    stands for one character of the name, which on text of another length it would no
    longer do. Text is put in NFC first, so that a name sent with combining accents matches
    the same name precomposed.
    """
    if value.isascii():
        return value.lower()
    return "".join(map(_character_fold, unicodedata.normalize("NFC", value)))


@functools.cache
def _character_fold(character: str) -> str:
    folded = character.casefold()
    if len(folded) == 1:
        return folded
    # A full folding into several characters: its simple folding, where Unicode gives one,
    # is the lower case (ẞ→ß, ᾈ→ᾀ); else the character stays (ß, ŉ, İ).
    lowered = character.lower()
    return lowered if len(lowered) == 1 else character
