"""WSGI entry point: `gunicorn pacsproject.wsgi`."""

import os
import sys

from django.core.wsgi import get_wsgi_application

from dicomweb.sendfile import sendfile_application
from receiver.config import ConfigError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacsproject.settings")

try:
    # WADO-RS sends stored files with sendfile under gunicorn (dicomweb.sendfile).
    application = sendfile_application(get_wsgi_application())
except ConfigError as exc:
    # A mistake in the configuration file (DICOM_CONFIG): one line naming the file and the key,
    # as every manage.py command gives it, then gunicorn's "application failed to load" exit
    # status (4), on which it stops instead of booting workers that would fail the same way.
    sys.stderr.write(f"Configuration error: {exc}\n")
    sys.stderr.flush()
    sys.exit(4)
