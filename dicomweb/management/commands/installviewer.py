from django.core.management.base import BaseCommand, CommandError

from dicomweb.viewer import OHIF_PACKAGE, ViewerUnavailable, viewer_install


class Command(BaseCommand):
    help = f"Download the OHIF viewer ({OHIF_PACKAGE}) with npm and configure it for /dicomweb/."

    def handle(self, *args: object, **options: object) -> None:
        try:
            target = viewer_install()
        except ViewerUnavailable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"OHIF installed in {target}; served at /viewer/")
