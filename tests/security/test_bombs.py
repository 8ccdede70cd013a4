"""Decompression bombs: files small on the wire that claim gigabytes once decoded. The receiver
and the web pages must stay within bounded memory and say why they refuse."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian

from archive.dicomfile import inflate_bounded
from archive.header import HEADER_PREFIX, header_read
from archive.preview import PreviewUnavailable, preview_png
from archive.tagdump import tag_dump
from tests.bombs import MiB, deflate_bomb_dataset, deflate_bomb_file, j2k_bomb_file
from tests.conftest import free_port
from tests.peers import scu
from tests.receiver.test_runscp import runscp, stop, wait_listening

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory) -> tuple[Path, str]:
    return deflate_bomb_file(tmp_path_factory.mktemp("bombs") / "deflate.dcm")


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def test_inflating_stops_at_the_limit_and_says_so():
    data, _ = deflate_bomb_dataset(64)
    inflated, complete = inflate_bounded(data, MiB)
    assert len(inflated) == MiB and not complete
    inflated, complete = inflate_bounded(data, 65 * MiB)
    assert complete and len(inflated) > 63 * MiB


def test_header_of_a_deflate_bomb_is_read_from_a_bounded_prefix(deflate_bomb):
    path, sop = deflate_bomb
    raw = path.read_bytes()
    dataset = raw[raw.index(b"DICM") + 4 :]
    # Skip the meta group: (0002,0000) UL gives its length.
    group_length = int.from_bytes(dataset[8:12], "little")
    header = header_read(
        dataset[12 + group_length :][:HEADER_PREFIX], DeflatedExplicitVRLittleEndian
    )
    assert header.sop_instance_uid == sop
    assert header.modality == "CT"


def test_receiver_stores_a_deflate_bomb_with_bounded_memory(tmp_path, deflate_bomb):
    """0.5 MB of deflate inflating to 512 MiB: stored as received, success, receiver < 200 MB."""
    path, sop = deflate_bomb
    port = free_port()
    process = runscp(
        port,
        "MY_PACS",
        "--storage-dir",
        tmp_path / "st",
        "--index-db",
        tmp_path / "i.db",
        "--bind",
        "127.0.0.1",
        "--workers",
        "1",  # the peak memory read below is this process's: the one that inflates
    )
    try:
        wait_listening(port, process)
        ae = scu()
        ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="MY_PACS")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        peak_kb = _peak_rss_kb(process.pid)
    finally:
        code, output = stop(process)
    assert status.Status == 0x0000, output
    print(f"receiver peak RSS {peak_kb // 1024} MB")
    assert peak_kb < 200 * 1024, f"receiver peak RSS {peak_kb // 1024} MB"
    assert code == 0 and "Traceback" not in output
    stored = list((tmp_path / "st").rglob(f"{sop}.dcm"))
    assert len(stored) == 1
    assert stored[0].read_bytes().endswith(path.read_bytes()[-500_000:])  # as received


def test_preview_refuses_a_j2k_frame_declaring_8192_squared(tmp_path):
    path = j2k_bomb_file(tmp_path / "j2k.dcm")
    assert path.stat().st_size < 2000
    with pytest.raises(PreviewUnavailable, match=r"too large to preview: 8192×8192"):
        preview_png(path)


def test_preview_reads_the_size_from_the_codestream_not_from_rows_and_columns(tmp_path):
    path = j2k_bomb_file(tmp_path / "j2k.dcm", dataset_side=64)
    with pytest.raises(PreviewUnavailable, match=r"8192×8192 in its codestream"):
        preview_png(path)


def test_preview_and_tag_dump_of_a_deflate_bomb_stay_small(deflate_bomb):
    path, _ = deflate_bomb
    with pytest.raises(PreviewUnavailable, match="too large to preview"):
        preview_png(path)
    assert "Modality" in tag_dump(path)


_WEB_WORKER = textwrap.dedent(
    """
    import os, sys
    import django
    django.setup()
    from django.core.management import call_command
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse
    from archive.models import Instance
    from archive.services import instance_index_file
    from archive.storage import Storage

    call_command("migrate", verbosity=0)
    storage = Storage(os.environ["DICOM_STORAGE_DIR"])
    pages = []
    for name in sys.argv[1:]:
        indexed = instance_index_file(relative=name, storage=storage)
        instance = Instance.objects.get(pk=indexed.instance_id)
        pages += [
            reverse("admin:archive_instance_change", args=[instance.pk]),
            reverse("archive-instance-preview", args=[instance.pk]),
        ]
    client = Client()
    client.force_login(User.objects.create_superuser("root", "", "x"))
    for url in pages:
        response = client.get(url)
        body = b"".join(response) if response.streaming else response.content
        tail = body[-400:].decode("utf-8", "replace").replace("\\n", " ")
        print(url, response.status_code, response.get("X-Preview", ""), tail)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print("PEAK", line.split()[1])
    """
)


def test_web_worker_renders_both_bombs_below_300_mb(tmp_path, deflate_bomb):
    """The instance page (with its tag dump) and the preview of each bomb, in a process of its
    own so that its peak memory is its own."""
    storage = tmp_path / "st"
    storage.mkdir()
    j2k_bomb_file(storage / "j2k.dcm")
    (storage / "deflate.dcm").write_bytes(deflate_bomb[0].read_bytes())
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "pacsproject.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
        "DICOM_STORAGE_DIR": str(storage),
        "ALLOWED_HOSTS": "testserver",
    }
    result = subprocess.run(
        [sys.executable, "-c", _WEB_WORKER, "j2k.dcm", "deflate.dcm"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    previews = [line for line in lines if "preview.png" in line]
    assert len(previews) == 2
    for line in previews:
        assert " 200 unavailable " in line and "too large to preview" in line, line
    assert all(" 200 " in line for line in lines if "/change/" in line)
    peak_kb = int(lines[-1].split()[1])
    print(f"web worker peak RSS {peak_kb // 1024} MB")
    assert peak_kb < 300 * 1024, f"web worker peak RSS {peak_kb // 1024} MB"


def test_tag_dump_of_a_header_inflating_beyond_the_limit_says_it_is_cut(tmp_path):
    """A 20 MiB private element before the pixel data: the dump shows what came before it."""
    import struct
    import zlib

    from pydicom.uid import generate_uid

    from tests.bombs import part10_write

    sop = generate_uid()
    head = b"".join(
        [
            struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 26) + CTImageStorage.encode() + b"\0",
            struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", len(sop) + len(sop) % 2)
            + sop.encode()
            + b"\0" * (len(sop) % 2),
            struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 4) + b"EVIL",
            struct.pack("<HH2sxxL", 0x0009, 0x1001, b"OB", 20 * MiB),
        ]
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(head) + compressor.compress(bytes(20 * MiB)) + compressor.flush()
    path = part10_write(
        tmp_path / "cut.dcm", data, sop_instance_uid=sop, syntax=DeflatedExplicitVRLittleEndian
    )
    dump = tag_dump(path)
    assert sop in dump and "EVIL" in dump
    assert dump.splitlines()[-1].startswith("... the deflated dataset inflates beyond 16 MiB")
