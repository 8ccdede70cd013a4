"""The DICOM audit message schema (PS3.15 A.5.1, vendored in audit/schema/) as a validator for
the tests. lxml and rnc2rng are test requirements only: the archive never validates what it
sends, so production pays nothing for this."""

import functools
from pathlib import Path

from lxml import etree

SCHEMA = Path(__file__).resolve().parents[2] / "audit" / "schema" / "audit-message.rnc"


@functools.cache
def audit_message_schema() -> etree.RelaxNG:
    # The standard's text puts `##` documentation after the last alternative of a choice, where
    # the compact syntax wants a pattern to follow; documentation does not constrain anything,
    # so it is read as plain comments.
    return etree.RelaxNG.from_rnc_string(SCHEMA.read_text(encoding="utf-8").replace("##", "#"))


def audit_message_validate(document: bytes) -> etree._Element:
    """The parsed AuditMessage; AssertionError naming each schema violation if it is not one."""
    root = etree.fromstring(document)
    schema = audit_message_schema()
    if not schema.validate(root):
        errors = "\n".join(f"line {e.line}: {e.message}" for e in schema.error_log)
        raise AssertionError(
            f"not a valid DICOM audit message:\n{errors}\n{document.decode('utf-8', 'replace')}"
        )
    return root
