"""The archive's announcements in a receiver process: the stability sweeper thread, and the
flush of pending `instance_stored` signals at shutdown; and forwarding's threads (its rules,
its delivery worker), which live where the announcements do: in every receiver process.

Every receiver process (each worker of `--workers N`) runs a sweeper; the claim in
archive.stability makes each announcement happen in exactly one of them, or in another node's,
or in a separate `manage.py announce_stable --watch`. `announce_stable: false` leaves it to
the latter. Signal receivers are the apps' own code, loaded through INSTALLED_APPS as usual.
"""

import logging
from collections.abc import Callable

from archive.events import dispatcher_flush
from archive.stability import StabilitySweeper, StableAges
from archive.storage import Storage
from receiver.config import ReceiverConfig
from routing.forwarding import ForwardingWorker, RuleWatcher

logger = logging.getLogger(__name__)


def announcements_start(
    config: ReceiverConfig, *, storage: Storage | None = None
) -> Callable[[], None]:
    """Start this process's sweeper (unless configured off), and with `storage` its forwarding
    delivery worker; return what stops them.

    The delivery worker runs in each worker of `--workers N`, not in the parent: its claims
    take the index's writer lock, which a fork must never copy held. Claims are atomic, so
    workers (and `manage.py forward` elsewhere) share the queue safely."""
    sweeper = None
    if config.announce_stable:
        ages = StableAges(series=config.series_stable_age, study=config.study_stable_age)
        sweeper = StabilitySweeper(ages)
        sweeper.start()
        logger.info(
            "Announcing stable series after %g s and studies after %g s without a new instance",
            ages.series,
            ages.study,
        )
    # Connects the forwarding rules' in-transaction receivers in this process when a rule exists.
    rules = RuleWatcher().start()
    delivery = None
    if storage is not None:
        delivery = ForwardingWorker(
            storage=storage, ae_title=config.ae_title, timeout=config.dimse_timeout
        )
        delivery.start()

    def stop() -> None:
        rules.stop()
        if delivery is not None:
            delivery.stop()
        if sweeper is not None:
            sweeper.stop()
        dispatcher_flush(timeout=5.0)

    return stop
