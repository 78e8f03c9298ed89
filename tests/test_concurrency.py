"""Many people acting at the same moment, over real HTTP, on SQLite and PostgreSQL.

Twenty threads released together by a barrier claim and complete the same tasks: exactly one
of them wins each task and everyone else is told 409, nothing is written twice and nothing is
lost. Two people completing the two parallel branches of a diagram at the same moment both
succeed, and the join after them fires exactly once.
"""
from __future__ import annotations

import json
import threading
from collections import Counter

from sqlalchemy import select

from engine import clock
from engine.models import HistoryEvent, HumanTask, Instance
from workflows import security
from workflows.demo import DEMO_PASSWORD
from workflows.models import User

from .pathway_driver import case, notify, task_in_inbox

THREADS = 20
CLERKS = [f"aux{n:02d}.sonservera" for n in range(THREADS)]
PROBLEM = "application/problem+json"


def _clerks(camins, http) -> list[str]:
    """Twenty administrative assistants of Son Servera, all candidates for the same queue, with tokens.

    Their users and tokens are written directly (one password hash for all, no login round trip):
    this file is about the race for the tasks, tests/test_authentication.py about logging in.
    """
    with camins.db.write() as session:
        users = {u.username: u for u in session.scalars(select(User).where(User.username.in_(CLERKS)))}
        password_hash = security.hash_password(DEMO_PASSWORD) if len(users) < len(CLERKS) else None
        for name in CLERKS:
            if name not in users:
                users[name] = User(username=name, full_name=name, password_hash=password_hash, active=True,
                                   created_at=clock.now(),
                                   memberships=[security.membership_for("sscb_admin", "Son Servera")])
                session.add(users[name])
        session.flush()
        for name in CLERKS:
            http.tokens[name], _row = security.issue_token(session, users[name])
    return CLERKS


def _all_at_once(jobs) -> list:
    """Run each job in its own thread, all released by one barrier; their results, in order."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)

    def run(index, job):
        barrier.wait(timeout=60)
        try:
            results[index] = job()
        except BaseException as err:  # reported by the assertions below
            results[index] = err

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not any(thread.is_alive() for thread in threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def _history(camins, event: str) -> list[HistoryEvent]:
    with camins.db.read() as session:
        return session.scalars(select(HistoryEvent).where(HistoryEvent.event == event)
                               .order_by(HistoryEvent.id)).all()


def _registrations(http, count: int) -> tuple[list[str], list[str]]:
    references = [notify(http) for _ in range(count)]
    tasks = [task_in_inbox(http, "adm.sonservera", r, "registre_notificacio")["id"] for r in references]
    return references, tasks


def _registration_data(index: int) -> dict:
    # Each clerk types a different reception date, so the stored data tells whose submission won.
    return {"canal": "telefon", "data_recepcio": f"2026-10-{index + 1:02d}", "es_reiteracio": False}


def _outcomes(results, tasks) -> dict[str, list[tuple[str, int, str]]]:
    by_task: dict[str, list[tuple[str, int, str]]] = {t: [] for t in tasks}
    for clerk_results in results:
        for clerk, task_id, status, content_type in clerk_results:
            by_task[task_id].append((clerk, status, content_type))
    return by_task


def _one_winner_each(by_task) -> dict[str, str]:
    winners = {}
    for task_id, outcomes in by_task.items():
        statuses = Counter(status for _clerk, status, _type in outcomes)
        assert statuses == Counter({200: 1, 409: THREADS - 1}), (task_id, statuses)
        assert all(ctype == PROBLEM for _c, status, ctype in outcomes if status == 409)
        winners[task_id] = next(clerk for clerk, status, _type in outcomes if status == 200)
    return winners


def test_twenty_people_claim_the_same_tasks_and_exactly_one_wins_each(http, camins):
    clerks = _clerks(camins, http)
    _references, tasks = _registrations(http, 3)

    def claim_all(index: int, clerk: str):
        order = tasks[index % len(tasks):] + tasks[:index % len(tasks)]  # collide in different orders
        out = []
        for task_id in order:
            response = http.post(f"/api/tasks/{task_id}/claim", clerk)
            out.append((clerk, task_id, response.status_code, response.headers.get("Content-Type")))
        return out

    results = _all_at_once([lambda i=i, c=c: claim_all(i, c) for i, c in enumerate(clerks)])
    winners = _one_winner_each(_outcomes(results, tasks))

    for task_id, winner in winners.items():
        assert http.get(f"/api/tasks/{task_id}", winner).json()["assignee"] == winner
    claimed = [(h.detail["task_id"], h.actor) for h in _history(camins, "task_claimed")]
    assert sorted(claimed) == sorted(winners.items())
    # The losers cannot complete what the winner holds; the winner can.
    loser = next(c for c in clerks if c != winners[tasks[0]])
    refused = http.post(f"/api/tasks/{tasks[0]}/complete", loser, json={"data": _registration_data(0)})
    assert refused.status_code == 403
    done = http.post(f"/api/tasks/{tasks[0]}/complete", winners[tasks[0]], json={"data": _registration_data(0)})
    assert done.status_code == 200, done.text


def test_twenty_people_complete_the_same_tasks_one_wins_nothing_is_lost_or_doubled(http, camins):
    clerks = _clerks(camins, http)
    references, tasks = _registrations(http, 3)

    def complete_all(index: int, clerk: str):
        order = tasks[index % len(tasks):] + tasks[:index % len(tasks)]
        out = []
        for task_id in order:
            response = http.post(f"/api/tasks/{task_id}/complete", clerk, json={"data": _registration_data(index)})
            out.append((clerk, task_id, response.status_code, response.headers.get("Content-Type")))
        return out

    results = _all_at_once([lambda i=i, c=c: complete_all(i, c) for i, c in enumerate(clerks)])
    winners = _one_winner_each(_outcomes(results, tasks))

    completed = [(h.detail["task_id"], h.actor) for h in _history(camins, "task_completed")]
    assert sorted(completed) == sorted(winners.items())  # one history row per task, by its winner
    claims = Counter(h.detail["task_id"] for h in _history(camins, "task_claimed"))
    assert all(claims[t] <= 1 for t in tasks)
    with camins.db.read() as session:
        rows = {t.id: t for t in session.scalars(select(HumanTask).where(HumanTask.id.in_(tasks)))}
        for task_id, winner in winners.items():
            assert (rows[task_id].state, rows[task_id].completed_by) == ("completed", winner)
        instances = session.scalars(select(Instance).where(Instance.business_key.in_(references))).all()
        next_tasks = Counter(session.scalars(select(HumanTask.instance_id)
                                             .where(HumanTask.element_id == "valorar_urgencia")))
    assert len(instances) == 3
    by_instance = {rows[t].instance_id: winners[t] for t in tasks}
    for instance in instances:
        # Created (1), advanced to the registration (2), the one completion (3): no other step committed.
        detail = http.get(f"/api/instances/{instance.id}", "coord.sonservera").json()
        assert detail["version_counter"] == instance.version == 3
        assert detail["active_elements"] == ["valorar_urgencia"]
        assert next_tasks[instance.id] == 1
        # The winner's submission is the one the pathway holds; no loser's data slipped in.
        state = json.dumps(json.loads(instance.state))
        dates = {f"2026-10-{i + 1:02d}" for i in range(THREADS)}
        winner_date = f"2026-10-{clerks.index(by_instance[instance.id]) + 1:02d}"
        assert winner_date in state
        assert not [d for d in dates - {winner_date} if d in state]
    ready = Counter(h.instance_id for h in _history(camins, "task_ready") if h.element_id == "valorar_urgencia")
    assert ready == Counter({i.id: 1 for i in instances})
    for reference in references:
        assert [t["element_id"] for t in case(http, "coord.sonservera", reference)["open_tasks"]] == \
            ["valorar_urgencia"]


PARALLEL = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs_paral" targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="paral" /></bpmn:collaboration>
  <bpmn:process id="paral" name="Branques paral·leles" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_ts" name="Treballador/a social"><bpmn:flowNodeRef>inici</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>divisio</bpmn:flowNodeRef><bpmn:flowNodeRef>tasca_a</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>unio</bpmn:flowNodeRef><bpmn:flowNodeRef>registrar</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane>
      <bpmn:lane id="lane_es" name="Educador/a social"><bpmn:flowNodeRef>tasca_b</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:parallelGateway id="divisio" name="Divisió"><bpmn:incoming>f1</bpmn:incoming>
      <bpmn:outgoing>f2</bpmn:outgoing><bpmn:outgoing>f3</bpmn:outgoing></bpmn:parallelGateway>
    <bpmn:userTask id="tasca_a" name="Tasca A">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/tasca_a.form" /></spiffworkflow:properties>
      </bpmn:extensionElements><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f4</bpmn:outgoing></bpmn:userTask>
    <bpmn:userTask id="tasca_b" name="Tasca B">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/tasca_b.form" /></spiffworkflow:properties>
      </bpmn:extensionElements><bpmn:incoming>f3</bpmn:incoming><bpmn:outgoing>f5</bpmn:outgoing></bpmn:userTask>
    <bpmn:parallelGateway id="unio" name="Unió"><bpmn:incoming>f4</bpmn:incoming><bpmn:incoming>f5</bpmn:incoming>
      <bpmn:outgoing>f6</bpmn:outgoing></bpmn:parallelGateway>
    <bpmn:serviceTask id="registrar" name="Registrar">
      <bpmn:extensionElements>
        <spiffworkflow:serviceTaskOperator id="record_communication" resultVariable="registre">
          <spiffworkflow:parameters>
            <spiffworkflow:parameter id="recipient" type="str" value="'Unió'" />
            <spiffworkflow:parameter id="subject" type="str" value="valor_a + ' i ' + valor_b" />
          </spiffworkflow:parameters>
        </spiffworkflow:serviceTaskOperator>
      </bpmn:extensionElements><bpmn:incoming>f6</bpmn:incoming><bpmn:outgoing>f7</bpmn:outgoing></bpmn:serviceTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f7</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="divisio" />
    <bpmn:sequenceFlow id="f2" sourceRef="divisio" targetRef="tasca_a" />
    <bpmn:sequenceFlow id="f3" sourceRef="divisio" targetRef="tasca_b" />
    <bpmn:sequenceFlow id="f4" sourceRef="tasca_a" targetRef="unio" />
    <bpmn:sequenceFlow id="f5" sourceRef="tasca_b" targetRef="unio" />
    <bpmn:sequenceFlow id="f6" sourceRef="unio" targetRef="registrar" />
    <bpmn:sequenceFlow id="f7" sourceRef="registrar" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""


def _form(key: str) -> bytes:
    return json.dumps({"type": "default", "id": f"Form_{key}", "schemaVersion": 16, "components": [
        {"type": "textfield", "key": key, "label": "Valor", "id": f"Field_{key}", "validate": {"required": True}}
    ]}).encode()


def test_both_parallel_branches_completed_at_once_join_exactly_once(http, camins):
    files = [("files", ("paral.bpmn", PARALLEL.encode(), "application/xml")),
             ("files", ("forms/tasca_a.form", _form("valor_a"), "application/json")),
             ("files", ("forms/tasca_b.form", _form("valor_b"), "application/json"))]
    deployed = http.post("/api/definitions", "analista", files=files)
    assert deployed.status_code == 201, deployed.text
    reference = notify(http)
    instances = []
    for _ in range(THREADS // 2):
        started = http.post("/api/instances", "coord.sonservera",
                            json={"process_key": "paral", "case_reference": reference, "data": {}})
        assert started.status_code == 201, started.text
        assert sorted(started.json()["active_elements"]) == ["tasca_a", "tasca_b"]
        instances.append(started.json()["id"])
    branch_a = {t["instance_id"]: t["id"] for t in
                http.get(f"/api/tasks?case={reference}&pathway=paral&per_page=200", "ts.sonservera").json()["items"]}
    branch_b = {t["instance_id"]: t["id"] for t in
                http.get(f"/api/tasks?case={reference}&pathway=paral&per_page=200", "es.sonservera").json()["items"]}
    assert set(branch_a) == set(branch_b) == set(instances)

    jobs = []
    for instance_id in instances:
        jobs.append(lambda i=instance_id: http.post(f"/api/tasks/{branch_a[i]}/complete", "ts.sonservera",
                                                    json={"data": {"valor_a": f"A{i}"}}))
        jobs.append(lambda i=instance_id: http.post(f"/api/tasks/{branch_b[i]}/complete", "es.sonservera",
                                                    json={"data": {"valor_b": f"B{i}"}}))
    responses = _all_at_once(jobs)
    # Completing different tasks is no conflict: both people succeed, however close together.
    assert [r.status_code for r in responses] == [200] * len(jobs), [r.text for r in responses if r.status_code != 200]

    for instance_id in instances:
        detail = http.get(f"/api/instances/{instance_id}", "coord.sonservera").json()
        assert detail["status"] == "completed" and detail["active_elements"] == []
        assert {"tasca_a", "tasca_b", "unio", "registrar", "fi"} <= set(detail["completed_elements"])
        # Created, advanced, one step per branch: four committed steps.
        assert detail["version_counter"] == 4
    # The join fired once per instance, after both branches, with both branches' data.
    subjects = sorted(c["subject"] for c in case(http, "coord.sonservera", reference)["communications"]
                      if c["recipient"] == "Unió")
    assert subjects == sorted(f"A{i} i B{i}" for i in instances)
    ended = Counter(h.instance_id for h in _history(camins, "instance_completed"))
    assert ended == Counter(instances)
    completed = Counter((h.instance_id, h.element_id) for h in _history(camins, "task_completed"))
    assert completed == Counter({(i, e): 1 for i in instances for e in ("tasca_a", "tasca_b")})
    with camins.db.read() as session:
        rows = session.scalars(select(HumanTask).where(HumanTask.instance_id.in_(instances))).all()
    assert sorted((r.element_id, r.state) for r in rows) == \
        sorted([("tasca_a", "completed"), ("tasca_b", "completed")] * len(instances))


def test_twenty_notifications_at_once_each_open_their_own_case(http, camins):
    """The first cases of a year race to create the year's case counter."""
    http.login("notificant.escola")
    responses = _all_at_once([lambda: notify_response(http) for _ in range(THREADS)])
    assert [r.status_code for r in responses] == [201] * THREADS, [r.text for r in responses if r.status_code != 201]
    references = sorted(r.json()["case_reference"] for r in responses)
    assert references == [f"EXP-2026-{n:06d}" for n in range(1, THREADS + 1)]
    with camins.db.read() as session:
        started = session.scalars(select(Instance.business_key).where(Instance.process_key == "deteccio")).all()
    assert sorted(started) == references


def notify_response(http):
    from .pathway_driver import notification
    return http.post("/api/notifications", "notificant.escola", json=notification())
