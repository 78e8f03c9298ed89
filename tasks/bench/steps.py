"""Task completions per second: SpiffWorkflow's bare loop, the engine's step, and the HTTP API.

All three do the same completions: the first four tasks of the assessment pathway (`investigacio`)
of a batch of cases, one layer of tasks at a time (every case's home visit, then every case's social
report, ...). The three take turns, layer by layer, so that a change in the machine's load during the
run weighs on each of them. Task ids and submissions are gathered before each layer is timed.

- raw: the loop SpiffWorkflow alone needs, with the spec parsed once: deserialize the state,
  complete one task, run the engine steps, serialize, one UPDATE of one row, commit. It uses the
  engine's serializer (state without the spec) and its sandboxed script engine, since the diagrams'
  conditions and decision tables need the sandbox's helpers; the rows live in a scratch table.
- engine: `Engine.complete_task`, which also projects tasks, timers and messages and writes history.
- http: `POST /api/tasks/<id>/complete` on `camins serve` (gunicorn, 2 workers) from 4 clients:
  authentication, authorization, form validation and the access log on top.
"""
from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import Column, Integer, MetaData, Table, Text, insert, select, update

from engine.models import Instance
from workflows.demo import DEMO_PASSWORD, TASK_DATA

from . import BenchRun
from .driver import ASSESSMENT_LAYERS, cases_in_assessment, cleaned_submission, open_tasks, worker_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def measure(run: BenchRun) -> dict:
    completions = run.sizes["completions"]
    cases = max(1, completions // len(ASSESSMENT_LAYERS))
    with run.fresh_database("steps") as url:
        camins = run.camins(url)
        server = None
        try:
            run.say(f"  preparing {2 * cases} cases (engine and HTTP each get their own)")
            engine_cases = cases_in_assessment(camins, cases, run.say)
            http_cases = cases_in_assessment(camins, cases, run.say)
            server = _serve(url, run.workdir)
            raw, engine, http = RawLoop(camins, engine_cases), EngineLoop(camins, engine_cases), \
                HttpLoop(camins, server, http_cases, run.sizes["http_clients"])
            # Layer by layer, the three loops one after the other: a machine that gets busier or
            # quieter during the run weighs on all three alike, and the ratios stay comparable.
            for element in ASSESSMENT_LAYERS:
                for loop in (raw, engine, http):
                    loop.layer(element)
                run.say(f"  {element}: raw {raw.rate():.0f}, engine {engine.rate():.0f}, "
                        f"http {http.rate():.0f} completions/s so far")
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
            camins.close()
    return {"raw_step_per_s": round(raw.rate(), 1), "engine_step_per_s": round(engine.rate(), 1),
            "http_completions_per_s": round(http.rate(), 1),
            "steps": {"completions": cases * len(ASSESSMENT_LAYERS), "cases": cases,
                      "http_clients": run.sizes["http_clients"], "http_server_workers": 2,
                      "interleaved": "raw, engine and HTTP take turns, one layer of tasks each"}}


class _Loop:
    """Completions of one kind, timed layer by layer."""

    def __init__(self):
        self.elapsed, self.done = 0.0, 0

    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    def _timed(self, work, count: int) -> None:
        started = time.perf_counter()
        work()
        self.elapsed += time.perf_counter() - started
        self.done += count


# ------------------------------------------------------------------------------------------ raw
class RawLoop(_Loop):
    """SpiffWorkflow's own loop, on copies of the cases' states kept in a scratch table."""

    def __init__(self, camins, references: list[str]):
        super().__init__()
        engine = self.engine = camins.engine
        self.scratch = Table("bench_raw_state", MetaData(), Column("id", Integer, primary_key=True),
                             Column("state", Text), Column("version", Integer))
        self.scratch.create(camins.db.write_engine, checkfirst=True)
        first = open_tasks(camins, references, ASSESSMENT_LAYERS[0])
        with camins.db.read() as session:
            rows = {i.id: i for i in session.scalars(select(Instance).where(
                Instance.id.in_([t.instance_id for t in first])))}
            self.cached = engine.cached_spec(rows[first[0].instance_id].definition)  # parsed once
        self.states = {t.instance_id: rows[t.instance_id].state for t in first}
        with camins.db.write_engine.begin() as conn:
            conn.execute(insert(self.scratch), [{"id": i, "state": s, "version": 1} for i, s in self.states.items()])
        self.write_engine = camins.db.write_engine

    def layer(self, element: str) -> None:
        data = cleaned_submission(self.cached, element)
        with self.write_engine.connect() as conn:
            self._timed(lambda: self._complete_all(conn, element, data), len(self.states))

    def _complete_all(self, conn, element: str, data: dict) -> None:
        engine, cached, scratch = self.engine, self.cached, self.scratch
        for instance_id in self.states:
            workflow = engine.serializer.loads(self.states[instance_id], cached.spec, cached.subprocess_specs,
                                               engine.script_engine)
            task = next(t for t in workflow.get_tasks(state=TaskState.READY) if t.task_spec.bpmn_id == element)
            task.data.update(dict(data))
            task.run()
            workflow.do_engine_steps()
            state = self.states[instance_id] = engine.serializer.dumps(workflow)
            conn.execute(update(scratch).where(scratch.c.id == instance_id)
                         .values(state=state, version=scratch.c.version + 1))
            conn.commit()


def raw_loop(camins, references: list[str]) -> float:
    """Completions per second of SpiffWorkflow's own loop over all the layers (profiling scripts)."""
    loop = RawLoop(camins, references)
    for element in ASSESSMENT_LAYERS:
        loop.layer(element)
    return loop.rate()


# --------------------------------------------------------------------------------------- engine
class EngineLoop(_Loop):
    """`Engine.complete_task`, as the service calls it."""

    def __init__(self, camins, references: list[str]):
        super().__init__()
        self.camins, self.references = camins, references

    def layer(self, element: str) -> None:
        tasks = open_tasks(self.camins, self.references, element)
        data = cleaned_submission(_cached_spec_of(self.camins, tasks[0]), element)
        work = [(t.id, worker_for(t), dict(data)) for t in tasks]

        def complete_all():
            for task_id, actor, submission in work:
                self.camins.engine.complete_task(task_id, submission, actor, claim=True)

        self._timed(complete_all, len(work))


def engine_loop(camins, references: list[str]) -> float:
    loop = EngineLoop(camins, references)
    for element in ASSESSMENT_LAYERS:
        loop.layer(element)
    return loop.rate()


def _cached_spec_of(camins, task):
    with camins.db.read() as session:
        return camins.engine.cached_spec(session.get(Instance, task.instance_id).definition)


# ----------------------------------------------------------------------------------------- http
class HttpLoop(_Loop):
    """`POST /api/tasks/<id>/complete` on the running server, from concurrent clients."""

    def __init__(self, camins, server, references: list[str], clients: int):
        super().__init__()
        self.camins, self.server, self.references, self.clients = camins, server, references, clients
        self.tokens: dict[str, str] = {}

    def layer(self, element: str) -> None:
        work = []
        for task in open_tasks(self.camins, self.references, element):
            user = worker_for(task)
            if user not in self.tokens:
                self.tokens[user] = _login(self.server, user)
            work.append((task.id, self.tokens[user], TASK_DATA[element]))
        self._timed(lambda: _complete_concurrently(self.server, work, self.clients), len(work))


def _complete_concurrently(base_url_holder, work: list[tuple[str, str, dict]], clients: int) -> None:
    base = base_url_holder.base_url
    pending: queue.Queue = queue.Queue()
    for item in work:
        pending.put(item)
    failures: list[str] = []

    def client():
        session = requests.Session()
        while True:
            try:
                task_id, token, data = pending.get_nowait()
            except queue.Empty:
                return
            response = session.post(f"{base}/api/tasks/{task_id}/complete", json={"data": data},
                                    headers={"Authorization": f"Bearer {token}"}, timeout=60)
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:300]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} completions failed over HTTP, the first: {failures[0]}")


def _login(server, user: str) -> str:
    response = requests.post(f"{server.base_url}/api/auth/token", json={"username": user, "password": DEMO_PASSWORD},
                             timeout=60)
    response.raise_for_status()
    return response.json()["access_token"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(url: str, workdir: Path) -> subprocess.Popen:
    """`camins serve` with 2 gunicorn workers on a free port, once it answers."""
    port = _free_port()
    log = open(workdir / f"serve-{port}.log", "wb")  # noqa: SIM115 - the server writes it until it stops
    env = {**os.environ, "CAMINS_DATABASE_URL": url}
    env.pop("CAMINS_CLOCK_FILE", None)
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "2"],
                              cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server.base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited; see {workdir}/serve-{port}.log")
        try:
            if requests.get(server.base_url + "/healthz", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.terminate()
    raise RuntimeError("the server did not answer within 60 s")
