"""Storage statistics, aggregated in the database, over an archive filled by real associations."""

from io import StringIO

from django.core.management import call_command
from django.utils import timezone

from archive.models import Instance
from archive.statistics import storage_statistics
from tests.conftest import sample_file
from tests.peers import send_files


def test_counts_sizes_and_trends(scp, storage_dir):
    assert send_files(scp.port, [sample_file("CT_small.dcm")], calling="CT_ROOM") == [0]
    assert send_files(scp.port, [sample_file("MR_small.dcm")], calling="MR_ROOM") == [0]
    assert send_files(scp.port, [sample_file("MR_small_RLE.dcm")], calling="OTHER") == [0]
    # MR_small_RLE has MR_small's SOP Instance UID: a duplicate, kept, not counted twice.
    stats = storage_statistics(storage_dir, now=timezone.now())
    sizes = sum(Instance.objects.values_list("size", flat=True))
    assert (stats.patients, stats.studies, stats.series, stats.instances) == (2, 2, 2, 2)
    assert stats.stored_bytes == sizes
    assert stats.disk_free and stats.disk_total and stats.disk_free <= stats.disk_total
    assert [count for _, count, _ in stats.per_day] == [2]
    assert [size for _, _, size in stats.per_hour] == [sizes]
    assert sorted(stats.top_senders) == [("CT_ROOM", 1), ("MR_ROOM", 1)]
    assert sorted(stats.modalities) == [("CT", 1), ("MR", 1)]

    out = StringIO()
    call_command("storagestats", "--storage-dir", str(storage_dir), stdout=out)
    text = out.getvalue()
    assert "instances  2" in text
    assert "CT_ROOM" in text and "MR_ROOM" in text
    assert f"{timezone.localdate():%Y-%m-%d}         2" in text
