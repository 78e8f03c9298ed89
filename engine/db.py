"""The one SQLAlchemy setup of the project: declarative Base and sessions.

Write transactions and read transactions are separate session factories. On
SQLite a write transaction starts with BEGIN IMMEDIATE: a deferred transaction
that read first and then tries to write fails at once with "database is locked"
when another writer committed meanwhile, while an immediate one waits its turn
(busy_timeout) and then sees the newest data. PostgreSQL needs neither trick.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: SQLite's own busy_timeout orders the writers there
    fcntl = None
from collections.abc import Iterator
from datetime import UTC

from sqlalchemy import DateTime, MetaData, TypeDecorator, create_engine, event, exc, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _sqlite_engine(url: str, begin: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin)

    return engine


class WriterTurn:
    """SQLite writers one at a time, across threads and processes, each woken when the last one is done.

    SQLite lets one transaction write at a time. A writer that finds the database locked polls it,
    sleeping up to 100 ms between tries (busy_timeout), so under concurrent requests (two gunicorn
    workers with four threads each) most of the time went to sleeping after the lock was free. Here the
    writers queue on an advisory lock of the operating system (flock on a file beside the database),
    which wakes the next one as soon as the lock is released. Writers that do not take this turn
    (migrations, another program) still meet SQLite's own lock and its busy_timeout.
    """

    def __init__(self, path: Path):
        self.path = path
        # flock is held per open file, so the threads of a process queue here first. Reentrant: a write
        # opened inside another one on the same thread behaves as it did without this turn.
        self._threads = threading.RLock()
        self._depth = 0
        self._file = None
        self._pid = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._threads:
            self._depth += 1
            try:
                if self._depth > 1:
                    yield
                    return
                handle = self._handle()
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            finally:
                self._depth -= 1

    def _handle(self):
        # Opened in the process that uses it: a file inherited through fork() would share its lock.
        if self._pid != os.getpid():
            self._file = open(self.path, "a+b")  # noqa: SIM115 - held for the life of the process
            self._pid = os.getpid()
        return self._file


# A pooled PostgreSQL connection unused for longer than this is checked before it is handed out.
PING_IDLE_AFTER = 10.0


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use only when it sat idle for `idle_seconds`.

    SQLAlchemy's pool_pre_ping checks on every checkout: one round trip more for every transaction,
    about one in ten of a task completion's. A connection in steady use is known to be alive; one that
    sat idle may have been closed by a database restart or a firewall. A connection that died in
    between fails its transaction once, and SQLAlchemy then discards every connection of the pool
    opened before that failure.
    """
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn, record):
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check_if_idle(dbapi_conn, record, _proxy):
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            # The pool replaces the connection and tries again.
            raise exc.DisconnectionError("a pooled connection was closed while it was idle") from err


class Database:
    """Engines and session factories for one database URL."""

    def __init__(self, url: str, ping_idle_after: float = PING_IDLE_AFTER):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._writer_turn = contextlib.nullcontext
        if self.is_sqlite:
            self.write_engine = _sqlite_engine(url, "BEGIN IMMEDIATE")
            self.read_engine = _sqlite_engine(url, "BEGIN")
            database = make_url(url).database
            if database and database != ":memory:" and fcntl is not None:
                self._writer_turn = WriterTurn(Path(f"{database}-writer.lock"))
        else:
            self.write_engine = create_engine(url, pool_size=10, max_overflow=20, hide_parameters=True)
            _ping_when_idle(self.write_engine, ping_idle_after)
            self.read_engine = self.write_engine
        self._writer = sessionmaker(self.write_engine, expire_on_commit=False)
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)
        # One SELECT needs no transaction around it: on PostgreSQL, BEGIN and COMMIT would be two round
        # trips more than the query itself (authentication does this on every request).
        self._single_reader = self._reader if self.is_sqlite else sessionmaker(
            self.read_engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction that commits on success and rolls back on any error."""
        with self._writer_turn(), self._writer() as session:
            with session.begin():
                yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session:
            with session.begin():
                yield session

    @contextlib.contextmanager
    def read_one(self) -> Iterator[Session]:
        """A session for a single read statement, which is consistent on its own (autocommit where the
        database allows it). Several statements that must agree with each other need `read()`."""
        with self._single_reader() as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()


@contextlib.contextmanager
def throwaway_postgres_database(server_url: str, label: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of `server_url`, dropped afterwards (tests, bench).

    Yields its URL; `server_url` names any database the user may connect to (to create the new one).
    """
    name = f"camins_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
