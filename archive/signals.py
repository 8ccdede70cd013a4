"""What the archive tells other Django apps, as Django signals.

After the commit that made them true (never for a rolled-back row), from a background thread of
the process that made them true; a receiver that raises is logged and never fails ingest:

- `instance_stored(sender=Instance, instance, created, outcome)`: an instance was received.
  `created` is False for a resend (`outcome` "identical", "kept" or "overwritten"). Sent from
  the receiving process's dispatcher thread (archive.events), best effort: see there.
- `series_stable(sender=Series, series, updated)` and `study_stable(sender=Study, study,
  updated)`: no new instance of it for its stable age. Sent once per quiet period by exactly
  one process, the one whose sweeper claimed it (archive.stability); `updated` is True when it
  had been announced before and has changed since.

Inside the transaction, for apps that must write something that commits or rolls back with it
(a forwarding queue); a receiver that raises rolls the transaction back:

- `instance_stored_in_transaction(sender=Instance, instance_id, series_id, created)`: in the
  ingest transaction of a new instance (the C-STORE then fails with 0xA700 if it raises), or of
  an overwritten one. Keep it to a few fast writes: it is on the C-STORE hot path.
- `series_stable_in_transaction(sender=Series, series, updated)` and
  `study_stable_in_transaction(sender=Study, study, updated)`: in the transaction that claims
  the announcement; if one raises, the claim is rolled back and retried at the next sweep.
"""

from django.dispatch import Signal

instance_stored = Signal()
series_stable = Signal()
study_stable = Signal()

instance_stored_in_transaction = Signal()
series_stable_in_transaction = Signal()
study_stable_in_transaction = Signal()


def receiver_name(receiver: object) -> str:
    """A receiver's dotted name, for the log line that reports its failure."""
    module = getattr(receiver, "__module__", "?")
    return f"{module}.{getattr(receiver, '__qualname__', receiver)}"
