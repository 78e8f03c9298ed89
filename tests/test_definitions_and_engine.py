"""Deploying versions, rejecting bad diagrams, sandboxed scripts, timers fired exactly once."""
from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine import bundle as bundle_module
from engine.models import Definition, HistoryEvent, HumanTask, Incident, Instance, Timer
from tasks.worker import TimerWorker
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.service import Camins

from .pathway_driver import notify, to_imas_decision, work

MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="prova" /></bpmn:collaboration>
  <bpmn:process id="prova" name="Prova" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane1" name="{lane}"><bpmn:flowNodeRef>start</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>script</bpmn:flowNodeRef><bpmn:flowNodeRef>end</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="start" name="{label}"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:scriptTask id="script" name="Calcular"><bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
      <bpmn:script>{script}</bpmn:script></bpmn:scriptTask>
    <bpmn:endEvent id="end"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="script" />
    <bpmn:sequenceFlow id="f2" sourceRef="script" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""


def bundle(script="x = 1", lane="Treballador/a social", label="Inici", prefix=""):
    return prefix + MINIMAL.format(script=script, lane=lane, label=label)


def upload(http, content: str, path="/api/definitions", name="prova.bpmn"):
    return http.post(path, "analista", files=[("files", (name, content.encode(), "application/xml"))])


def _definitions(camins, key="prova"):
    with camins.db.read() as session:
        return session.scalars(select(Definition.version).where(Definition.process_key == key)).all()


def test_deploy_versions_and_running_instances_stay(http, camins):
    first = upload(http, bundle())
    assert first.status_code == 201 and first.json()["version"] == 1 and first.json()["created"]
    again = upload(http, bundle())
    assert again.status_code == 201 and again.json() == {**first.json(), "created": False}
    reference = notify(http)
    started = http.post("/api/instances", "analista",
                        json={"process_key": "prova", "case_reference": reference, "data": {}})
    assert started.status_code == 201, started.text
    changed = upload(http, bundle(label="Inici canviat"))
    assert changed.json()["version"] == 2 and changed.json()["created"]
    with camins.db.read() as session:
        instance = session.get(Instance, started.json()["id"])
        assert session.get(Definition, instance.definition_id).version == 1
    assert _definitions(camins) == [1, 2]
    listed = http.get("/api/definitions", "analista").json()
    assert [(d["process_key"], d["version"]) for d in listed["items"] if d["process_key"] == "prova"] == \
        [("prova", 2), ("prova", 1)]


def test_bundled_pathways_redeploy_unchanged(camins):
    results = camins.deploy_directory(BUNDLED_DIAGRAMS)
    assert len(results) == len(list(BUNDLED_DIAGRAMS.glob("*.bpmn")))
    assert all(d.version == 1 and not created for d, created in results)


@pytest.mark.parametrize("content, fragment", [
    ("<bpmn:definitions", "malformed XML"),
    ('<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>', "DOCTYPE"),
    (bundle(prefix="").replace('<?xml version="1.0" encoding="UTF-8"?>',
                               '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]>'), "DOCTYPE"),
    (bundle(lane="Astronauta"), "lane 'Astronauta' does not match any role"),
    (bundle(script="x = = 1"), "script rejected"),
    ("<html><body>not bpmn</body></html>", "not a BPMN 2.0 document"),
])
def test_bad_diagrams_are_rejected_and_nothing_is_deployed(http, camins, content, fragment):
    for path in ("/api/definitions/validate", "/api/definitions"):
        response = upload(http, content, path)
        assert response.status_code == 422, response.text
        assert response.headers["Content-Type"].startswith("application/problem+json")
        body = response.json()
        assert any(fragment in p["message"] for p in body["problems"]), body
        assert all(p["file"] for p in body["problems"])
    assert _definitions(camins) == []


def test_problem_names_file_element_and_line(http):
    response = upload(http, bundle(script="x = 1\ny = (", lane="Astronauta"))
    problems = response.json()["problems"]
    lane = next(p for p in problems if "lane" in p["message"])
    script = next(p for p in problems if "script" in p["message"])
    assert lane["file"] == "prova.bpmn" and lane["element_id"] == "lane1" and lane["line"] == 6
    assert script["element_id"] == "script" and script["line"] >= 9


def test_only_analysts_deploy(http):
    response = http.post("/api/definitions", "coord.manacor",
                         files=[("files", ("prova.bpmn", bundle().encode(), "application/xml"))])
    assert response.status_code == 403


@pytest.mark.parametrize("script", ["x = 10 ** 10 ** 10", "x = 'a' * 10 ** 6 * 10 ** 6", "while True:\n    pass",
                                    "def f(n):\n    return f(n + 1)\nx = f(0)"])
def test_hostile_script_opens_incident_and_leaves_instance_untouched(http, camins, script):
    assert upload(http, bundle(script=script)).status_code == 201
    _start_and_expect_incident(http)


@pytest.mark.parametrize("script", ["x = __import__('os')", "x = open('/etc/passwd').read()",
                                    "x = ().__class__.__base__", "x = getattr((), '__class__')"])
def test_escape_that_slipped_past_deploy_still_fails_at_run_time(http, camins, monkeypatch, script):
    """Defence in depth: even a diagram stored without the deploy checks cannot escape."""
    monkeypatch.setattr(bundle_module, "check_script", lambda source: None)
    assert upload(http, bundle(script=script)).status_code == 201
    monkeypatch.undo()
    _start_and_expect_incident(http)


def _start_and_expect_incident(http):
    reference = notify(http)
    response = http.post("/api/instances", "analista",
                         json={"process_key": "prova", "case_reference": reference, "data": {}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["incident_id"] is not None
    assert body["status"] == "created" and body["version_counter"] == 1
    assert body["completed_elements"] == [] and body["active_elements"] == []
    assert [i["element_id"] for i in body["incidents"]] == ["script"]
    assert http.get("/healthz").status_code == 200


@pytest.mark.parametrize("script", ["x = __import__('os')", "x = ().__class__.__base__", "import os"])
def test_obvious_escapes_are_refused_at_deploy(http, camins, script):
    response = upload(http, bundle(script=script))
    assert response.status_code == 422
    assert _definitions(camins) == []


def test_failed_service_task_keeps_the_submission_and_retry_applies_it(http, camins, monkeypatch):
    reference = notify(http)
    real = camins.hooks.call_service

    def rumi_down(*args, **kwargs):
        raise ConnectionError("RUMI register unreachable")

    monkeypatch.setattr(camins.hooks, "call_service", rumi_down)
    from .pathway_driver import complete, task_in_inbox
    response = complete(http, "adm.sonservera", reference, "registre_notificacio")
    assert response.status_code == 409
    incident_id = response.json()["incident_id"]
    assert response.json()["element_id"] == "comunicar_rumi"
    # Nothing moved: the task is still open, the instance unchanged.
    task_in_inbox(http, "adm.sonservera", reference, "registre_notificacio")

    monkeypatch.setattr(camins.hooks, "call_service", real)
    assert http.post(f"/api/incidents/{incident_id}/retry", "ts.sonservera").status_code == 404
    retried = http.post(f"/api/incidents/{incident_id}/retry", "coord.sonservera")
    assert retried.status_code == 200, retried.text
    task_in_inbox(http, "ts.sonservera", reference, "valorar_urgencia")
    with camins.db.read() as session:
        incident = session.get(Incident, incident_id)
        assert incident.status == "resolved" and incident.resolved_by == "coord.sonservera"
        completed = session.scalar(select(HumanTask).where(HumanTask.element_id == "registre_notificacio"))
        assert completed.state == "completed" and completed.completed_by == "adm.sonservera"


def test_twenty_day_timer_fires_once_with_two_workers(http, camins, database_url, manual_clock):
    reference = to_imas_decision(http)
    with camins.db.read() as session:
        timers = session.scalars(select(Timer).where(Timer.status == "waiting")).all()
    assert len(timers) == 1
    assert timers[0].due_at == manual_clock.now() + timedelta(days=20)

    # Two workers, each with its own engine and connection pool, as two processes would have.
    other = Camins(database_url)
    workers = [TimerWorker(camins.engine, owner="worker-a"), TimerWorker(other.engine, owner="worker-b")]
    assert [w.run_once() for w in workers] == [0, 0]
    manual_clock.advance(timedelta(days=20, minutes=1))
    barrier = threading.Barrier(2)
    fired = []

    def run(worker):
        barrier.wait()
        fired.append(worker.run_once())

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert sorted(fired) == [0, 1]
    with camins.db.read() as session:
        assert session.scalar(select(func.count()).select_from(HistoryEvent)
                              .where(HistoryEvent.event == "timer_fired")) == 1
        assert session.scalar(select(func.count()).select_from(Timer)) == 0
        open_tasks = {t.element_id: t for t in session.scalars(
            select(HumanTask).where(HumanTask.business_key == reference, HumanTask.state == "open"))}
    # Non-interrupting: the decision stays open and the section head gets the review.
    assert set(open_tasks) == {"decisio_imas", "revisar_termini_vencut"}
    assert open_tasks["revisar_termini_vencut"].org_unit == "imas-llevant"
    assert open_tasks["decisio_imas"].due_at < manual_clock.now()
    overdue = http.get(f"/api/tasks?case={reference}&overdue=true", "intake.imas").json()["items"]
    assert [t["element_id"] for t in overdue] == ["decisio_imas"]


def test_stale_version_is_a_conflict_not_an_overwrite(http, camins):
    from engine.errors import Conflict

    reference = notify(http)
    with camins.db.read() as session:
        stale = session.scalar(select(Instance).where(Instance.business_key == reference))
        assert stale.definition is not None  # loaded before the snapshot is detached
        session.expunge(stale)
    work(http, "adm.sonservera", reference, "registre_notificacio")
    with pytest.raises(Conflict):
        with camins.db.write() as session:
            camins.engine._step_in(session, stale, {"kind": "advance"}, "racer")
    with camins.db.read() as session:
        assert session.get(Instance, stale.id).version == stale.version + 1
        assert session.scalar(select(func.count()).select_from(Incident)) == 0


def test_state_is_stored_without_the_spec(http, camins):
    import json

    reference = notify(http)
    with camins.db.read() as session:
        instance = session.scalar(select(Instance).where(Instance.business_key == reference))
        state = json.loads(instance.state)
    assert "spec" not in state and "subprocess_specs" not in state
    assert instance.serializer_version.startswith("spiff-")
    # And it restores against the cached spec: the next completion works from it.
    work(http, "adm.sonservera", reference, "registre_notificacio")


def test_sqlite_runs_in_wal_mode(camins):
    if not camins.db.is_sqlite:
        pytest.skip("SQLite only")
    from sqlalchemy import text
    with camins.db.read() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_twenty_day_timer_fires_once_with_two_worker_processes(http, camins, database_url, manual_clock, tmp_path):
    """Two `camins worker` processes share a simulated time through CAMINS_CLOCK_FILE."""
    import os
    import subprocess
    import sys
    import time

    from engine.clock import FileClock

    reference = to_imas_decision(http)
    shared = FileClock(str(tmp_path / "now"))
    shared.set(manual_clock.now())
    env = dict(os.environ, CAMINS_DATABASE_URL=database_url, CAMINS_CLOCK_FILE=shared.path)
    workers = [subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--poll", "0.2"], env=env,
                                cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]

    def fired() -> int:
        with camins.db.read() as session:
            return session.scalar(select(func.count()).select_from(HistoryEvent)
                                  .where(HistoryEvent.event == "timer_fired"))

    try:
        time.sleep(3)
        assert fired() == 0 and all(w.poll() is None for w in workers)
        shared.set(manual_clock.advance(timedelta(days=20, minutes=1)))
        deadline = time.monotonic() + 60
        while fired() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # both workers polled several times more
        assert fired() == 1
    finally:
        for w in workers:
            w.terminate()
        errors = [w.communicate(timeout=30)[1] for w in workers]
    assert not any("Traceback" in e for e in errors), errors
    with camins.db.read() as session:
        open_tasks = set(session.scalars(select(HumanTask.element_id).where(
            HumanTask.business_key == reference, HumanTask.state == "open")))
    assert open_tasks == {"decisio_imas", "revisar_termini_vencut"}


def _created_but_never_advanced(camins, reference: str) -> int:
    """An instance written by a request whose process died before its first advance."""
    with camins.db.write() as session:
        definition = camins.engine.latest_definition(session, "prova")
        return camins.engine.create_instance(session, definition, reference, {}, "analista").id


def test_worker_advances_an_instance_whose_creator_died_before_advancing_it(http, camins, manual_clock):
    reference = notify(http)
    assert upload(http, bundle(script="x = 1")).status_code == 201
    orphan = _created_but_never_advanced(camins, reference)
    worker = TimerWorker(camins.engine, owner="worker-a")
    worker.run_once()
    with camins.db.read() as session:
        # Its creator may still be about to advance it: a fresh one is left alone.
        assert session.get(Instance, orphan).status == "created"
    manual_clock.advance(timedelta(minutes=2))
    worker.run_once()
    with camins.db.read() as session:
        instance = session.get(Instance, orphan)
        assert instance.status == "completed" and instance.completed_elements == ["end", "script", "start"]
        assert session.scalar(select(func.count()).select_from(HistoryEvent).where(
            HistoryEvent.instance_id == orphan, HistoryEvent.event == "instance_completed")) == 1


def test_worker_leaves_a_stalled_instance_with_an_open_incident_to_a_person(http, camins, manual_clock):
    reference = notify(http)
    assert upload(http, bundle(script="x = 1 / 0")).status_code == 201
    failing = http.post("/api/instances", "analista", json={"process_key": "prova", "case_reference": reference,
                                                            "data": {}}).json()
    assert failing["incident_id"] is not None and failing["status"] == "created"
    manual_clock.advance(timedelta(minutes=2))
    TimerWorker(camins.engine, owner="worker-a").run_once()
    with camins.db.read() as session:
        assert session.get(Instance, failing["id"]).status == "created"
        assert session.scalar(select(func.count()).select_from(Incident)) == 1  # not one more per poll


def test_one_timer_failing_on_the_database_does_not_hold_back_the_batch(http, camins, manual_clock, monkeypatch):
    from sqlalchemy.exc import OperationalError
    references = [to_imas_decision(http), to_imas_decision(http, "Manacor", "manacor")]
    manual_clock.advance(timedelta(days=20, minutes=1))
    with camins.db.read() as session:
        first, second = session.scalars(select(Timer.id).order_by(Timer.due_at, Timer.id)).all()
    fire = camins.engine.fire_timer

    def database_hiccup(timer_id, owner):
        if timer_id == first:
            raise OperationalError("UPDATE instance ...", {}, Exception("connection reset"))
        return fire(timer_id, owner)

    monkeypatch.setattr(camins.engine, "fire_timer", database_hiccup)
    worker = TimerWorker(camins.engine, owner="worker-a", lease=timedelta(minutes=5))
    assert worker.run_once() == 1
    monkeypatch.undo()
    with camins.db.read() as session:
        assert set(session.scalars(select(Timer.id))) == {first}  # still leased to worker-a
    assert TimerWorker(camins.engine, owner="worker-b").run_once() == 0
    manual_clock.advance(timedelta(minutes=6))
    assert TimerWorker(camins.engine, owner="worker-b").run_once() == 1
    with camins.db.read() as session:
        fired = session.scalars(select(HistoryEvent).where(HistoryEvent.event == "timer_fired")
                                .order_by(HistoryEvent.id)).all()
    assert sorted(e.business_key for e in fired) == sorted(references)
    assert [e.detail["worker"] for e in fired] == ["worker-a", "worker-b"]
    assert [e.detail["timer_id"] for e in fired] == [second, first]


def test_database_errors_never_carry_the_values_sent(camins):
    """Errors end up in logs; the values bound to a statement are personal data (names, notes)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    secret = "Maria Nena Secreta"
    with pytest.raises(DBAPIError) as info:
        with camins.db.write() as session:
            session.execute(text("INSERT INTO no_such_table (name) VALUES (:name)"), {"name": secret})
    assert secret not in str(info.value)
