#!/usr/bin/env python
"""The research project's manage.py (tests/library_project: the archive used as a library)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
