"""Task completions per second: SpiffWorkflow's bare loop, the engine's step, and the HTTP API.

All three do the same completions: the first four tasks of the assessment pathway (`investigacio`)
of a batch of cases, one layer of tasks at a time (every case's home visit, then every case's social
report, ...). Task ids and submissions are gathered before each layer is timed.

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
        try:
            run.say(f"  preparing {2 * cases} cases (engine and HTTP each get their own)")
            engine_cases = cases_in_assessment(camins, cases, run.say)
            http_cases = cases_in_assessment(camins, cases, run.say)
            raw = raw_loop(camins, engine_cases)
            run.say(f"  raw: {raw:.0f} completions/s")
            engine = engine_loop(camins, engine_cases)
            run.say(f"  engine: {engine:.0f} completions/s")
        finally:
            camins.close()
        http = http_loop(run, url, http_cases)
        run.say(f"  http: {http:.0f} completions/s")
    return {"raw_step_per_s": round(raw, 1), "engine_step_per_s": round(engine, 1),
            "http_completions_per_s": round(http, 1),
            "steps": {"completions": cases * len(ASSESSMENT_LAYERS), "cases": cases,
                      "http_clients": run.sizes["http_clients"], "http_server_workers": 2}}


# ------------------------------------------------------------------------------------------ raw
def raw_loop(camins, references: list[str]) -> float:
    """Completions per second of SpiffWorkflow's own loop, on copies of the cases' states."""
    engine = camins.engine
    scratch = Table("bench_raw_state", MetaData(), Column("id", Integer, primary_key=True),
                    Column("state", Text), Column("version", Integer))
    scratch.create(camins.db.write_engine, checkfirst=True)
    first = open_tasks(camins, references, ASSESSMENT_LAYERS[0])
    with camins.db.read() as session:
        rows = {i.id: i for i in session.scalars(select(Instance).where(
            Instance.id.in_([t.instance_id for t in first])))}
        cached = engine.cached_spec(rows[first[0].instance_id].definition)  # parsed once
    states = {t.instance_id: rows[t.instance_id].state for t in first}
    with camins.db.write_engine.begin() as conn:
        conn.execute(insert(scratch), [{"id": i, "state": s, "version": 1} for i, s in states.items()])
    submissions = {element: cleaned_submission(cached, element) for element in ASSESSMENT_LAYERS}
    elapsed, done = 0.0, 0
    with camins.db.write_engine.connect() as conn:
        for element in ASSESSMENT_LAYERS:
            data = submissions[element]
            started = time.perf_counter()
            for instance_id in states:
                workflow = engine.serializer.loads(states[instance_id], cached.spec, cached.subprocess_specs,
                                                   engine.script_engine)
                task = next(t for t in workflow.get_tasks(state=TaskState.READY)
                            if t.task_spec.bpmn_id == element)
                task.data.update(dict(data))
                task.run()
                workflow.do_engine_steps()
                state = states[instance_id] = engine.serializer.dumps(workflow)
                conn.execute(update(scratch).where(scratch.c.id == instance_id)
                             .values(state=state, version=scratch.c.version + 1))
                conn.commit()
                done += 1
            elapsed += time.perf_counter() - started
    return done / elapsed


# --------------------------------------------------------------------------------------- engine
def engine_loop(camins, references: list[str]) -> float:
    elapsed, done = 0.0, 0
    for element in ASSESSMENT_LAYERS:
        tasks = open_tasks(camins, references, element)
        data = cleaned_submission(_cached_spec_of(camins, tasks[0]), element)
        work = [(t.id, worker_for(t), dict(data)) for t in tasks]
        started = time.perf_counter()
        for task_id, actor, data in work:
            camins.engine.complete_task(task_id, data, actor, claim=True)
        elapsed += time.perf_counter() - started
        done += len(work)
    return done / elapsed


def _cached_spec_of(camins, task):
    with camins.db.read() as session:
        return camins.engine.cached_spec(session.get(Instance, task.instance_id).definition)


# ----------------------------------------------------------------------------------------- http
def http_loop(run: BenchRun, url: str, references: list[str]) -> float:
    from workflows.service import Camins
    camins = Camins(url)
    server = _serve(url, run.workdir)
    try:
        tokens: dict[str, str] = {}
        elapsed, done = 0.0, 0
        for element in ASSESSMENT_LAYERS:
            work = []
            for task in open_tasks(camins, references, element):
                user = worker_for(task)
                if user not in tokens:
                    tokens[user] = _login(server, user)
                work.append((task.id, tokens[user], TASK_DATA[element]))
            started = time.perf_counter()
            _complete_concurrently(server, work, run.sizes["http_clients"])
            elapsed += time.perf_counter() - started
            done += len(work)
        return done / elapsed
    finally:
        server.terminate()
        server.wait(timeout=30)
        camins.close()


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
