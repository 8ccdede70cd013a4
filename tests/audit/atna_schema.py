"""The DICOM audit message schema (PS3.15 A.5.1, vendored in audit/schema/) as a validator for
the tests. lxml and rnc2rng are test requirements only: the archive never validates what it
sends, so production pays nothing for this."""

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from audit.atna import atna_message
from audit.models import AuditEvent

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


@pytest.fixture
def audit_messages_checked(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test, the message of every audit record it left, through whichever real path
    wrote it, must be valid against the A.5.1 schema. For tests that use the database; the
    export itself never validates, so this costs production nothing."""
    names = request.fixturenames
    if not (
        "db" in names or "transactional_db" in names or request.node.get_closest_marker("django_db")
    ):
        yield
        return
    # Requested here so that the database is still there when this fixture's teardown runs.
    request.getfixturevalue("db")
    yield
    for event in AuditEvent.objects.order_by("pk"):
        audit_message_validate(atna_message(event, source_id="pacs", application="MY_PACS"))
