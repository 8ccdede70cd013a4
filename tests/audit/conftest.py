import pytest


@pytest.fixture(autouse=True)
def web_storage(settings, storage_dir):
    """The web views read files where the test's receiver writes them."""
    settings.DICOM_STORAGE_DIR = storage_dir
    return storage_dir
