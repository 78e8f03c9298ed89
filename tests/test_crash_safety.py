"""Crash safety: `camins serve` killed with SIGKILL at random moments while people complete tasks.

A real gunicorn server (two worker processes) on PostgreSQL receives a stream of task completions
over HTTP from several people at once, each working through the loops of their own cases. A killer
SIGKILLs the whole server process group at random moments (seeded, printed) and starts a new server;
the clients follow it. A completion answered 2xx is *acknowledged*; one that got no answer (the
connection died) is *unacknowledged*: it may or may not have been committed, and the client sends
the same submission again until it gets a definite answer, as a person retrying would. After the
last restart every unacknowledged submission is sent once more.

What this proves, read back from the database:

- every acknowledged completion is there: the task is completed, by the person who sent it, and
  the workflow state holds exactly the data they submitted;
- an unacknowledged completion that did commit is answered "already completed" (409 problem+json)
  when retried, never a 5xx, and was committed once with the data sent;
- nothing is duplicated: one `task_ready` and at most one `task_completed` history row per task,
  one `instance_started` per instance, one `instance_completed` per finished instance;
- no instance is half-written: the open `human_task` rows of each instance are exactly the READY
  user tasks of its deserialized SpiffWorkflow state, its completed rows exactly the COMPLETED user
  tasks, `active_elements` and `status` agree with the state, the loop counter in the state equals
  the completions recorded, and `version` is 2 (created, advanced) plus one per completion: no step
  was applied twice or half-applied;
- the crashes opened no incident and left no message pending in the outbox.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from uuid import UUID

import pytest
import requests
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select
from urllib3.exceptions import NewConnectionError

from engine import clock
from engine.bundle import BundleFile
from engine.clock import SystemClock
from engine.db import throwaway_postgres_database
from engine.models import HistoryEvent, HumanTask, Incident, Instance, Outbox
from workflows.demo import DEMO_PASSWORD, DEMO_USERS, notify, principal
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.service import Camins

from .conftest import PG_SERVER, require_postgres
from .processes import start_server

# Starts servers or workers as subprocesses: under pytest-xdist, on one worker with the others that do.
pytestmark = pytest.mark.xdist_group("processes")

PROCESS = "bucle_crash"
# One person per town, each streaming the completions of their own cases.
TOWNS = {"Manacor": "manacor", "Son Servera": "sonservera", "Inca": "inca", "Palma": "palma"}
# Per person: one short loop that ends during the run, two that go on until the stream stops.
LOOPS = (4, 10_000, 10_000)
PROBLEM = "application/problem+json"

LOOP = f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs_crash" targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="{PROCESS}" /></bpmn:collaboration>
  <bpmn:process id="{PROCESS}" name="Bucle de seguiment" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_ts" name="Treballador/a social"><bpmn:flowNodeRef>inici</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>unio</bpmn:flowNodeRef><bpmn:flowNodeRef>pas</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>comptar</bpmn:flowNodeRef><bpmn:flowNodeRef>prou</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:exclusiveGateway id="unio" name="Unió"><bpmn:incoming>f1</bpmn:incoming>
      <bpmn:incoming>f_torna</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:userTask id="pas" name="Seguiment">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/pas.form" /></spiffworkflow:properties>
      </bpmn:extensionElements><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing></bpmn:userTask>
    <bpmn:scriptTask id="comptar" name="Comptar"><bpmn:incoming>f3</bpmn:incoming><bpmn:outgoing>f4</bpmn:outgoing>
      <bpmn:script>comptador = comptador + 1</bpmn:script></bpmn:scriptTask>
    <bpmn:exclusiveGateway id="prou" name="Prou?" default="f_fi"><bpmn:incoming>f4</bpmn:incoming>
      <bpmn:outgoing>f_torna</bpmn:outgoing><bpmn:outgoing>f_fi</bpmn:outgoing></bpmn:exclusiveGateway>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f_fi</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="unio" />
    <bpmn:sequenceFlow id="f2" sourceRef="unio" targetRef="pas" />
    <bpmn:sequenceFlow id="f3" sourceRef="pas" targetRef="comptar" />
    <bpmn:sequenceFlow id="f4" sourceRef="comptar" targetRef="prou" />
    <bpmn:sequenceFlow id="f_torna" sourceRef="prou" targetRef="unio">
      <bpmn:conditionExpression>comptador &lt; voltes</bpmn:conditionExpression></bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="f_fi" sourceRef="prou" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""
FORM = json.dumps({"type": "default", "id": "Form_pas", "schemaVersion": 16, "components": [
    {"type": "textfield", "key": "valor", "label": "Observació", "id": "Field_valor", "validate": {"required": True}}
]}).encode()


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away PostgreSQL database with the schema and the few demo users this module needs."""
    require_postgres()
    # The server subprocess runs on the system clock: so does everything prepared here.
    previous = clock.get_clock()
    clock.set_clock(SystemClock())
    try:
        with throwaway_postgres_database(PG_SERVER, "crash") as url:
            camins = Camins(url)
            camins.upgrade_schema()
            wanted = {"notificant.escola", *(f"{p}.{t}" for t in TOWNS.values() for p in ("ts", "coord"))}
            for username, role, unit in DEMO_USERS:
                if username in wanted:
                    camins.create_user(username, DEMO_PASSWORD, [(role, unit)], full_name=username)
            camins.close()
            yield url
    finally:
        clock.set_clock(previous)


@dataclass
class Person:
    """A social worker of one town and the loop instances of their cases."""

    username: str
    token: str
    instances: list[tuple[int, str]]  # (instance id, case reference)


def _prepare_cases(url: str) -> tuple[list[Person], dict[int, int]]:
    """Cases, each with one loop instance waiting at its first task; the people who work them."""
    camins = Camins(url)
    try:
        camins.deploy_directory(BUNDLED_DIAGRAMS)  # the detection pathway opens each case
        camins.deploy_bundle(None, [BundleFile("bucle.bpmn", LOOP.encode()), BundleFile("forms/pas.form", FORM)])
        people, loops = [], {}
        for town, tag in TOWNS.items():
            coordinator = principal(camins, f"coord.{tag}")
            instances = []
            for voltes in LOOPS:
                reference = notify(camins, town, "Aina", "Ferrer Pons", date(2015, 4, 1))
                started = camins.start_instance(coordinator, PROCESS, reference, {"voltes": voltes, "comptador": 0})
                assert started["incident_id"] is None and started["active_elements"] == ["pas"], started
                instances.append((started["id"], reference))
                loops[started["id"]] = voltes
            token, _expires = camins.login(f"ts.{tag}", DEMO_PASSWORD)
            people.append(Person(f"ts.{tag}", token, instances))
        return people, loops
    finally:
        camins.close()


class Servers:
    """The server of the moment: the killer replaces it, the clients follow it."""

    def __init__(self, url: str, log_dir):
        self.url, self.log_dir = url, log_dir
        self.changed = threading.Condition()
        self.kills = 0
        self.server = start_server(url, log_dir, workers=2)
        self.all = [self.server]

    def base(self, timeout: float = 120.0) -> str:
        """The address of the running server, waiting while it restarts."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.server is not None, timeout=timeout):
                raise TimeoutError("no server came back")
            return self.server.base

    def wait_other_than(self, base: str, timeout: float = 3.0) -> None:
        """After a failed request: wait (a while) for a new server."""
        with self.changed:
            self.changed.wait_for(lambda: self.server is not None and self.server.base != base, timeout=timeout)

    def kill_and_restart(self) -> None:
        with self.changed:
            victim, self.server = self.server, None
            self.kills += 1
        victim.kill()
        fresh = start_server(self.url, self.log_dir, workers=2)
        with self.changed:
            self.server = fresh
            self.all.append(fresh)
            self.changed.notify_all()

    def stop(self) -> None:
        for server in self.all:
            server.stop()

    def log_tails(self) -> str:
        return "\n".join(f"--- {s.base}\n{s.log_tail(2000)}" for s in self.all)


@dataclass
class Outcomes:
    """What the clients were told, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, dict] = field(default_factory=dict)  # task id -> the one submission made for it
    by: dict[str, str] = field(default_factory=dict)  # task id -> who submitted it
    acknowledged: dict[str, dict] = field(default_factory=dict)
    unacknowledged: list[tuple[str, str]] = field(default_factory=list)  # (task id, what went wrong)
    committed_unacknowledged: set[str] = field(default_factory=set)  # retried: "already completed"
    server_errors: list[tuple[str, int, bool]] = field(default_factory=list)  # (what, status, during a kill)
    unexpected: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _refused(err: requests.RequestException) -> bool:
    """The request never reached a server (as opposed to one that died before answering)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(reason, NewConnectionError)


def _already_completed(response: requests.Response) -> bool:
    return (response.status_code == 409 and response.headers.get("Content-Type", "").startswith(PROBLEM)
            and "already completed" in response.json().get("detail", ""))


def _open_task(servers: Servers, person: Person, reference: str, outcomes: Outcomes) -> dict | None:
    """The open loop task of a case (None when the loop has ended), asked until a server answers."""
    while True:
        base = servers.base()
        kills = servers.kills
        try:
            response = requests.get(f"{base}/api/tasks", params={"case": reference, "pathway": PROCESS},
                                    headers={"Authorization": f"Bearer {person.token}"}, timeout=60)
        except requests.RequestException:
            servers.wait_other_than(base)
            continue
        if response.status_code >= 500:
            with outcomes.lock:
                outcomes.server_errors.append((f"inbox of {reference}", response.status_code, servers.kills != kills))
            servers.wait_other_than(base)
            continue
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert len(items) <= 1, items
        return items[0] if items else None


def _complete(servers: Servers, person: Person, task_id: str, data: dict, outcomes: Outcomes) -> bool:
    """Send one submission until the answer is definite: 2xx, or "already completed" after a lost answer.

    False for any other answer (reported by the test)."""
    in_doubt = False
    while True:
        base = servers.base()
        kills = servers.kills
        try:
            response = requests.post(f"{base}/api/tasks/{task_id}/complete", json={"data": data},
                                     headers={"Authorization": f"Bearer {person.token}"}, timeout=60)
        except requests.RequestException as err:
            with outcomes.lock:
                outcomes.unacknowledged.append((task_id, "refused" if _refused(err) else "lost in flight"))
            in_doubt = True
            servers.wait_other_than(base)
            continue
        if response.status_code >= 500:
            with outcomes.lock:
                outcomes.unacknowledged.append((task_id, f"HTTP {response.status_code}"))
                outcomes.server_errors.append((task_id, response.status_code, servers.kills != kills))
            in_doubt = True
            servers.wait_other_than(base)
            continue
        with outcomes.lock:
            if 200 <= response.status_code < 300:
                outcomes.acknowledged[task_id] = data
            elif in_doubt and _already_completed(response):
                outcomes.committed_unacknowledged.add(task_id)
            else:
                outcomes.unexpected.append(f"{task_id}: HTTP {response.status_code} {response.text[:300]}")
                return False
        return True


def _work(servers: Servers, person: Person, outcomes: Outcomes, stop: threading.Event, errors: list) -> None:
    """Complete the open task of each case in turn, until told to stop or every loop has ended."""
    try:
        running = list(person.instances)
        while running and not stop.is_set():
            for instance_id, reference in list(running):
                if stop.is_set():
                    break
                task = _open_task(servers, person, reference, outcomes)
                if task is None:
                    running.remove((instance_id, reference))
                    continue
                assert task["instance_id"] == instance_id, task
                data = {"valor": f"{instance_id}/{task['id']}"}
                with outcomes.lock:
                    assert task["id"] not in outcomes.sent, f"task {task['id']} is open again after a completion"
                    outcomes.sent[task["id"]], outcomes.by[task["id"]] = data, person.username
                if not _complete(servers, person, task["id"], data, outcomes):
                    running.remove((instance_id, reference))
    except BaseException as err:  # reported by the test
        errors.append(err)


def _killer(servers: Servers, outcomes: Outcomes, rng: random.Random, kills: int, errors: list) -> None:
    """Kill the server at random moments, each while completions are flowing, and start a new one."""
    try:
        for _ in range(kills):
            _wait_for_progress(outcomes, 2)
            time.sleep(rng.uniform(0.3, 1.5))
            servers.kill_and_restart()
        _wait_for_progress(outcomes, 5)  # the last server works too
    except BaseException as err:
        errors.append(err)


def _wait_for_progress(outcomes: Outcomes, completions: int, timeout: float = 90.0) -> None:
    target = outcomes.count() + completions
    deadline = time.monotonic() + timeout
    while outcomes.count() < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {completions} completions acknowledged in {timeout} s")
        time.sleep(0.02)


def _workflow(camins: Camins, instance: Instance):
    cached = camins.engine.specs.get(instance.definition)
    return camins.engine.serializer.loads(instance.state, cached.spec, cached.subprocess_specs,
                                          camins.engine.script_engine)


def _check_database(url: str, outcomes: Outcomes, loops: dict[int, int]) -> None:
    camins = Camins(url)
    try:
        with camins.db.read() as session:
            instances = session.scalars(select(Instance).order_by(Instance.id)).all()
            tasks = session.scalars(select(HumanTask)).all()
            history = session.scalars(select(HistoryEvent).order_by(HistoryEvent.id)).all()
            incidents = session.scalars(select(Incident)).all()
            pending = session.scalars(select(Outbox).where(Outbox.status == "pending")).all()
            workflows = {i.id: _workflow(camins, i) for i in instances}
    finally:
        camins.close()
    assert not incidents, [(i.instance_id, i.element_id, i.message) for i in incidents]
    assert not pending, [(o.id, o.name) for o in pending]
    assert set(loops) <= {i.id for i in instances}

    # Nothing twice: one row per task and event, one start and at most one end per instance.
    per_task = Counter((h.instance_id, h.event, h.detail.get("task_id")) for h in history
                       if h.detail.get("task_id"))
    assert [k for k, n in per_task.items() if n > 1] == []
    per_instance = Counter((h.instance_id, h.event) for h in history
                           if h.event in ("instance_started", "instance_completed"))
    assert [k for k, n in per_instance.items() if n > 1] == []

    rows_of: dict[int, list[HumanTask]] = {}
    for row in tasks:
        rows_of.setdefault(row.instance_id, []).append(row)
    events_of: dict[int, Counter] = {}
    for h in history:
        events_of.setdefault(h.instance_id, Counter())[h.event] += 1
    completed_tasks: dict[str, HumanTask] = {}
    for instance in instances:
        workflow, rows, events = workflows[instance.id], rows_of.get(instance.id, []), events_of[instance.id]
        what = f"instance {instance.id} ({instance.process_key})"
        # The projections are those of the stored state, nothing more and nothing less.
        ready = {str(t.id) for t in workflow.get_tasks(state=TaskState.READY, manual=True)}
        done = {str(t.id) for t in workflow.get_tasks(state=TaskState.COMPLETED, manual=True)}
        assert {r.id for r in rows if r.state == "open"} == ready, what
        assert {r.id for r in rows if r.state == "completed"} == done, what
        assert {r.state for r in rows} <= {"open", "completed"}, what
        active = sorted({t.task_spec.bpmn_id for t in workflow.get_tasks(
            state=TaskState.READY | TaskState.WAITING | TaskState.STARTED) if getattr(t.task_spec, "bpmn_id", None)})
        assert instance.active_elements == active, what
        assert set(instance.completed_elements) == {t.task_spec.bpmn_id for t in workflow.get_tasks(
            state=TaskState.COMPLETED) if getattr(t.task_spec, "bpmn_id", None)}, what
        assert instance.status == ("completed" if workflow.is_completed() else "running"), what
        # History agrees: each task became ready once and was completed at most once.
        assert events["task_ready"] == len(rows), what
        assert events["task_completed"] == len(done), what
        assert events["instance_started"] == 1, what
        assert events["instance_completed"] == (1 if instance.status == "completed" else 0), what
        # One committed step each: created, advanced to its first wait, then one per completion.
        assert instance.version == 2 + len(done), (what, instance.version, len(done))
        if instance.id in loops:
            counters = [t.data["comptador"] for t in workflow.get_tasks(state=TaskState.READY, manual=True)]
            if instance.status == "completed":
                assert len(done) == loops[instance.id], what
                counters = [t.data["comptador"] for t in workflow.get_tasks(state=TaskState.COMPLETED)
                            if getattr(t.task_spec, "bpmn_id", None) == "fi"]
            assert counters == [len(done)], (what, counters)
            for row in rows:
                if row.state == "completed":
                    completed_tasks[row.id] = row
                    stored = workflow.get_task_from_id(UUID(row.id)).data.get("valor")
                    assert stored == outcomes.sent.get(row.id, {}).get("valor"), (what, row.id, stored)

    # Every acknowledged completion is there, by its sender, and every completion was one of ours.
    acknowledged = set(outcomes.acknowledged)
    assert acknowledged.isdisjoint(outcomes.committed_unacknowledged)
    assert set(completed_tasks) == acknowledged | outcomes.committed_unacknowledged
    for task_id in completed_tasks:
        assert completed_tasks[task_id].completed_by == outcomes.by[task_id]
    for task_id, data in outcomes.acknowledged.items():
        assert outcomes.sent[task_id] == data


def test_server_killed_at_random_moments_loses_and_duplicates_no_completion(pg_url, tmp_path):
    started = time.monotonic()
    seed = int(os.environ.get("CAMINS_CRASH_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    kills = rng.randint(5, 8)
    people, loops = _prepare_cases(pg_url)
    outcomes, stop, errors = Outcomes(), threading.Event(), []
    servers = Servers(pg_url, tmp_path)
    try:
        clients = [threading.Thread(target=_work, args=(servers, p, outcomes, stop, errors), daemon=True)
                   for p in people]
        killer = threading.Thread(target=_killer, args=(servers, outcomes, rng, kills, errors), daemon=True)
        for thread in [*clients, killer]:
            thread.start()
        killer.join(timeout=240)
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
        assert not killer.is_alive() and not any(t.is_alive() for t in clients), servers.log_tails()
        assert not errors, (seed, errors, servers.log_tails())
        assert servers.kills == kills
        assert outcomes.unexpected == [], (seed, servers.log_tails())
        # A 5xx is only acceptable as the answer of a server being killed at that moment.
        assert [e for e in outcomes.server_errors if not e[2]] == [], (seed, servers.log_tails())

        # Every unacknowledged submission once more, on the last server: done, or cleanly "already completed".
        retried = {task_id for task_id, _why in outcomes.unacknowledged}
        tokens = {p.username: p.token for p in people}
        for task_id in sorted(retried):
            response = requests.post(f"{servers.base()}/api/tasks/{task_id}/complete",
                                     json={"data": outcomes.sent[task_id]},
                                     headers={"Authorization": f"Bearer {tokens[outcomes.by[task_id]]}"}, timeout=60)
            assert response.status_code < 500, (seed, task_id, response.text)
            assert _already_completed(response), (seed, task_id, response.status_code, response.text)
    finally:
        stop.set()
        servers.stop()

    _check_database(pg_url, outcomes, loops)
    assert outcomes.acknowledged, "no completion was acknowledged"
    lost = sum(why == "lost in flight" for _task, why in outcomes.unacknowledged)
    print(f"\ncrash safety: seed={seed} kills={servers.kills} acknowledged={len(outcomes.acknowledged)} "
          f"unacknowledged={len(outcomes.unacknowledged)} (lost in flight={lost}) retried={len(retried)} "
          f"committed_without_answer={len(outcomes.committed_unacknowledged)} "
          f"seconds={time.monotonic() - started:.1f}")
