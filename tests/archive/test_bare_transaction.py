"""archive.dblock.bare_transaction against the real index database (SQLite or PostgreSQL)."""

import pytest
from django.db import DatabaseError, IntegrityError, connection, connections, transaction

from archive.dblock import bare_transaction, insert_returning_id
from archive.models import Patient

pytestmark = pytest.mark.django_db(transaction=True)


_PATIENT_INSERT = (
    "INSERT INTO archive_patient (patient_id, issuer_of_patient_id, name, name_fold, "
    "birth_date, sex) VALUES (%s, '', %s, '', NULL, '') RETURNING id"
)


def _insert_patient(patient_id: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO archive_patient (patient_id, issuer_of_patient_id, name, name_fold, "
            "birth_date, sex) VALUES (%s, '', '', '', NULL, '') RETURNING id",
            [patient_id],
        )
        return cursor.fetchone()[0]


def test_statements_commit_together_and_the_first_returns_its_own_rows():
    with bare_transaction():
        first = _insert_patient("P1")
        second = _insert_patient("P2")
    assert Patient.objects.get(pk=first).patient_id == "P1"
    assert Patient.objects.get(pk=second).patient_id == "P2"
    assert connection.get_autocommit() and not connection.in_atomic_block


def test_an_error_after_the_first_statement_rolls_all_of_it_back():
    class Refused(Exception):
        pass

    with pytest.raises(Refused), bare_transaction():
        _insert_patient("P1")
        raise Refused
    with pytest.raises(IntegrityError), bare_transaction():
        _insert_patient("P2")
        _insert_patient("P2")  # the unique key
    assert not Patient.objects.exists()
    # The connection is left in autocommit, outside any transaction, and still works.
    with bare_transaction():
        _insert_patient("P3")
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P3"]


def test_a_failing_first_statement_leaves_no_transaction_open():
    Patient.objects.create(patient_id="P1")
    with pytest.raises(IntegrityError), bare_transaction():
        _insert_patient("P1")
    with transaction.atomic():  # would fail if a transaction were still open on the server
        Patient.objects.create(patient_id="P2")
    assert Patient.objects.count() == 2


def test_inside_an_atomic_block_it_is_part_of_that_block():
    with pytest.raises(RuntimeError), transaction.atomic():
        with bare_transaction():
            _insert_patient("P1")
        raise RuntimeError
    assert not Patient.objects.exists()


def test_executemany_as_the_first_statement_is_inside_the_transaction():
    with pytest.raises(RuntimeError), bare_transaction():
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO archive_patient (patient_id, issuer_of_patient_id, name, "
                "name_fold, birth_date, sex) VALUES (%s, '', '', '', NULL, '')",
                [["P1"], ["P2"]],
            )
        raise RuntimeError
    assert not Patient.objects.exists()


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('synchronous_commit')")
        return cursor.fetchone()[0]


@pytest.mark.parametrize("first", ["execute", "executemany", "insert_returning_id"])
def test_without_flush_postgresql_commits_without_waiting_for_the_wal_and_only_this_once(first):
    if connection.vendor != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's (SQLite's mode is the connection's)")
    configured = _synchronous_commit()
    assert configured != "off", "this test needs a server whose commits wait for the flush"
    with bare_transaction(flush=False):
        if first == "execute":
            # Its own RETURNING row, not that of a statement sent before it.
            assert Patient.objects.get(pk=_insert_patient("P1")).patient_id == "P1"
        elif first == "insert_returning_id":
            pk = insert_returning_id(_PATIENT_INSERT, ["P1", ""])
            assert Patient.objects.get(pk=pk).patient_id == "P1"
        else:
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO archive_patient (patient_id, issuer_of_patient_id, name, "
                    "name_fold, birth_date, sex) VALUES (%s, '', '', '', NULL, '')",
                    [["P1"], ["P2"]],
                )
        inside = _synchronous_commit()
    assert inside == "off"
    assert Patient.objects.filter(patient_id="P1").exists()
    # SET LOCAL: the next transaction, with or without bare_transaction, waits again.
    with bare_transaction():
        _insert_patient("P3")
        assert _synchronous_commit() == configured
    assert _synchronous_commit() == configured


# insert_returning_id: inside bare_transaction it bypasses Django's cursor (libpq directly on
# PostgreSQL, sqlite3's own execute on SQLite); what it does must not change.


def test_insert_returning_id_as_the_first_statement_is_inside_the_transaction():
    with pytest.raises(RuntimeError), bare_transaction(flush=False):
        insert_returning_id(_PATIENT_INSERT, ["P1", ""])
        _insert_patient("P2")
        raise RuntimeError
    assert not Patient.objects.exists()
    with bare_transaction(flush=False):
        first = insert_returning_id(_PATIENT_INSERT, ["P1", ""])
        second = _insert_patient("P2")
    assert type(first) is int
    assert Patient.objects.get(pk=first).patient_id == "P1"
    assert Patient.objects.get(pk=second).patient_id == "P2"
    assert connection.get_autocommit() and not connection.in_atomic_block


def test_insert_returning_id_keeps_hostile_values_verbatim():
    hostile = "O'Brien\\'); DROP TABLE archive_patient; -- %s %% \u00e9\u6f22 \\x27"
    with bare_transaction():
        pk = insert_returning_id(_PATIENT_INSERT, ["P1", hostile])
    assert Patient.objects.get(pk=pk).name == hostile


def test_insert_returning_id_raises_django_errors_and_leaves_no_transaction_open():
    Patient.objects.create(patient_id="P1")
    with connection.cursor() as cursor:
        cursor.execute("CREATE UNIQUE INDEX test_patient_unique ON archive_patient (patient_id)")
    try:
        with pytest.raises(IntegrityError), bare_transaction(flush=False):
            insert_returning_id(_PATIENT_INSERT, ["P1", ""])
        with transaction.atomic():  # would fail if a transaction were still open
            Patient.objects.create(patient_id="P2")
        with pytest.raises(IntegrityError), bare_transaction():
            insert_returning_id(_PATIENT_INSERT, ["P3", ""])
            insert_returning_id(_PATIENT_INSERT, ["P3", ""])
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX test_patient_unique")
    assert sorted(Patient.objects.values_list("patient_id", flat=True)) == ["P1", "P2"]


def test_insert_returning_id_is_seen_by_execute_wrappers():
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append((sql, list(params), context["connection"] is connections["default"]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper), bare_transaction():
        insert_returning_id(_PATIENT_INSERT, ["P1", ""])
    assert seen[0] == (_PATIENT_INSERT, ["P1", ""], True)


def test_insert_returning_id_outside_a_bare_transaction_commits_at_once():
    pk = insert_returning_id(_PATIENT_INSERT, ["P1", ""])
    assert Patient.objects.get(pk=pk).patient_id == "P1"


def test_a_transaction_that_postgresql_rolled_back_does_not_pass_for_committed():
    if connection.vendor != "postgresql":
        pytest.skip("a failed statement aborts the whole transaction on PostgreSQL only")
    with pytest.raises(DatabaseError, match="rolled back"), bare_transaction():
        insert_returning_id(_PATIENT_INSERT, ["P1", ""])
        with pytest.raises(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")  # caught here: the transaction stays aborted
    assert not Patient.objects.exists()
    with bare_transaction():
        _insert_patient("P2")
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P2"]
