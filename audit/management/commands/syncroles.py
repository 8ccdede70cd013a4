"""`python manage.py syncroles`: give the viewer, operator and auditor groups their permissions,
including those of models added since the roles were created (audit.roles)."""

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand

from audit.roles import ROLES, roles_sync


class Command(BaseCommand):
    help = "Create or update the viewer, operator and auditor groups and their permissions."

    def handle(self, *args: Any, **options: Any) -> None:
        roles_sync(apps)
        self.stdout.write(f"roles up to date: {', '.join(ROLES)}")
