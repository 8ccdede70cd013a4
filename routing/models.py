"""Remote application entities we open associations to, and Storage Commitment transactions.

Field sizes follow the DICOM value representations: AE 16, UI 64.
"""

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from receiver.config import ConfigError, ae_title_valid

AE = 16
UI = 64


def _validate_ae_title(value: str) -> None:
    try:
        ae_title_valid(value)
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None


class RemoteAEQuerySet(models.QuerySet):
    def enabled(self) -> "RemoteAEQuerySet":
        return self.filter(enabled=True)


class RemoteAE(models.Model):
    """A peer: C-MOVE destination, Storage Commitment requester, forwarding target.

    Rows with `configured` set mirror the configuration file's `remote_aes:` section; runscp
    writes them at start-up and the admin shows them read-only.
    """

    ae_title = models.CharField("AE title", max_length=AE, validators=[_validate_ae_title])
    host = models.CharField(max_length=255, help_text="Host name or IP address.")
    port = models.PositiveIntegerField()
    tls = models.BooleanField("TLS", default=False)
    description = models.CharField(max_length=255, blank=True)
    enabled = models.BooleanField(default=True)
    configured = models.BooleanField(
        "from configuration file",
        default=False,
        editable=False,
        help_text="Defined in the configuration file's remote_aes section; edit it there.",
    )

    objects = RemoteAEQuerySet.as_manager()

    class Meta:
        verbose_name = "remote AE"
        ordering = ["ae_title"]
        constraints = [
            models.UniqueConstraint(fields=["ae_title"], name="routing_remoteae_unique_ae_title"),
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535),
                name="routing_remoteae_port_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class CommitmentTransaction(models.Model):
    """One Storage Commitment request (PS3.4 J.3): kept until its report was delivered.

    Rows survive a restart of the receiver, so a pending report is still sent afterwards.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave up"
    STATES = [(PENDING, "pending"), (DELIVERED, "delivered"), (GAVE_UP, "gave up")]

    transaction_uid = models.CharField("transaction UID", max_length=UI)
    calling_ae_title = models.CharField("requester AE title", max_length=AE)
    requested_at = models.DateTimeField(default=timezone.now)
    # [[sop_class_uid, sop_instance_uid], ...] as requested.
    references = models.JSONField(default=list)
    # Filled when the instances are checked: [[class, instance, failure_reason], ...].
    failures = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=255, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "storage commitment"
        ordering = ["-requested_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["calling_ae_title", "transaction_uid"],
                name="routing_commitment_unique_requester_transaction",
            ),
        ]
        indexes = [
            # The delivery loop's "what is due now".
            models.Index(fields=["state", "next_attempt_at"], name="routing_commit_due_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.transaction_uid} from {self.calling_ae_title}"

    @property
    def outcome(self) -> str:
        if self.failures is None:
            return "not checked yet"
        if not self.failures:
            return f"all {len(self.references)} committed"
        return f"{len(self.failures)} of {len(self.references)} failed"


INSTANCE = "instance"
STUDY_STABLE = "study_stable"
WHEN = [(INSTANCE, "each instance as it is stored"), (STUDY_STABLE, "the study once stable")]


class ForwardingRule(models.Model):
    """Send what matches to a remote AE. Empty filters match everything.

    Rows with `configured` set mirror the configuration file's `forwarding:` section.
    """

    destination = models.ForeignKey(RemoteAE, on_delete=models.CASCADE, related_name="rules")
    when = models.CharField(max_length=16, choices=WHEN, default=INSTANCE)
    # Space- or comma-separated lists (CS 16, AE 16, UI 64 each).
    modalities = models.CharField(max_length=255, blank=True, help_text="e.g. CT MR; empty: all")
    calling_aes = models.CharField(
        "calling AE titles", max_length=1024, blank=True, help_text="empty: from any sender"
    )
    sop_classes = models.TextField("SOP class UIDs", blank=True, help_text="empty: all")
    deidentify = models.BooleanField(
        "de-identify",
        default=False,
        help_text=(
            "Send de-identified copies (dicognito: names, IDs and UIDs replaced by pseudonyms "
            "consistent per patient, dates shifted, private elements removed). Applies to "
            "everything sent to this destination. Burned-in pixel annotations are NOT removed."
        ),
    )
    enabled = models.BooleanField(default=True)
    configured = models.BooleanField("from configuration file", default=False, editable=False)

    class Meta:
        ordering = ["destination__ae_title", "pk"]

    def __str__(self) -> str:
        return f"{self.get_when_display()} → {self.destination.ae_title}"


class ForwardItemQuerySet(models.QuerySet):
    def waiting(self) -> "ForwardItemQuerySet":
        return self.filter(state__in=(ForwardItem.PENDING, ForwardItem.SENDING))


class ForwardItem(models.Model):
    """One instance to deliver to one destination: the forwarding queue (routing.forwarding).

    Written in the transaction that indexes the instance (or claims its study as stable), so an
    acknowledged instance a rule selects is never missing from it. A row being sent holds a
    lease; a worker that dies leaves it to be claimed again once the lease has expired, or as
    soon as a forwarder starts on the same host and finds the claimer gone (`claimed_by`).
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"
    STATES = [(PENDING, "pending"), (SENDING, "sending"), (SENT, "sent"), (DEAD, "dead letter")]

    # No database constraint and no cascade: deleting a patient of 100,000 instances stays one
    # DELETE (a cascade would make Django load every instance); the worker drops the rows of
    # instances deleted since they were queued. Instance ids are never reused.
    # No index of its own: the unique constraint below begins with it. Every index here is
    # written in each forwarded instance's ingest transaction.
    instance = models.ForeignKey(
        "archive.Instance",
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    destination = models.ForeignKey(RemoteAE, on_delete=models.CASCADE, related_name="+")
    # Groups a batch on one association; kept here so the claim needs no join.
    study_id = models.BigIntegerField(db_index=False)
    state = models.CharField(max_length=8, choices=STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Claimed again after a lease ran out: the destination may have received it twice.
    repeats = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    lease_until = models.DateTimeField(null=True, blank=True)
    # A default in the database: the queue INSERT of the ingest path (forwarding._QUEUE_INSERTS)
    # names only the columns it sets.
    claimed_by = models.CharField(
        max_length=96, blank=True, db_default="", help_text="host:pid of the claimer"
    )
    queued_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=255, blank=True)
    # "rule" or the admin user who asked.
    origin = models.CharField(max_length=150, default="rule")

    objects = ForwardItemQuerySet.as_manager()

    class Meta:
        verbose_name = "forwarding queue item"
        ordering = ["pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["instance", "destination"],
                name="routing_forwarditem_unique_instance_destination",
            ),
        ]
        indexes = [
            # The claim's "what is due now", per destination, oldest first.
            models.Index(
                fields=["state", "destination", "next_attempt_at"], name="routing_fwd_due_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"instance {self.instance_id} → {self.destination_id} ({self.state})"

    @property
    def last_status_hex(self) -> str:
        return "" if self.last_status is None else f"0x{self.last_status:04X}"


class ForwardCount(models.Model):
    """Instances forwarded, by destination and outcome: the counters of /metrics, kept apart
    from the queue so that removing old sent rows does not reset them."""

    destination = models.CharField(max_length=AE)
    outcome = models.CharField(max_length=16)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["destination", "outcome"], name="routing_forwardcount_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.destination} {self.outcome}: {self.count}"
