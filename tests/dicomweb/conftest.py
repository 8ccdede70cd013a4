from collections.abc import Iterator

import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_auth
from django.contrib.auth.models import User
from requests.auth import HTTPBasicAuth

from archive.services import series_cache_clear

PASSWORD = "dicomweb-test-password-1"


@pytest.fixture(autouse=True)
def web_storage(settings, storage_dir):
    settings.DICOM_STORAGE_DIR = storage_dir
    series_cache_clear()
    return storage_dir


@pytest.fixture
def web_user(transactional_db) -> User:
    return User.objects.create_superuser("radiologist", "r@example.org", PASSWORD)


@pytest.fixture
def auth(web_user) -> HTTPBasicAuth:
    return HTTPBasicAuth(web_user.username, PASSWORD)


@pytest.fixture
def root(live_server) -> str:
    return f"{live_server.url}/dicomweb"


@pytest.fixture
def client(root, auth) -> Iterator[DICOMwebClient]:
    session = create_session_from_auth(auth)
    yield DICOMwebClient(url=root, session=session)
    session.close()
