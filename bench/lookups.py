"""Time the index look-ups users make, through the ORM; run by bench/scale.py with the index's
DATABASE_URL in the environment."""

import os
import time
from datetime import date

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacsproject.settings")
django.setup()

from archive.models import Instance, Patient, Study  # noqa: E402

QUERIES = {
    "patient by ID": lambda: Patient.objects.filter(patient_id="FILL00001234"),
    "patient name prefix": lambda: Patient.objects.filter(name__startswith="FILLER^PATIENT0000123")[
        :50
    ],
    "study by accession number": lambda: Study.objects.filter(accession_number="F000001234"),
    "studies on a date": lambda: Study.objects.filter(study_date=date(2019, 5, 17))[:100],
    "studies by patient name prefix": lambda: Study.objects.filter(
        patient__name__startswith="FILLER^PATIENT000012"
    )[:100],
    "instance by SOP Instance UID": lambda: Instance.objects.filter(
        sop_instance_uid="2.25.3000000500000"
    ),
}


def main() -> None:
    for name, query in QUERIES.items():
        rows = len(list(query()))
        times = []
        for _ in range(20):
            start = time.perf_counter()
            list(query())
            times.append(time.perf_counter() - start)
        times.sort()
        print(f"| {name} | {rows} | {times[10] * 1000:.2f} | {times[-1] * 1000:.2f} |")


if __name__ == "__main__":
    main()
