"""Person names (VR PN, PS3.5 6.2) as people read them.

A PN value holds up to three component groups separated by "=" (alphabetic, ideographic,
phonetic), each of up to five components separated by "^": family name, given name, middle
name, prefix, suffix. `Lestrade^G` reads "Lestrade, G"; empty components are dropped, so
`^^^^` reads as nothing. The admin and DICOMweb pages show this form, with the raw value in the
detail views.
"""

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
