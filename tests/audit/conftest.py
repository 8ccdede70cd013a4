from collections.abc import Iterator

import pytest

from audit.atna import atna_message
from audit.models import AuditEvent
from tests.audit.atna_schema import audit_message_validate


@pytest.fixture(autouse=True)
def web_storage(settings, storage_dir):
    """The web views read files where the test's receiver writes them."""
    settings.DICOM_STORAGE_DIR = storage_dir
    return storage_dir


@pytest.fixture(autouse=True)
def records_are_valid_audit_messages(request) -> Iterator[None]:
    """Every record a test here leaves, through whichever real path wrote it, makes a DICOM
    audit message valid against the A.5.1 schema. Checked in the tests only: the export itself
    never validates, so it costs production nothing."""
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
