"""Fixtures: every database test runs on SQLite and on PostgreSQL, over real HTTP where users would.

PostgreSQL tests need the server on 127.0.0.1:5432 (CAMINS_TEST_PG_URL to change it). They skip
when it is down, except in CI (CI=true), where they fail instead.
"""
from __future__ import annotations

import contextlib
import os
import threading
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from api import create_app
from engine import clock
from engine.clock import ManualClock
from engine.db import Base, throwaway_postgres_database
from tests import flow_coverage
from workflows.demo import DEMO_PASSWORD, create_demo_users
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.service import Camins

PG_SERVER = os.environ.get("CAMINS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
# Users and their tokens are made once per database; everything else is emptied between tests.
KEEP_TABLES = {"app_user", "membership", "api_token", "alembic_version"}


def _pg_reachable() -> bool:
    try:
        engine = create_engine(PG_SERVER, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


def worker_tag() -> str:
    """`gw0`, `gw1`, ... under pytest-xdist, `main` otherwise: for names that workers must not share."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def _databases(tmp_path_factory):
    """The SQLite and the PostgreSQL test database of this process, each made once and dropped at the end.

    `database_url` is parametrized at session scope, so pytest finalizes it whenever the next test
    asks for the other database. That happens once in a serial run, but under pytest-xdist a worker
    can go back and forth many times (with --dist loadgroup it gets tests one by one), so the
    databases live here and `database_url` only picks one.
    """
    urls: dict[str, str] = {}
    databases = contextlib.ExitStack()
    unreachable: list[bool] = []

    def get(kind: str) -> str:
        if kind in urls:
            return urls[kind]
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'camins.db'}"
            _prepare(url)
        else:
            if unreachable or not _pg_reachable():
                unreachable.append(True)  # asked once: a dead server would cost 3 s a test
                if os.environ.get("CI") == "true":
                    pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} and CI=true")
                pytest.skip("PostgreSQL is not reachable")
            url = databases.enter_context(throwaway_postgres_database(PG_SERVER, f"test_{worker_tag()}"))
            _prepare(url)
        urls[kind] = url
        return url

    with databases:
        yield get


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request, _databases):
    clock.set_clock(ManualClock(START))
    return _databases(request.param)


def _prepare(url: str) -> None:
    camins = Camins(url)
    camins.upgrade_schema()
    create_demo_users(camins)
    camins.close()


def _empty_tables(url: str) -> None:
    engine = create_engine(url)
    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name not in KEEP_TABLES]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f'DELETE FROM "{table}"'))
            conn.execute(text("DELETE FROM sqlite_sequence")) if _has_sqlite_sequence(conn) else None
    engine.dispose()


def _has_sqlite_sequence(conn) -> bool:
    return conn.execute(text("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'")).first() is not None


def require_postgres() -> None:
    """Skip when the test server is down, or fail in CI (CI=true), where PostgreSQL tests must run."""
    if not _pg_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is not reachable at {PG_SERVER} and CI=true")
        pytest.skip("PostgreSQL is not reachable")


@pytest.fixture
def manual_clock():
    moment = ManualClock(START)
    clock.set_clock(moment)
    return moment


@pytest.fixture
def camins(database_url, manual_clock, request):
    _empty_tables(database_url)
    instance = Camins(database_url)
    instance.deploy_directory(BUNDLED_DIAGRAMS)
    yield instance
    flow_coverage.record(request.node.nodeid, instance)
    instance.close()


@pytest.fixture
def is_postgres(database_url) -> bool:
    return database_url.startswith("postgresql")


class Http:
    """A user of the API over real HTTP."""

    def __init__(self, base: str):
        self.base = base
        self.tokens: dict[str, str] = {}

    def login(self, username: str, password: str = DEMO_PASSWORD) -> str:
        if username not in self.tokens:
            response = requests.post(f"{self.base}/api/auth/token",
                                     json={"username": username, "password": password}, timeout=30)
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["access_token"]
        return self.tokens[username]

    def call(self, method: str, path: str, user: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {self.login(user)}"
        response = requests.request(method, f"{self.base}{path}", headers=headers, timeout=60, **kwargs)
        if user and response.status_code == 401:
            # Simulated time moved past the token's expiry: log in again, as a user would.
            self.tokens.pop(user, None)
            headers["Authorization"] = f"Bearer {self.login(user)}"
            response = requests.request(method, f"{self.base}{path}", headers=headers, timeout=60, **kwargs)
        return response

    def get(self, path, user=None, **kw):
        return self.call("GET", path, user, **kw)

    def post(self, path, user=None, **kw):
        return self.call("POST", path, user, **kw)


@pytest.fixture
def server(camins):
    app = create_app(camins, {"TESTING": True})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    # shutdown() waits for the loop's next poll: at the default 0.5 s that was half a second a test.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def http(server) -> Http:
    return Http(server)


def pytest_collection_finish(session):
    flow_coverage.set_order([item.nodeid for item in session.items])


def pytest_sessionfinish(session, exitstatus):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # A pytest-xdist worker: the controller merges every worker's flows and writes the report.
        workeroutput["flow_coverage"] = flow_coverage.export()
        return
    flow_coverage.write_report(session)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist controller: a worker finished; take the flows its tests crossed."""
    flow_coverage.merge(getattr(node, "workeroutput", {}).get("flow_coverage", []))


def pytest_terminal_summary(terminalreporter):
    summary = flow_coverage.summary()
    if summary:
        terminalreporter.write_line(summary)
