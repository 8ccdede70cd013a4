"""What DICOMweb keeps beside the archive's index: the DICOM JSON of instances already asked
for (WADO-RS metadata), so that a series' metadata is one query rather than a parse of every
stored file."""

from django.db import models


class InstanceMetadata(models.Model):
    """An instance's DICOM JSON as `dicomweb.instances.metadata_json` made it from the stored
    file, zlib-compressed, with a placeholder for the DICOMweb root in its BulkDataURIs (the
    host a client reaches us by differs). A cache: made at the first request, valid while the
    instance's sha256 and `format` (METADATA_FORMAT) are the current ones."""

    instance = models.OneToOneField(
        "archive.Instance", on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    sha256 = models.CharField("SHA-256 of the file it was made from", max_length=64)
    format = models.PositiveSmallIntegerField()
    json = models.BinaryField()

    def __str__(self) -> str:
        return f"metadata of instance {self.instance_id}"
