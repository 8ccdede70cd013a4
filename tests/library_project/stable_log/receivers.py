"""The example: record every study that has fully arrived (README, "Events for other apps")."""

import os
from typing import Any

from django.dispatch import receiver

from archive.models import Instance, Study
from archive.signals import study_stable
from stable_log.models import StudyArrival


@receiver(study_stable)
def record_arrival(sender: type[Study], study: Study, updated: bool, **kwargs: Any) -> None:
    StudyArrival.objects.create(
        study_instance_uid=study.study_instance_uid,
        updated=updated,
        instances=Instance.objects.filter(series__study=study).count(),
        pid=os.getpid(),
    )
