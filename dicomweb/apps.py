from django.apps import AppConfig


class DicomwebConfig(AppConfig):
    name = "dicomweb"
    verbose_name = "DICOMweb"

    def ready(self) -> None:
        from dicomweb.metadata import metadata_prepare_connect

        metadata_prepare_connect()
