from django.db import models


class StudyArrival(models.Model):
    """One row per `study_stable` announcement this app received."""

    study_instance_uid = models.CharField(max_length=64)
    updated = models.BooleanField()
    instances = models.IntegerField()
    pid = models.IntegerField(help_text="The process that received the announcement.")
    recorded_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.study_instance_uid}{' (updated)' if self.updated else ''}"
