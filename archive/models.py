"""The index of received instances: Patient → Study → Series → Instance.

Field sizes follow the DICOM value representations (PS3.5 6.2): UI 64, LO 64, SH 16, CS 16,
AE 16, PN 64 per component group (three groups and two separators make 194). Values that break
those limits are truncated by the ingest service before they reach the database; the stored
file always keeps the complete value. The exception: study, series and SOP instance UIDs
identify, so they are kept verbatim, and real senders exceed UI's 64 characters; they get
UID_KEPT (255; storage.strict_uids refuses what breaks PS3.5 instead).
"""

from collections.abc import Iterable
from typing import Any

from django.db import connections, models
from django.utils import timezone

from archive.dblock import insert_returning_id
from archive.header import UID_KEPT
from archive.person_names import person_name_display, person_name_fold

UI = 64
LO = 64
SH = 16
CS = 16
AE = 16
PN = 194


def _folded_index(table: str, field: str) -> models.Index:
    """The index a folded name is matched on: `=`, and a literal prefix (`LIKE 'abc%'` on
    PostgreSQL, whose default operator class serves LIKE only under the C collation; GLOB on
    SQLite, which scans it as a range of any index of BINARY collation)."""
    short = {"referring_physician_name_fold": "refphys_fold"}.get(field, field)
    return models.Index(
        fields=[field], name=f"archive_{table}_{short}_idx", opclasses=["varchar_pattern_ops"]
    )


class FoldedNamesQuerySet(models.QuerySet):
    """Keeps each person name's folded copy (archive.person_names.person_name_fold) right on
    the writes that bypass `save()`: `update()`, `bulk_create()` and `bulk_update()`."""

    def update(self, **kwargs: Any) -> int:
        for name, folded in self.model.FOLDED_NAMES.items():
            # Both given: bulk_update(), whose objects fold_names() has just folded.
            if name in kwargs and folded not in kwargs:
                value = kwargs[name]
                if not isinstance(value, str):
                    # An expression's value is known only in the database, which cannot fold.
                    raise TypeError(f"{name} must be given as text, not {value!r}")
                kwargs[folded] = _fold(value)
        return super().update(**kwargs)

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list:
        objs = list(objs)
        for obj in objs:
            obj.fold_names()
        return super().bulk_create(objs, *args, **kwargs)

    def bulk_update(self, objs: Iterable[models.Model], fields: Any, *args: Any, **kwargs: Any):
        objs, fields = list(objs), list(fields)
        for obj in objs:
            obj.fold_names()
        fields += [f for n, f in self.model.FOLDED_NAMES.items() if n in fields and f not in fields]
        return super().bulk_update(objs, fields, *args, **kwargs)


class FoldedNamesModel(models.Model):
    """A model with person names matched case-insensitively: each name (a key of FOLDED_NAMES)
    has its folded form in another column, indexed, written whenever the name is written (in
    Python: SQLite's UPPER() and LOWER() know ASCII letters only)."""

    FOLDED_NAMES: dict[str, str] = {}

    objects = FoldedNamesQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.fold_names()
        update_fields = kwargs.get("update_fields")
        if update_fields is not None:
            update_fields = set(update_fields)
            for name, folded in self.FOLDED_NAMES.items():
                if name in update_fields:
                    update_fields.add(folded)
            kwargs["update_fields"] = update_fields
        super().save(*args, **kwargs)

    def fold_names(self) -> None:
        for name, folded in self.FOLDED_NAMES.items():
            setattr(self, folded, _fold(getattr(self, name)))


def _fold(name: str) -> str:
    # NFC lengthens a few characters (U+0958 becomes two): the copy must fit its column.
    return person_name_fold(name)[:PN]


class Patient(FoldedNamesModel):
    # Empty string, not NULL, for "no issuer": NULLs are never equal, so a NULL issuer would let
    # the unique constraint admit the same patient twice.
    patient_id = models.CharField("patient ID", max_length=LO, blank=True)
    issuer_of_patient_id = models.CharField("issuer of patient ID", max_length=LO, blank=True)
    name = models.CharField(max_length=PN, blank=True)
    name_fold = models.CharField(max_length=PN, blank=True, editable=False)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=CS, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["patient_id", "issuer_of_patient_id"],
                name="archive_patient_unique_patient_id_issuer",
            ),
        ]
        indexes = [
            # Admin search and `Study.objects.filter(patient__name__startswith=...)`.
            models.Index(fields=["name"], name="archive_patient_name_idx"),
            _folded_index("patient", "name_fold"),
        ]
        ordering = ["name", "patient_id"]

    FOLDED_NAMES = {"name": "name_fold"}

    def __str__(self) -> str:
        return f"{self.patient_id or '(no ID)'} {person_name_display(self.name)}".strip()


class Study(FoldedNamesModel):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="studies")
    study_instance_uid = models.CharField("study instance UID", max_length=UID_KEPT)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=SH, blank=True)
    study_id = models.CharField("study ID", max_length=SH, blank=True)
    description = models.CharField(max_length=LO, blank=True)
    referring_physician_name = models.CharField(max_length=PN, blank=True)
    referring_physician_name_fold = models.CharField(max_length=PN, blank=True, editable=False)
    # Stability (archive.stability): when this level last got a new instance, whether it has
    # been quiet for its stable age since (announced by one process), and when it was last
    # announced, so that the next announcement can say the level changed.
    last_received_at = models.DateTimeField(null=True, blank=True, editable=False)
    stable = models.BooleanField(default=False, editable=False)
    stable_announced_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(
                fields=["study_instance_uid"], name="archive_study_unique_study_instance_uid"
            ),
        ]
        indexes = [
            # Worklist-style look-ups by date range, and RIS look-ups by accession number.
            models.Index(fields=["study_date"], name="archive_study_date_idx"),
            models.Index(fields=["accession_number"], name="archive_study_accession_idx"),
            _folded_index("study", "referring_physician_name_fold"),
            # The stability sweeper's "quiet long enough, not yet announced" scan.
            models.Index(
                fields=["last_received_at"],
                condition=models.Q(stable=False),
                name="archive_study_unstable_idx",
            ),
        ]
        ordering = ["-study_date", "-study_time"]

    FOLDED_NAMES = {"referring_physician_name": "referring_physician_name_fold"}

    def __str__(self) -> str:
        return f"{self.study_date or '(no date)'} {self.description or self.study_instance_uid}"


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField("series instance UID", max_length=UID_KEPT)
    modality = models.CharField(max_length=CS, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=LO, blank=True)
    body_part_examined = models.CharField(max_length=CS, blank=True)
    # Stability (archive.stability): when this level last got a new instance, whether it has
    # been quiet for its stable age since (announced by one process), and when it was last
    # announced, so that the next announcement can say the level changed.
    last_received_at = models.DateTimeField(null=True, blank=True, editable=False)
    stable = models.BooleanField(default=False, editable=False)
    stable_announced_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(
                fields=["series_instance_uid"], name="archive_series_unique_series_instance_uid"
            ),
        ]
        indexes = [
            # Filtering by modality in the admin and in statistics.
            models.Index(fields=["modality"], name="archive_series_modality_idx"),
            # The stability sweeper's "quiet long enough, not yet announced" scan.
            models.Index(
                fields=["last_received_at"],
                condition=models.Q(stable=False),
                name="archive_series_unstable_idx",
            ),
        ]
        ordering = ["series_number"]

    def __str__(self) -> str:
        return f"{self.modality} {self.series_number or ''} {self.description}".strip()


class InstanceManager(models.Manager["Instance"]):
    def insert(self, using: str = "default", **values: Any) -> int:
        """Insert one row and return its id.

        What `create()` does for this model (no signals, no defaults computed in Python: all
        values are given), without building the model object and compiling the INSERT on every
        call, which cost a fifth of a small instance's ingest time (bench/run.py, py-spy).
        """
        sql, fields = self._insert_sql(tuple(values))
        connection = connections[using]
        params = [
            value
            if type(value) in _PLAIN_TYPES
            # An aware datetime for a DateTimeField: what its conversion ends in, directly.
            else connection.ops.adapt_datetimefield_value(value)
            if type(field) is models.DateTimeField and timezone.is_aware(value)
            else field.get_db_prep_save(value, connection)
            for field, value in zip(fields, values.values(), strict=True)
        ]
        return insert_returning_id(sql, params, using)

    def indexed(self, sop_instance_uid: str, using: str = "default") -> bool:
        """Whether an instance of that UID is indexed: `filter(...).exists()` without compiling
        the query each time (an upload's check before it sends, once per instance)."""
        global _INDEXED_SQL
        if _INDEXED_SQL is None:
            meta, quote = self.model._meta, connections["default"].ops.quote_name
            _INDEXED_SQL = (
                f"SELECT 1 FROM {quote(meta.db_table)} "
                f"WHERE {quote(meta.get_field('sop_instance_uid').column)} = %s LIMIT 1"
            )
        with connections[using].cursor() as cursor:
            cursor.execute(_INDEXED_SQL, [sop_instance_uid])
            return cursor.fetchone() is not None

    def _insert_sql(self, names: tuple[str, ...]) -> tuple[str, list[models.Field]]:
        cached = _INSERTS.get(names)
        if cached is None:
            meta = self.model._meta
            fields = [meta.get_field(name) for name in names]
            quote = connections["default"].ops.quote_name
            cached = (
                f"INSERT INTO {quote(meta.db_table)} "
                f"({', '.join(quote(field.column) for field in fields)}) "
                f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {quote(meta.pk.column)}",
                fields,
            )
            _INSERTS[names] = cached
        return cached


_INSERTS: dict[tuple[str, ...], tuple[str, list[models.Field]]] = {}
_INDEXED_SQL: str | None = None
# Values every database driver takes as they are; others (datetimes) go through their field.
_PLAIN_TYPES = frozenset((str, int, type(None)))


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField("SOP instance UID", max_length=UID_KEPT)
    sop_class_uid = models.CharField("SOP class UID", max_length=UI)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField("transfer syntax UID", max_length=UI)
    # Relative to the storage directory, with forward slashes, so the archive can move.
    path = models.CharField(max_length=1024)
    size = models.BigIntegerField(help_text="Size of the stored file in bytes.")
    sha256 = models.CharField("SHA-256", max_length=64, help_text="Of the stored file.")
    received_at = models.DateTimeField()
    calling_ae_title = models.CharField("calling AE title", max_length=AE, blank=True)
    remote_address = models.CharField(max_length=64, blank=True)

    objects = InstanceManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["sop_instance_uid"], name="archive_instance_unique_sop_instance_uid"
            ),
        ]
        indexes = [
            # Ingest statistics per hour/day and "what arrived recently" in the admin.
            models.Index(fields=["received_at"], name="archive_inst_received_idx"),
            # Filtering by sender in the admin and top-senders statistics.
            models.Index(fields=["calling_ae_title"], name="archive_inst_calling_ae_idx"),
        ]
        ordering = ["instance_number"]

    def __str__(self) -> str:
        return self.sop_instance_uid


class StorageLocation(models.Model):
    """Which storage directory this index describes: the identity written in that directory's
    marker file at first start, and where it was last seen. A receiver whose storage is not
    this one refuses to start rather than index files into the wrong place
    (archive.storage_identity)."""

    identity = models.UUIDField()
    directory = models.CharField(max_length=4096)
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["identity"], name="archive_storagelocation_unique_identity"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.directory} ({self.identity})"


class RecycledStudy(models.Model):
    """One study removed by storage.retention (archive.retention): what went and why.

    Append-only, newest first; `/metrics` counts it, so one scrape covers every node.
    """

    study_instance_uid = models.CharField("study instance UID", max_length=UID_KEPT)
    instances = models.IntegerField()
    bytes = models.BigIntegerField()
    last_received_at = models.DateTimeField(null=True)
    recycled_at = models.DateTimeField()
    reason = models.CharField(max_length=16)  # "max_bytes" or "max_age_days"

    class Meta:
        ordering = ["-recycled_at"]

    def __str__(self) -> str:
        return self.study_instance_uid


class CrashMarker(models.Model):
    """A row per receiver process that commits instances without waiting for PostgreSQL's WAL
    flush, in a table that is UNLOGGED on PostgreSQL: its crash recovery empties such a table,
    so a row gone means that the server crashed since it was written, and that it may have
    undone those commits (archive.unflushed). Unused on SQLite."""

    token = models.CharField(max_length=32, unique=True)
    written_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.token
