import pytest

from tests.audit.atna_schema import audit_messages_checked  # noqa: F401 - fixture used by name


@pytest.fixture(autouse=True)
def web_storage(settings, storage_dir):
    """The web views read files where the test's receiver writes them."""
    settings.DICOM_STORAGE_DIR = storage_dir
    return storage_dir


@pytest.fixture(autouse=True)
def every_record_is_a_valid_audit_message(audit_messages_checked) -> None:  # noqa: F811
    """Each test here leaves records only whose DICOM audit messages are valid."""
