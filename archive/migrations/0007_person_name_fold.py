"""Person names matched case-insensitively on a folded copy written in Python
(archive.person_names.person_name_fold), instead of UPPER(name), which SQLite applies to ASCII
letters only.

The copies of existing rows are filled before their indexes are built: first LOWER(name) in one
statement (the fold of every ASCII name), then, in batches by primary key, each name whose
copy differs from its fold in Python (names with other letters) is rewritten. 1,000,000 ASCII
names take one UPDATE and one read; only the others are written row by row.
"""

from django.db import migrations, models

from archive.person_names import person_name_fold

BATCH = 10_000


def _fill(schema_editor, model, name_field: str, fold_field: str) -> None:
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    meta = model._meta
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    name = quote(meta.get_field(name_field).column)
    fold = quote(meta.get_field(fold_field).column)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {fold} = LOWER({name})")
        last = None
        while True:
            rows = model.objects.using(schema_editor.connection.alias).order_by("pk")
            if last is not None:
                rows = rows.filter(pk__gt=last)
            batch = list(rows.values_list("pk", name_field, fold_field)[:BATCH])
            if not batch:
                break
            last = batch[-1][0]
            changed = []
            for key, value, folded in batch:
                wanted = person_name_fold(value)[:194]  # archive.models._fold
                if wanted != folded:
                    changed.append((wanted, key))
            if changed:
                cursor.executemany(f"UPDATE {table} SET {fold} = %s WHERE {pk} = %s", changed)


def fill_folded_names(apps, schema_editor) -> None:
    _fill(schema_editor, apps.get_model("archive", "Patient"), "name", "name_fold")
    _fill(
        schema_editor,
        apps.get_model("archive", "Study"),
        "referring_physician_name",
        "referring_physician_name_fold",
    )


class Migration(migrations.Migration):

    dependencies = [
        ('archive', '0006_recycled_study'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='patient',
            name='archive_patient_name_upper_idx',
        ),
        migrations.AddField(
            model_name='patient',
            name='name_fold',
            field=models.CharField(blank=True, editable=False, max_length=194),
        ),
        migrations.AddField(
            model_name='study',
            name='referring_physician_name_fold',
            field=models.CharField(blank=True, editable=False, max_length=194),
        ),
        migrations.RunPython(fill_folded_names, migrations.RunPython.noop, elidable=True),
        migrations.AddIndex(
            model_name='patient',
            index=models.Index(fields=['name_fold'], name='archive_patient_name_fold_idx', opclasses=['varchar_pattern_ops']),
        ),
        migrations.AddIndex(
            model_name='study',
            index=models.Index(fields=['referring_physician_name_fold'], name='archive_study_refphys_fold_idx', opclasses=['varchar_pattern_ops']),
        ),
    ]
