"""The roles staff users are given, as Django groups with model permissions. Created by a
migration (audit/migrations/0002_roles.py); `manage.py syncroles` grants the permissions of
models added since (a later migration may call `roles_sync` too).

- viewer: browse the index, previews, downloads, the viewer and DICOMweb reads; no changes.
- operator: a viewer who also deletes and edits the access rules (allowed AEs, SOP class rules,
  remote AEs and forwarding rules once they exist).
- auditor: the audit trail and the association log only; no patient data, no images.

A user needs "Staff status" to sign in to the admin at all, and a role to see anything there.
"""

from typing import Any

_BROWSE = [
    "archive.view_patient",
    "archive.view_study",
    "archive.view_series",
    "archive.view_instance",
    "receiver.view_associationlog",
    "receiver.view_receiverprocess",
]
_DELETE = [
    "archive.delete_patient",
    "archive.delete_study",
    "archive.delete_series",
    "archive.delete_instance",
]
_RULES = [
    f"{app}.{verb}_{model}"
    for app, model in [
        ("receiver", "allowedae"),
        ("receiver", "sopclassrule"),
        ("routing", "remoteae"),
        ("routing", "forwardingrule"),
    ]
    for verb in ("view", "add", "change", "delete")
]

VIEWER, OPERATOR, AUDITOR = "viewer", "operator", "auditor"
ROLES: dict[str, list[str]] = {
    VIEWER: _BROWSE,
    OPERATOR: [*_BROWSE, *_DELETE, *_RULES],
    AUDITOR: ["audit.view_auditevent", "receiver.view_associationlog"],
}


def roles_sync(apps: Any) -> None:
    """Create the groups and give each exactly its role's permissions (those of models that
    exist; the others are granted by a later sync). `apps` is a migration's app registry or
    django.apps.apps."""
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran; create them now.
    for app_config in apps.get_app_configs():
        # A migration's app configs have no models module, which create_permissions needs.
        models_module = getattr(app_config, "models_module", None)
        app_config.models_module = models_module or True
        try:
            create_permissions(app_config, apps=apps, verbosity=0)
        finally:
            app_config.models_module = models_module
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, names in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        wanted = []
        for name in names:
            app_label, codename = name.split(".")
            wanted.extend(
                Permission.objects.filter(content_type__app_label=app_label, codename=codename)
            )
        group.permissions.set(wanted)
