"""One API server per test module for deploy tests: an analyst sends bundles over real HTTP.

Deploy tests need neither the bundled pathways nor a fresh server per test, so a module shares
one server (on SQLite and on PostgreSQL, like every database test) and each test checks what it
deployed by process key.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from sqlalchemy import select
from werkzeug.serving import make_server

from api import create_app
from engine import clock
from engine.clock import ManualClock
from engine.models import Definition
from workflows.service import Camins

from .conftest import START, Http, _empty_tables

ANALYST = "analista"
# Generous: these are attacks on a parser, and a parser that hangs fails here, not in CI's timeout.
MAX_SECONDS = 10.0


@dataclass
class Sent:
    response: requests.Response
    seconds: float

    @property
    def status(self) -> int:
        return self.response.status_code

    def problems(self) -> list[dict]:
        return self.response.json().get("problems", [])


@dataclass
class DeployClient:
    http: Http
    camins: Camins

    def send(self, files: list[tuple[str, bytes | str]], path: str = "/api/definitions") -> Sent:
        parts = [("files", (name, content.encode() if isinstance(content, str) else content, "application/xml"))
                 for name, content in files]
        started = time.monotonic()
        response = self.http.post(path, ANALYST, files=parts)
        return Sent(response, time.monotonic() - started)

    def both(self, files) -> list[Sent]:
        """The same bundle to /validate and to deploy."""
        return [self.send(files, "/api/definitions/validate"), self.send(files, "/api/definitions")]

    def deployed(self) -> set[tuple[str, int]]:
        """(process key, version) of every definition, as stored and as the API lists them."""
        with self.camins.db.read() as session:
            stored = {tuple(row) for row in session.execute(select(Definition.process_key, Definition.version))}
        listed = self.http.get("/api/definitions?per_page=100", ANALYST)
        assert listed.status_code == 200, listed.text
        assert {(d["process_key"], d["version"]) for d in listed.json()["items"]} == stored
        return stored

    def still_serving(self) -> None:
        assert self.http.get("/healthz").json() == {"status": "ok"}
        assert self.http.get("/api/definitions", ANALYST).status_code == 200


def assert_problem_json(sent: Sent, status: int = 422) -> dict:
    """A clear client error: the status, problem+json, no stack trace, in bounded time."""
    assert sent.seconds < MAX_SECONDS, f"took {sent.seconds:.1f} s"
    assert sent.status == status, sent.response.text[:2000]
    assert sent.response.headers["Content-Type"].startswith("application/problem+json")
    body = sent.response.json()
    assert body["status"] == status and body["title"]
    assert "Traceback" not in sent.response.text and 'File "' not in sent.response.text
    return body


@contextmanager
def deploy_client(database_url: str):
    clock.set_clock(ManualClock(START))
    _empty_tables(database_url)
    camins = Camins(database_url)
    app = create_app(camins, {"TESTING": True})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield DeployClient(Http(f"http://127.0.0.1:{httpd.server_port}"), camins)
    finally:
        httpd.shutdown()
        thread.join(timeout=10)
        camins.close()
