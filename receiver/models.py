"""Access rules the administrator edits in the Django admin; read at every association, so a
change applies to the next association without restarting the receiver."""

import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from receiver.config import ConfigError, ae_title_valid
from receiver.sop_classes import sop_classes_parse


def _validate_ae_title(value: str) -> None:
    try:
        ae_title_valid(value)
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None


def _validate_sop_classes(value: str) -> None:
    try:
        sop_classes_parse([value])
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


class AllowedAEQuerySet(models.QuerySet):
    def enabled(self) -> "AllowedAEQuerySet":
        return self.filter(enabled=True)


class AllowedAE(models.Model):
    """A calling AE title that may associate, optionally only from one host or network."""

    ae_title = models.CharField("AE title", max_length=16, validators=[_validate_ae_title])
    host = models.CharField(
        max_length=255,
        blank=True,
        help_text="IP address, CIDR network (10.1.2.0/24) or host name; empty for any host.",
    )
    description = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)

    objects = AllowedAEQuerySet.as_manager()

    class Meta:
        verbose_name = "allowed AE title"
        ordering = ["ae_title", "host"]
        constraints = [
            models.UniqueConstraint(
                fields=["ae_title", "host"], name="receiver_allowedae_unique_ae_title_host"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host or '*'}"


class SOPClassRule(models.Model):
    """Adds to or removes from the accepted storage classes of the configuration."""

    ACCEPT = "accept"
    REFUSE = "refuse"

    sop_classes = models.CharField(
        "SOP classes",
        max_length=128,
        validators=[_validate_sop_classes],
        help_text="A modality (CT), a standard name (CT Image Storage) or a UID.",
    )
    action = models.CharField(
        max_length=6, choices=[(ACCEPT, "accept"), (REFUSE, "refuse")], default=REFUSE
    )
    description = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)

    class Meta:
        verbose_name = "SOP class rule"
        ordering = ["action", "sop_classes"]

    def __str__(self) -> str:
        return f"{self.action} {self.sop_classes}"


class ReceiverProcessQuerySet(models.QuerySet):
    def alive(self, now: datetime.datetime) -> "ReceiverProcessQuerySet":
        return self.filter(stopped_at__isnull=True, heartbeat_at__gte=heartbeat_deadline(now))


def heartbeat_interval() -> float:
    """Seconds between two heartbeats of a receiver process."""
    return float(settings.RECEIVER_HEARTBEAT)


def heartbeat_deadline(now: datetime.datetime) -> datetime.datetime:
    """A process whose last heartbeat is older than this is down (three beats missed)."""
    return now - datetime.timedelta(seconds=3 * heartbeat_interval())


class ReceiverProcess(models.Model):
    """One receiver process (each worker is one), as it last reported itself: the web UI and
    `scpstatus`, in other processes, learn from these rows what is running."""

    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    ae_title = models.CharField("AE title", max_length=16)
    port = models.PositiveIntegerField()
    role = models.CharField(max_length=32, blank=True, help_text="single process or worker N")
    RUNNING = "running"
    STOPPED = "stopped"  # stopped cleanly (Ctrl-C, SIGTERM)
    LOST = "lost"  # died without saying so; found by the next receiver to start
    FAILED = "failed"  # did not start (port in use, ...)
    ENDS = [(e, e) for e in (RUNNING, STOPPED, LOST, FAILED)]

    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=8, choices=ENDS, default=RUNNING)

    objects = ReceiverProcessQuerySet.as_manager()

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "receiver process"
        verbose_name_plural = "receiver processes"

    def __str__(self) -> str:
        return f"{self.ae_title}:{self.port} on {self.host} (pid {self.pid})"

    def is_alive(self, now: datetime.datetime) -> bool:
        return self.stopped_at is None and self.heartbeat_at >= heartbeat_deadline(now)


class AssociationLog(models.Model):
    """One row per association attempt, written by the receiver; newest first (in the style of
    django.contrib.admin's LogEntry)."""

    ACCEPTED = "accepted"  # in progress
    REJECTED = "rejected"
    RELEASED = "released"
    ABORTED = "aborted"
    TIMED_OUT = "timed out"
    # Not one association: connections closed before their A-ASSOCIATE-RQ arrived (timeouts,
    # limits), summed over a few seconds, with counts by reason in `failures`.
    DROPPED = "dropped"
    OUTCOMES = [(o, o) for o in (ACCEPTED, REJECTED, RELEASED, ABORTED, TIMED_OUT, DROPPED)]

    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    calling_ae_title = models.CharField("calling AE title", max_length=16, blank=True)
    called_ae_title = models.CharField("called AE title", max_length=16, blank=True)
    peer_address = models.CharField(max_length=64)
    peer_port = models.PositiveIntegerField(null=True)
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    reason = models.CharField(max_length=255, blank=True)
    instances_stored = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    # {"0xA700": 2, ...}: failure statuses and how often each was answered; for DROPPED rows,
    # {"first PDU timeout": 9, ...}: connections dropped by reason.
    failures = models.JSONField(default=dict, blank=True)
    # What we refused within an accepted association: {"contexts": [{"uid", "name", "why"}],
    # "requests": {"C-FIND-RQ": 1}} (presentation contexts at negotiation, DIMSE requests for
    # services we do not provide); empty when nothing was refused.
    refusals = models.JSONField(default=dict, blank=True)
    bytes_received = models.BigIntegerField(default=0)
    process_id = models.PositiveIntegerField(null=True)
    receiver = models.ForeignKey(
        ReceiverProcess, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Progress of an association in progress, written with each heartbeat of its process.
    updated_at = models.DateTimeField(null=True, blank=True)
    current_rate = models.FloatField("instances per second", default=0.0)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "association"
        indexes = [
            # The admin's newest-first list and the status page's recent rejections.
            models.Index(fields=["-started_at"], name="receiver_assoc_started_idx"),
            # Filters by sender and by outcome.
            models.Index(fields=["calling_ae_title"], name="receiver_assoc_calling_idx"),
            models.Index(fields=["outcome"], name="receiver_assoc_outcome_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.calling_ae_title}@{self.peer_address} {self.outcome}"
