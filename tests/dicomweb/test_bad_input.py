"""Bad requests get 400, 401, 403, 404, 409 or 415 with a reason; nothing partial is stored and
the server keeps serving."""

import requests
from django.contrib.auth.models import User

from archive.models import Instance
from dicomweb.multipart import multipart_body
from tests.conftest import sample_file

CT = sample_file("CT_small.dcm")
DICOM = 'multipart/related; type="application/dicom"; boundary=XYZ'


def _body(*parts: tuple[str, bytes]) -> bytes:
    return b"".join(multipart_body("XYZ", [(kind, [data]) for kind, data in parts]))


def _post(root, auth, body, content_type=DICOM, path="studies"):
    return requests.post(
        f"{root}/{path}", data=body, auth=auth, headers={"Content-Type": content_type}
    )


def test_wrong_content_type_is_415(root, auth):
    response = _post(root, auth, CT.read_bytes(), content_type="application/dicom")
    assert response.status_code == 415
    assert "multipart/related" in response.json()["error"]


def test_truncated_body_is_400_and_stores_nothing(root, auth):
    body = _body(("application/dicom", CT.read_bytes()))
    response = _post(root, auth, body[: len(body) // 2])
    assert response.status_code == 400
    assert "truncated" in response.json()["error"]
    assert Instance.objects.count() == 0


def test_malformed_multipart_is_400(root, auth):
    response = _post(root, auth, b"no boundary here at all")
    assert response.status_code == 400


def test_non_dicom_part_fails_with_a_reason_and_the_rest_is_stored(root, auth):
    body = _body(("application/dicom", b"not dicom" * 20), ("application/dicom", CT.read_bytes()))
    response = _post(root, auth, body)
    assert response.status_code == 202
    result = response.json()
    [failed] = result["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert len(result["00081199"]["Value"]) == 1
    assert Instance.objects.count() == 1


def test_all_failed_is_409(root, auth):
    response = _post(root, auth, _body(("application/dicom", b"garbage" * 40)))
    assert response.status_code == 409
    assert Instance.objects.count() == 0


def test_instance_of_another_study_is_refused(root, auth):
    response = _post(
        root, auth, _body(("application/dicom", CT.read_bytes())), path="studies/1.2.3"
    )
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC122]
    assert Instance.objects.count() == 0


def test_unknown_uids_are_404_and_server_keeps_serving(root, auth):
    for path in ("studies/1.2.3", "studies/1.2.3/metadata", "studies/1.2.3/series"):
        response = requests.get(f"{root}/{path}", auth=auth)
        assert response.status_code == 404, path
        assert response.json()["error"]
    assert _post(root, auth, _body(("application/dicom", CT.read_bytes()))).status_code == 200


def test_unknown_query_key_is_400(root, auth):
    response = requests.get(f"{root}/studies", params={"NoSuchKeyword": "x"}, auth=auth)
    assert response.status_code == 400


def test_anonymous_is_401_with_a_challenge(root):
    response = requests.get(f"{root}/studies")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_without_the_permission_is_403(root, transactional_db):
    User.objects.create_user("nobody", password="nobody-password-1", is_staff=True)
    response = requests.get(f"{root}/studies", auth=("nobody", "nobody-password-1"))
    assert response.status_code == 403


def test_cors_off_by_default_and_for_configured_origins(client, settings):
    from django.test import Client

    browser = Client()
    response = browser.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://elsewhere.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert "Access-Control-Allow-Origin" not in response
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]
    response = browser.options(
        "/dicomweb/studies",
        HTTP_ORIGIN="https://viewer.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
    )
    assert response["Access-Control-Allow-Origin"] == "https://viewer.example"
    admin = browser.get("/admin/login/", HTTP_ORIGIN="https://viewer.example")
    assert "Access-Control-Allow-Origin" not in admin


def test_sop_class_refused_by_an_admin_rule_is_refused_for_stow(root, auth):
    from receiver.models import SOPClassRule

    SOPClassRule.objects.create(sop_classes="CT", action=SOPClassRule.REFUSE, enabled=True)
    response = _post(root, auth, _body(("application/dicom", CT.read_bytes())))
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0122]
    assert "SOP class rule" in response.headers["Warning"]
    assert Instance.objects.count() == 0


def test_a_changed_password_is_refused_at_the_next_request(root, auth, web_user):
    assert requests.get(f"{root}/studies", auth=auth).status_code == 200
    web_user.set_password("another-password-2")
    web_user.save()
    assert requests.get(f"{root}/studies", auth=auth).status_code == 401
