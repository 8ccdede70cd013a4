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
