"""Configuration: file, environment, command line, and every kind of mistake in them."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command

from receiver.config import FILE_SCHEMA, AllowedPeer, ConfigError, resolve, workers_auto

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store_scp.yaml"
    path.write_text(text)
    return path


def test_shipped_example_is_valid():
    config = resolve({}, ROOT / "store_scp.yaml")
    assert config.ae_title == "MY_PACS"
    assert config.port == 11112
    assert config.storage_dir == ROOT / "received"
    assert config.allowed_aes[0] == AllowedPeer("CT_SCANNER", "192.168.10.0/24")
    assert "1.2.840.10008.5.1.4.1.1.2" in config.accepted_sop_classes  # CT Image Storage
    assert "1.2.840.10008.5.1.4.1.1.88.22" in config.accepted_sop_classes


def test_precedence_is_command_line_then_file_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DICOM_AE_TITLE", "FROM_ENV")
    monkeypatch.setenv("DICOM_DUPLICATES", "reject")
    monkeypatch.setenv("DICOM_STORAGE_DIR", str(tmp_path / "env-store"))
    path = write(
        tmp_path,
        "server: {port: 4242, ae_title: FROM_FILE}\nstorage: {naming: date-based}\n",
    )
    config = resolve({"port": 5555, "ae_title": None}, path)
    assert (config.port, config.sources["port"]) == (5555, "command line")
    assert (config.ae_title, config.sources["ae_title"]) == ("FROM_FILE", f"file {path}")
    assert (config.duplicates, config.sources["duplicates"]) == ("reject", "environment")
    assert config.storage_dir == tmp_path / "env-store"
    assert config.naming == "date"
    assert (config.max_associations, config.sources["max_associations"]) == (10, "default")


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path):
    path = write(tmp_path, "storage: {directory: data/dicom}\ndatabase: {path: data/index.db}\n")
    config = resolve({}, path)
    assert config.storage_dir == tmp_path / "data" / "dicom"
    assert config.index_db == tmp_path / "data" / "index.db"


def test_pinning_workers_is_on_by_default_and_the_file_turns_it_off(tmp_path):
    assert resolve({}).pin_workers is True
    config = resolve({}, write(tmp_path, "server: {pin_workers: false}\n"))
    assert config.pin_workers is False
    assert config.sources["pin_workers"].startswith("file ")


def test_accept_takes_modalities_names_and_uids():
    config = resolve({"accepted_sop_classes": "CT, MR Image Storage,1.2.840.10008.5.1.4.1.1.7"})
    names = {uid.name for uid in config.accepted_sop_classes}
    assert {"CT Image Storage", "Enhanced CT Image Storage", "MR Image Storage"} <= names
    assert "Secondary Capture Image Storage" in names
    assert "Enhanced MR Image Storage" not in names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: {prot: 11112}\n", "unknown key server.prot"),
        ("servers: {port: 11112}\n", "unknown section 'servers'"),
        ("server: {port: eleven}\n", "server.port: expected a whole number"),
        ("server: {port: 70000}\n", "server.port: 70000 is not between 1 and 65535"),
        ("server: {ae_title: WAY_TOO_LONG_AE_TITLE}\n", "longer than 16 characters"),
        ("server: {require_called_ae_title: maybe}\n", "expected true or false"),
        ("server: {pin_workers: sometimes}\n", "server.pin_workers: expected true or false"),
        ("storage: {naming: alphabetical}\n", "unknown naming scheme"),
        ("storage: {duplicates: merge}\n", "unknown policy 'merge'"),
        ("accepted_sop_classes: [CT, Holographic Storage]\n", "unknown SOP class"),
        ("accepted_sop_classes: CT\n", "accepted_sop_classes: expected a list"),
        ("access: {allowed_aes: [{ae_title: 'A\\\\B'}]}\n", "allowed_aes[0].ae_title"),
        ("access: {allowed_aes: [{ae_title: OK, port: 4}]}\n", "unknown key(s) port"),
        (
            "access: {allowed_aes: [{ae_tilte: CT_SCANNER}]}\n",
            "access.allowed_aes[0]: unknown key(s) ae_tilte (known: ae_title, host, description)",
        ),
        (
            "remote_aes: [{ae_titel: HOROS, host: h, port: 104}]\n",
            "remote_aes[0]: unknown key(s) ae_titel (known: ae_title, host, port, tls, "
            "description)",
        ),
        (
            "forwarding: [{destinaton: HOROS}]\n",
            "forwarding[0]: unknown key(s) destinaton (known: destination, when, modalities, ",
        ),
        ("timeouts: {dimse: -1}\n", "timeouts.dimse: must be a positive number"),
        ("tls: {certificate: missing.pem, private_key: missing.key}\n", "not a readable file"),
        ("tls: {certificate: a.pem}\n", "needs both a certificate and a private key"),
        ("server: [1, 2]\n", "server: expected keys"),
        ("server:\n  port: 1\n bad indent\n", "YAML syntax error at line"),
        ("- just\n- a list\n", "expected sections"),
    ],
)
def test_bad_configuration_names_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        resolve({}, path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        resolve({}, tmp_path / "absent.yaml")


def test_check_config_prints_values_and_sources(tmp_path, capsys):
    path = write(tmp_path, "server: {ae_title: CHECKED, port: 4104}\n")
    call_command("runscp", "--config", str(path), "--check-config", "--naming", "flat")
    output = capsys.readouterr().out
    assert f"CHECKED  [file {path}]" in output
    assert "flat  [command line]" in output
    assert "configuration is valid" in output


def test_runscp_with_bad_file_exits_non_zero_with_one_line(tmp_path):
    path = write(tmp_path, "server: {port: 11112, ae_tittle: X}\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runscp", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    known = ", ".join(FILE_SCHEMA["server"])
    assert known.startswith("port, ae_title, bind, max_associations")
    assert result.stderr.strip().splitlines() == [
        f"CommandError: {path}: unknown key server.ae_tittle (known: {known})"
    ]


def test_strict_uids_is_off_by_default_and_set_by_file_or_command_line(tmp_path):
    assert resolve({}).strict_uids is False
    path = write(tmp_path, "storage: {strict_uids: true}\n")
    assert resolve({}, path).strict_uids is True
    assert resolve({"strict_uids": True}).sources["strict_uids"] == "command line"


def test_database_synchronous_sets_whether_new_instances_wait_for_the_index_flush(tmp_path):
    from receiver.server import ingest_settings

    assert resolve({}).synchronous == "normal"
    assert ingest_settings(resolve({})).index_flush is False
    path = write(tmp_path, "database: {synchronous: full}\n")
    assert ingest_settings(resolve({}, path)).index_flush is True


def test_workers_default_to_one_per_core_up_to_four(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    assert workers_auto() == min(cores, 4)
    assert resolve({}).workers == workers_auto()
    assert resolve({}).sources["workers"] == "default, auto"
    assert resolve({}, write(tmp_path, "server: {workers: auto}\n")).workers == workers_auto()
    assert resolve({}, write(tmp_path, "server: {workers: 3}\n")).workers == 3
    assert resolve({"workers": "auto"}).workers == workers_auto()
    # On a bucket: one process, unless a number is given.
    assert resolve({"storage_dir": "s3://bucket/prefix"}).workers == 1
    assert resolve({"storage_dir": "s3://bucket/prefix", "workers": 2}).workers == 2
    with pytest.raises(ConfigError, match=r"server\.workers: expected a number of processes or"):
        resolve({}, write(tmp_path, "server: {workers: many}\n"))
    with pytest.raises(ConfigError, match="workers: must be between 1 and 64"):
        resolve({}, write(tmp_path, "server: {workers: 0}\n"))


def test_workers_auto_respects_a_cpu_quota(tmp_path):
    from receiver.config import _cgroup_cores

    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # docker --cpus 1.5
    assert _cgroup_cores(str(quota)) == 2
    quota.write_text("50000 100000\n")
    assert _cgroup_cores(str(quota)) == 1
    quota.write_text("max 100000\n")
    assert _cgroup_cores(str(quota)) is None
    assert _cgroup_cores(str(tmp_path / "absent")) is None


def test_workers_on_the_command_line_take_a_number_or_auto(tmp_path, capsys):
    call_command("runscp", "--check-config", "--workers", "auto")
    assert f"{workers_auto()}  [command line, auto]" in capsys.readouterr().out
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runscp", "--workers", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--workers: expected a number or auto, got 'lots'" in result.stderr


def test_examples_and_default_ae_title_agree():
    """README, store_scp.yaml, `runscp --help` and the default all say MY_PACS."""
    assert resolve({}).ae_title == "MY_PACS"
    assert resolve({}, ROOT / "store_scp.yaml").ae_title == "MY_PACS"
    readme = (ROOT / "README.md").read_text()
    assert "PACS_RECEIVER" not in readme and "| 11112, `MY_PACS` |" in readme
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "runscp", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "our AE title (MY_PACS)" in help_text
    assert "--config" in help_text
    # Nor anything shipped beside them: the health check, its HAProxy script, the admin.
    shipped = [*ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py"), *ROOT.glob("deploy/*")]
    said = [p for p in shipped if p.is_file() and "PACS_RECEIVER" in p.read_text(errors="replace")]
    assert said == [ROOT / "tests" / "receiver" / "test_config.py"]


def test_stable_ages_per_level_default_to_stable_age(tmp_path, monkeypatch):
    assert (resolve({}).series_stable_age, resolve({}).study_stable_age) == (60.0, 60.0)
    monkeypatch.setenv("DICOM_STABLE_AGE", "45")
    path = write(tmp_path, "storage: {study_stable_age: 120, announce_stable: false}\n")
    config = resolve({}, path)
    assert (config.series_stable_age, config.sources["series_stable_age"]) == (45.0, "environment")
    assert (config.study_stable_age, config.announce_stable) == (120.0, False)
    config = resolve({"stable_age": 2.0, "announce_stable": None}, path)
    assert (config.series_stable_age, config.study_stable_age) == (2.0, 120.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("storage: {stable_age: 0}\n", "storage.stable_age: must be a positive number"),
        ("storage: {series_stable_age: -1}\n", "storage.series_stable_age: must be a positive"),
        ("storage: {stable_age: soon}\n", "storage.stable_age: expected a number"),
    ],
)
def test_bad_stable_age_names_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve({}, write(tmp_path, text))
