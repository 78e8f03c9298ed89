"""Pooled PostgreSQL connections: checked before use only after sitting idle, and replaced when dead."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from engine.db import Database


@pytest.fixture
def pg_url(_databases) -> str:
    """PostgreSQL only: SQLite has no server connection to lose."""
    return _databases("postgres")


def _terminate_other_backends(url: str) -> int:
    """What a database restart does to the pool: every connection to the database is closed."""
    admin = create_engine(url.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = :name AND pid <> pg_backend_pid()"),
                              {"name": url.rsplit("/", 1)[1]}).scalar()
    admin.dispose()
    return killed


def _pings(db: Database) -> list[str]:
    seen: list[str] = []
    original = db.write_engine.dialect.do_ping

    def counting(dbapi_conn):
        seen.append("ping")
        return original(dbapi_conn)

    db.write_engine.dialect.do_ping = counting
    return seen


def test_a_connection_in_steady_use_is_not_pinged(pg_url):
    db = Database(pg_url, ping_idle_after=60)
    pings = _pings(db)
    try:
        for _ in range(5):
            with db.read() as session:
                assert session.execute(text("SELECT 1")).scalar() == 1
        assert pings == []
    finally:
        db.dispose()


def test_an_idle_connection_closed_by_the_server_is_replaced_before_use(pg_url):
    db = Database(pg_url, ping_idle_after=0.05)
    pings = _pings(db)
    try:
        with db.read() as session:
            session.execute(text("SELECT 1"))
        assert _terminate_other_backends(pg_url) >= 1
        time.sleep(0.1)
        with db.read() as session:  # the dead connection is found by the ping and replaced
            assert session.execute(text("SELECT 1")).scalar() == 1
        assert pings, "the idle connection was not checked"
    finally:
        db.dispose()
