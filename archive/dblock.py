"""One writer at a time on a SQLite index, queued on a lock instead of SQLite's busy handler.

SQLite admits one write transaction at a time. Left to itself, a second writer retries in
sleeps of up to 100 ms (its busy handler), which made the slowest C-STOREs of several
concurrent associations wait hundreds of milliseconds. Threads of one process queue on a
threading lock and processes sharing the file on an flock(2). The wait is bounded by the
database's busy timeout, like SQLite's own, so a stuck writer elsewhere turns into a refused
C-STORE, not a hung one. Other databases need no such lock: their writers take row locks.
"""

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.db.backends.sqlite3.base import FORMAT_QMARK_REGEX
from psycopg import errors as psycopg_errors
from psycopg import pq

from archive.exceptions import IndexFailure

_thread_lock = threading.Lock()
_lock_files: dict[str, int] = {}


_lock_files_guard = threading.Lock()


def _lock_file(database: str, kind: str = "writer") -> int:
    path = f"{database}-{kind}.lock"
    with _lock_files_guard:  # callers hold different locks: one descriptor per file
        fd = _lock_files.get(path)
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            _lock_files[path] = fd
        return fd


@contextmanager
def index_writer(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Hold the index's write lock for the duration of a write transaction.

    Raises IndexFailure when the lock is not free within the database's busy timeout.
    """
    connection = connections[using]  # once: each use of the proxy is a lookup
    if connection.vendor != "sqlite":
        yield
        return
    settings = connection.settings_dict
    timeout = float(settings.get("OPTIONS", {}).get("timeout", 30))
    deadline = time.monotonic() + timeout
    if not _thread_lock.acquire(timeout=timeout):
        raise IndexFailure(f"index busy: no write lock within {timeout:.0f} s")
    try:
        fd = _lock_file(settings["NAME"])
        # Another receiver process writes; it holds the lock for a fraction of a millisecond,
        # so poll finely at first (bench/run.py --workers 2: 6% more instances per second
        # than starting at 0.5 ms) and back off for a writer that takes longer.
        pause = 0.00005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexFailure(
                        f"index busy: another process held its write lock for {timeout:.0f} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        _thread_lock.release()


_BEGIN = ("BEGIN",)
_BEGIN_NO_FLUSH = ("BEGIN", "SET LOCAL synchronous_commit TO off")
# The bare transaction open on this thread, if any (insert_returning_id's fast path).
_open = threading.local()


@contextmanager
def bare_transaction(*, flush: bool = True) -> Iterator[bool]:
    """A write transaction without Django's bookkeeping, for statements that need none of it.

    On SQLite, `transaction.atomic()` costs as much CPU as the INSERT of an instance it wraps
    (savepoint and on_commit bookkeeping, autocommit switching: bench/run.py, py-spy); here the
    transaction is begun and committed on the DB-API connection itself. Django does not know it
    is open, so the block must not open an atomic block of its own (no get_or_create()).
    Errors are Django's database exceptions, as from the ORM.

    On PostgreSQL each statement is a round trip to the server, and atomic() makes three of an
    instance's INSERT (BEGIN, INSERT, COMMIT). Here BEGIN travels with the block's first
    statement, in one query string (Django's client-side binding cursors allow that): two.
    Other databases, or PostgreSQL with server-side binding, get atomic() (which flushes).

    With `flush=False`, PostgreSQL commits it without waiting for its WAL to reach the disk
    (`SET LOCAL synchronous_commit TO off`, sent with BEGIN): for rows that can be rebuilt
    from files already durable, as SQLite's synchronous=NORMAL treats every commit. A crash of
    the database server may then undo the last commits, never leave them half done. SQLite's
    mode is the connection's (pacsproject.database), whatever `flush` says. Yields whether the
    commit will not wait for the flush (True only on PostgreSQL with `flush=False`).
    """
    connection = connections[DEFAULT_DB_ALIAS]
    vendor = connection.vendor
    if (
        connection.in_atomic_block
        or vendor not in ("sqlite", "postgresql")
        or connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    ):
        with transaction.atomic():
            yield False
        return
    connection.ensure_connection()
    bare = _BareTransaction(connection, _BEGIN if flush else _BEGIN_NO_FLUSH)
    if vendor == "sqlite":
        with connection.wrap_database_errors:
            connection.connection.execute("BEGIN")
        bare.begun = True
    _open.bare = bare
    try:
        if vendor == "sqlite":
            yield False
        else:
            with connection.execute_wrapper(bare.wrapper):
                yield not flush
        if bare.begun:
            bare.commit()
    except BaseException:
        if bare.begun:
            bare.rollback()
        raise
    finally:
        _open.bare = None


def insert_returning_id(sql: str, params: Sequence[Any], using: str = DEFAULT_DB_ALIAS) -> int:
    """Run one `INSERT ... RETURNING id` on the default database and return the id.

    Inside bare_transaction, on the DB-API connection itself: through Django's cursor wrapper
    and psycopg's cursor, an instance's INSERT and COMMIT cost 170 µs of CPU on PostgreSQL
    against 110 µs through libpq directly (its parameters still quoted by psycopg, as its
    client-side cursors do), and on SQLite Django rewrites the placeholders at every call.
    Django's execute wrappers still see the statement (with a cursor of the same connection in
    their context); with queries logged (DEBUG) it takes Django's cursor, which logs them.
    """
    connection = connections[using]
    bare = getattr(_open, "bare", None)
    if bare is None or bare.connection is not connection or connection.queries_logged:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]
    executor = bare.insert
    for wrapper in reversed(connection.execute_wrappers):
        if wrapper != bare.wrapper:
            executor = functools.partial(wrapper, executor)
    return executor(sql, params, False, {"connection": connection, "cursor": bare.cursor()})


class _BareTransaction:
    """What bare_transaction keeps while it is open: whether BEGIN went out yet (PostgreSQL
    sends it with the first statement) and how to talk to the DB-API connection."""

    def __init__(self, connection: Any, begin: tuple[str, ...]) -> None:
        self.connection = connection
        self.raw = connection.connection
        self.begin = begin
        self.begun = False
        self.wrapper = self._begin_with_first  # one bound method, to tell it from others

    def cursor(self) -> Any:
        cursor = getattr(_open, "cursor", None)
        if cursor is None or cursor.connection is not self.raw:
            cursor = _open.cursor = self.raw.cursor()
        return cursor

    def insert(self, sql: str, params: Sequence[Any], many: bool, context: Any) -> int:
        with self.connection.wrap_database_errors:
            if self.connection.vendor == "sqlite":
                row = self.raw.execute(_qmark(sql), params).fetchone()
                return row[0]
            # Django's PostgreSQL cursors bind on the client: the same quoting, then libpq.
            query = self.cursor().mogrify(sql, params)
            if not self.begun:
                query = "; ".join((*self.begin, query))
                self.begun = True
            result = self._pg_exec(query)
            return int(result.get_value(0, 0))

    def _begin_with_first(
        self, execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if self.begun or many:
            if not self.begun:  # executemany() runs its statement once per row: BEGIN alone
                with self.connection.wrap_database_errors:
                    self.raw.execute("; ".join(self.begin))
                self.begun = True
            return execute(sql, params, many, context)
        self.begun = True
        result = execute("; ".join((*self.begin, sql)), params, many, context)
        for _ in self.begin:  # the first statement's results, not those of what went before it
            context["cursor"].nextset()
        return result

    def commit(self) -> None:
        with self.connection.wrap_database_errors:
            if self.connection.vendor == "sqlite":
                self.raw.execute("COMMIT")
            elif self._pg_exec("COMMIT").command_status != b"COMMIT":
                # PostgreSQL answers the COMMIT of a transaction in which a statement failed
                # with a ROLLBACK, not an error: nothing of it was written.
                raise DatabaseError("transaction rolled back: a statement in it had failed")

    def rollback(self) -> None:
        try:
            self.raw.execute("ROLLBACK")  # also after a failed COMMIT, which leaves it open
        except Exception:
            # A connection that cannot even roll back is gone (the server restarted): as
            # atomic() does, it is closed, and the next statement opens a new one.
            with contextlib.suppress(Exception):
                self.connection.close()

    def _pg_exec(self, query: str) -> Any:
        """One query string through libpq (which lets other threads run meanwhile); its last
        statement's result, or psycopg's exception for the first that failed."""
        encoding = self.raw.info.encoding
        result = self.raw.pgconn.exec_(query.encode(encoding))
        if result.status not in _PG_OK:
            raise psycopg_errors.error_from_result(result, encoding=encoding)
        return result


@functools.cache
def _qmark(sql: str) -> str:
    """A statement of Django's %s placeholders in sqlite3's: what Django's SQLite cursor does
    at every call (SQLiteCursorWrapper.convert_query), once per statement."""
    return FORMAT_QMARK_REGEX.sub("?", sql).replace("%%", "%")


_PG_OK = frozenset((pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK))


def writers_serialised(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the index admits one write transaction at a time (SQLite: index_writer)."""
    return connections[using].vendor == "sqlite"


# The instances being written outside the index's write lock by this process's threads, each
# with its lock and how many threads hold or wait for it.
_instance_locks: dict[str, tuple[threading.Lock, int]] = {}
_instance_locks_guard = threading.Lock()


@contextmanager
def instance_writer(sop_instance_uid: str, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """On SQLite, hold one instance's lock while it is written outside the index's write lock
    (an upload to a bucket before its short index transaction): no two writers, threads or
    processes sharing the index, store the same instance at once, and different instances
    never wait for each other (a long upload would otherwise hold up unrelated ones). Across
    processes the lock is a byte-range lock of one file beside the index, at an offset drawn
    from the UID's SHA-256 (56 bits: a collision is as unlikely as it is harmless, a wait).
    Other databases need none: the index transaction holds the instance's unique key while it
    uploads.

    Raises IndexFailure when the lock is not free within the database's busy timeout.
    """
    connection = connections[using]
    if connection.vendor != "sqlite":
        yield
        return
    settings = connection.settings_dict
    timeout = float(settings.get("OPTIONS", {}).get("timeout", 30))
    deadline = time.monotonic() + timeout
    offset = int.from_bytes(hashlib.sha256(sop_instance_uid.encode()).digest()[:7], "big")
    with _instance_locks_guard:
        thread_lock, users = _instance_locks.get(sop_instance_uid, (threading.Lock(), 0))
        _instance_locks[sop_instance_uid] = (thread_lock, users + 1)
    try:
        if not thread_lock.acquire(timeout=timeout):
            raise IndexFailure(f"instance busy: no lock within {timeout:.0f} s")
        try:
            # POSIX record locks (not flock): they belong to the process, so a descriptor
            # opened before a fork still excludes the other workers; the thread lock covers
            # this process.
            fd = _lock_file(settings["NAME"], "instances")
            pause = 0.0005
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise IndexFailure(f"instance lock not taken: {exc}") from exc
                    if time.monotonic() > deadline:
                        raise IndexFailure(
                            f"instance busy: another process held its lock for {timeout:.0f} s"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        finally:
            thread_lock.release()
    finally:
        with _instance_locks_guard:
            lock, users = _instance_locks[sop_instance_uid]
            if users == 1:
                del _instance_locks[sop_instance_uid]
            else:
                _instance_locks[sop_instance_uid] = (lock, users - 1)
