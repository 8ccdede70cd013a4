"""The receiver's own settings plus this project's app: `DJANGO_SETTINGS_MODULE=
research.receiver_settings store_scp ...` runs the receiver with stable_log's receivers loaded
in its processes, whose sweepers then announce to it."""

from pacsproject.settings import *  # noqa: F403
from pacsproject.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "stable_log"]
