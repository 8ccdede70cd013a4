"""Prometheus metrics, computed from the database at each scrape: every receiver process and
worker writes there, so one scrape of the web application covers them all, and the counters
survive restarts."""

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from archive.models import Instance, RecycledStudy
from receiver.models import AssociationLog, ReceiverProcess
from receiver.transport.lobby import DROP_REASONS
from routing.forwarding import forward_queue_summary
from routing.models import ForwardCount


class ArchiveCollector:
    def __init__(self, storage_dir: Path) -> None:
        self.storage_dir = storage_dir

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        totals = AssociationLog.objects.aggregate(
            stored=Sum("instances_stored"),
            duplicates=Sum("duplicates"),
            bytes=Sum("bytes_received"),
        )
        received = CounterMetricFamily(
            "dicom_instances_received",
            "Instances answered with success, by whether they were new or a duplicate.",
            labels=["kind"],
        )
        received.add_metric(["stored"], totals["stored"] or 0)
        received.add_metric(["duplicate"], totals["duplicates"] or 0)
        yield received
        yield CounterMetricFamily(
            "dicom_received_bytes", "Dataset bytes received in C-STOREs.", totals["bytes"] or 0
        )

        failures: Counter[str] = Counter()
        for row in (
            AssociationLog.objects.exclude(failures={})
            .exclude(outcome=AssociationLog.DROPPED)
            .values_list("failures", flat=True)
        ):
            failures.update(row)
        failed = CounterMetricFamily(
            "dicom_store_failures",
            "C-STOREs answered with a failure, by status.",
            labels=["status"],
        )
        for status, n in sorted(failures.items()):
            failed.add_metric([status], n)
        yield failed

        by_outcome = CounterMetricFamily(
            "dicom_associations", "Association attempts by outcome.", labels=["outcome"]
        )
        counts = dict(
            AssociationLog.objects.values("outcome")
            .annotate(n=Count("id"))
            .values_list("outcome", "n")
        )
        for outcome, _ in AssociationLog.OUTCOMES:
            if outcome != AssociationLog.DROPPED:
                by_outcome.add_metric([outcome], counts.get(outcome, 0))
        yield by_outcome

        dropped: Counter[str] = Counter()
        for row in AssociationLog.objects.filter(outcome=AssociationLog.DROPPED).values_list(
            "failures", flat=True
        ):
            dropped.update(row)
        drops = CounterMetricFamily(
            "dicom_connections_dropped",
            "Connections closed before their association request: first PDU timeout, "
            "per-address or total limit of waiting connections, descriptor limit, TLS failure.",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            drops.add_metric([reason], dropped.get(reason, 0))
        yield drops

        alive = list(ReceiverProcess.objects.alive(now).values_list("pk", flat=True))
        yield GaugeMetricFamily(
            "dicom_active_associations",
            "Associations in progress on running receivers.",
            AssociationLog.objects.filter(
                outcome=AssociationLog.ACCEPTED, receiver__in=alive
            ).count(),
        )
        yield GaugeMetricFamily(
            "dicom_receiver_processes", "Receiver processes with a recent heartbeat.", len(alive)
        )

        yield from _forwarding()

        archive = Instance.objects.aggregate(n=Count("id"), size=Sum("size"))
        yield GaugeMetricFamily("dicom_archive_instances", "Instances in the index.", archive["n"])
        yield GaugeMetricFamily(
            "dicom_archive_bytes", "Bytes of the stored files.", archive["size"] or 0
        )
        recycled = RecycledStudy.objects.aggregate(
            studies=Count("id"), instances=Sum("instances"), size=Sum("bytes")
        )
        yield CounterMetricFamily(
            "dicom_retention_recycled_studies",
            "Studies deleted by storage.retention.",
            recycled["studies"],
        )
        yield CounterMetricFamily(
            "dicom_retention_recycled_instances",
            "Instances deleted by storage.retention.",
            recycled["instances"] or 0,
        )
        yield CounterMetricFamily(
            "dicom_retention_recycled_bytes",
            "Bytes of the files deleted by storage.retention.",
            recycled["size"] or 0,
        )
        try:
            usage = shutil.disk_usage(self.storage_dir)
        except OSError:
            return
        yield GaugeMetricFamily(
            "dicom_storage_free_bytes", "Free space on the storage volume.", usage.free
        )
        yield GaugeMetricFamily(
            "dicom_storage_size_bytes", "Size of the storage volume.", usage.total
        )


def _forwarding() -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "dicom_forward_queue_depth",
        "Instances waiting to be forwarded (pending or being sent), by destination.",
        labels=["destination"],
    )
    oldest = GaugeMetricFamily(
        "dicom_forward_oldest_pending_seconds",
        "Age of the oldest instance waiting to be forwarded, by destination.",
        labels=["destination"],
    )
    for row in forward_queue_summary():
        depth.add_metric([row.destination], row.depth)
        oldest.add_metric([row.destination], row.oldest_pending_seconds or 0)
    yield depth
    yield oldest
    forwarded = CounterMetricFamily(
        "dicom_forwarded",
        "Forwarding C-STOREs by destination and outcome: sent, warning, failed (retried), "
        "dead (given up), repeat (sent again after a worker died mid-batch).",
        labels=["destination", "outcome"],
    )
    for destination, outcome, count in ForwardCount.objects.values_list(
        "destination", "outcome", "count"
    ).order_by("destination", "outcome"):
        forwarded.add_metric([destination, outcome], count)
    yield forwarded


def metrics_text(storage_dir: Path) -> bytes:
    """The metrics in Prometheus' text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ArchiveCollector(storage_dir))
    return generate_latest(registry)
