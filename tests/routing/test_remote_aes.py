"""The remote AE table: the configuration file's section, its rows, and the admin's C-ECHO."""

from pathlib import Path

import pytest

from receiver.config import ConfigError, RemoteAEEntry, resolve
from routing.models import RemoteAE
from routing.remote import remote_ae_find, remote_aes_sync


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store_scp.yaml"
    path.write_text(text)
    return path


def test_remote_aes_section_is_read(tmp_path):
    path = write(
        tmp_path,
        "remote_aes:\n"
        "  - {ae_title: HOROS, host: 10.0.0.5, port: 11112}\n"
        "  - {ae_title: ORTHANC, host: pacs.example.org, port: 4242, tls: true}\n",
    )
    config = resolve({}, path)
    assert config.remote_aes == (
        RemoteAEEntry("HOROS", "10.0.0.5", 11112),
        RemoteAEEntry("ORTHANC", "pacs.example.org", 4242, tls=True),
    )
    assert "HOROS@10.0.0.5:11112" in config.report()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("remote_aes: {ae_title: X}", "remote_aes: expected a list"),
        ("remote_aes:\n  - {ae_title: X, host: h}", "remote_aes[0]: expected an entry with"),
        ("remote_aes:\n  - {ae_title: X, host: h, port: 0}", "remote_aes[0].port"),
        ("remote_aes:\n  - {ae_title: X, host: h, port: 1, tls: 'yes'}", "remote_aes[0].tls"),
        ("remote_aes:\n  - {ae_title: '', host: h, port: 1}", "remote_aes[0].ae_title"),
        ("remote_aes:\n  - {ae_title: X, host: h, port: 1, colour: red}", "unknown key(s) colour"),
        (
            "remote_aes:\n  - {ae_title: X, host: h, port: 1}\n  - {ae_title: X, host: g, port: 2}",
            "remote_aes[1].ae_title: 'X' is listed twice",
        ),
        ("query: {pn_case_insensitive: 3}", "query.pn_case_insensitive"),
    ],
)
def test_remote_aes_mistakes_name_the_key(tmp_path, section, message):
    path = write(tmp_path, section + "\n")
    with pytest.raises(ConfigError, match=None) as caught:
        resolve({}, path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_runscp_check_config_fails_with_one_line_for_a_bad_remote_ae(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "remote_aes:\n  - {ae_title: X, host: h, port: 70000}\n")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            sys.executable,
            str(root / "manage.py"),
            "runscp",
            "--config",
            str(path),
            "--check-config",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "remote_aes[0].port: 70000 is not between 1 and 65535" in result.stderr


@pytest.mark.django_db
def test_configured_entries_are_synced_and_win_over_the_admin():
    RemoteAE.objects.create(ae_title="HOROS", host="old", port=1)
    RemoteAE.objects.create(ae_title="MINE", host="mine", port=2)
    remote_aes_sync(entries=(RemoteAEEntry("HOROS", "10.0.0.5", 11112),))
    horos = RemoteAE.objects.get(ae_title="HOROS")
    assert (horos.host, horos.port, horos.configured) == ("10.0.0.5", 11112, True)
    assert remote_ae_find(ae_title="MINE").host == "mine"
    remote_aes_sync(entries=())
    assert not RemoteAE.objects.filter(ae_title="HOROS").exists()  # gone from the file
    assert RemoteAE.objects.filter(ae_title="MINE").exists()  # the admin's stays
    RemoteAE.objects.filter(ae_title="MINE").update(enabled=False)
    assert remote_ae_find(ae_title="MINE") is None


def test_admin_echo_action_reports_success_and_failure(scp, admin_client):
    from tests.conftest import free_port

    up = RemoteAE.objects.create(ae_title="TEST_SCP", host="127.0.0.1", port=scp.port)
    down = RemoteAE.objects.create(ae_title="DOWN", host="127.0.0.1", port=free_port())
    configured = RemoteAE.objects.create(ae_title="FILE", host="h", port=3, configured=True)
    response = admin_client.post(
        "/admin/routing/remoteae/",
        {"action": "echo", "_selected_action": [up.pk, down.pk]},
        follow=True,
    )
    text = response.content.decode()
    assert "C-ECHO success" in text
    assert f"DOWN@127.0.0.1:{down.port}: no connection" in text
    # Entries from the configuration file are shown but read-only.
    page = admin_client.get(f"/admin/routing/remoteae/{configured.pk}/change/")
    assert page.status_code == 200
    assert 'name="host"' not in page.content.decode()
