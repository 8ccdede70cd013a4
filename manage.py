#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacsproject.settings")
    from django.core.management import execute_from_command_line

    from pacsproject.site_config import config_option_take
    from receiver.config import ConfigError

    try:
        # `--config FILE` on any command names the one configuration file (DICOM_CONFIG).
        argv = config_option_take(sys.argv)
        execute_from_command_line(argv)
    except ConfigError as exc:
        # A mistake in the configuration file: one line naming the file and the key.
        sys.stderr.write(f"CommandError: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
