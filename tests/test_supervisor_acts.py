"""Supervisors' acts over HTTP: suspend, resume, cancel, move a token, retry, reassign one or many.

Each act: its effect, its history entry (reason and who), its access-log row, and who may do it: the
coordinator of Manacor acts on a Manacor case; the social worker who sees the case gets 403; the
coordinator of Inca (Raiguer) neither sees nor acts on it: 404, word for word as for an instance that
does not exist.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import select

from engine.bundle import BundleFile
from engine.errors import Rejected
from engine.models import HumanTask, Outbox
from workflows.demo import SEVERITY_SCORES, work_open_tasks
from workflows.models import AccessLog

from .pathway_driver import case, inbox, notify, task_in_inbox, work

REASON = "La família ha canviat de domicili; cal revisar el cas."
SUPERVISOR, CASEWORKER, OUTSIDER = "coord.manacor", "ts.manacor", "coord.inca"

# A pathway that waits: for a message or a timer, then a task of the social worker.
WAITING = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="defs_{key}"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" targetNamespace="http://camins">
  <bpmn:message id="msg" name="prova_resposta" />
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="{key}" /></bpmn:collaboration>
  <bpmn:process id="{key}" name="Prova d'espera" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane" name="Treballador/a social">
      <bpmn:flowNodeRef>start</bpmn:flowNodeRef><bpmn:flowNodeRef>wait</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>seguiment</bpmn:flowNodeRef><bpmn:flowNodeRef>end</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="start" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:intermediateCatchEvent id="wait" name="Espera">
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
      {event}
    </bpmn:intermediateCatchEvent>
    <bpmn:userTask id="seguiment" name="Seguiment">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/seguiment.form" />
      </spiffworkflow:properties></bpmn:extensionElements>
      <bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:endEvent id="end" name="Fi"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="wait" />
    <bpmn:sequenceFlow id="f2" sourceRef="wait" targetRef="seguiment" />
    <bpmn:sequenceFlow id="f3" sourceRef="seguiment" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""
MESSAGE_EVENT = '<bpmn:messageEventDefinition id="def_msg" messageRef="msg" />'
FORM = b'''{"type": "default", "id": "Form_seguiment", "schemaVersion": 16, "components": [
  {"type": "textfield", "key": "notes", "label": "Notes", "id": "Field_notes"}]}'''
TIMER_EVENT = ('<bpmn:timerEventDefinition id="def_timer"><bpmn:timeDuration>"P1D"</bpmn:timeDuration>'
               '</bpmn:timerEventDefinition>')


# ------------------------------------------------------------------------------------ helpers
def investigation(http) -> tuple[str, int]:
    """A Manacor case whose investigation waits on the home visit; its investigation instance id."""
    reference = notify(http, "Manacor")
    work(http, "adm.manacor", reference, "registre_notificacio")
    work(http, CASEWORKER, reference, "valorar_urgencia")
    return reference, instance_of(http, reference, "investigacio")["id"]


def instance_of(http, reference: str, process_key: str) -> dict:
    return next(i for i in case(http, SUPERVISOR, reference)["instances"] if i["process_key"] == process_key)


def act(http, user: str, instance_id: int, name: str, reason: str | None = REASON, **body):
    if reason is not None:
        body["reason"] = reason
    return http.post(f"/api/instances/{instance_id}/{name}", user, json=body)


def history(http, reference: str, event: str) -> list[dict]:
    return [h for h in case(http, SUPERVISOR, reference)["history"] if h["event"] == event]


def logged(camins, username: str, action: str) -> list[str]:
    with camins.db.read() as session:
        return list(session.scalars(select(AccessLog.case_reference)
                                    .where(AccessLog.username == username, AccessLog.action == action)))


def open_rows(camins, reference: str) -> dict[str, str]:
    """Element id → state of the human-task rows of the case that are open."""
    with camins.db.read() as session:
        return dict(session.execute(select(HumanTask.element_id, HumanTask.state)
                                    .where(HumanTask.business_key == reference, HumanTask.state == "open")).all())


def colleague(camins) -> None:
    """A second social worker in Manacor (users outlive the test that made them)."""
    try:
        camins.create_user("ts2.manacor", "camins-demo-2026", [("sscb_social_worker", "Manacor")])
    except Rejected:
        pass


def start_waiting(http, camins, event: str) -> tuple[str, int]:
    key = "prova_espera_missatge" if event == MESSAGE_EVENT else "prova_espera_temps"
    camins.deploy_bundle(None, [BundleFile(f"{key}.bpmn", WAITING.format(key=key, event=event).encode()),
                                BundleFile("forms/seguiment.form", FORM)])
    reference = notify(http, "Manacor")
    started = http.post("/api/instances", SUPERVISOR,
                        json={"process_key": key, "case_reference": reference, "data": {}})
    assert started.status_code == 201, started.text
    return reference, started.json()["id"]


# ------------------------------------------------------------------------------------ suspend / resume
def test_a_suspended_instance_keeps_its_tasks_visible_but_nothing_moves_it_until_resumed(http, camins):
    reference, instance_id = investigation(http)
    suspended = act(http, SUPERVISOR, instance_id, "suspend")
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["instance_status"] == "suspended"
    [entry] = history(http, reference, "instance_suspended")
    assert (entry["actor"], entry["detail"]["reason"]) == (SUPERVISOR, REASON)
    assert logged(camins, SUPERVISOR, "suspend_instance") == [reference]

    # The task stays in the inbox, marked; nobody can claim or complete it.
    task = task_in_inbox(http, CASEWORKER, reference, "visita_domiciliaria")
    assert http.get(f"/api/tasks/{task['id']}", CASEWORKER).json()["instance_suspended"] is True
    claimed = http.post(f"/api/tasks/{task['id']}/claim", CASEWORKER)
    assert claimed.status_code == 409 and "suspended" in claimed.json()["detail"]
    completed = http.post(f"/api/tasks/{task['id']}/complete", CASEWORKER,
                          json={"data": {"data_visita": "2026-11-20", "nombre_visites": 1, "familia_present": True,
                                         "condicions_habitatge": "adequades"}})
    assert completed.status_code == 409 and "suspended" in completed.json()["detail"]
    assert act(http, SUPERVISOR, instance_id, "suspend").status_code == 409  # already suspended
    assert act(http, SUPERVISOR, instance_id, "move", skip_task_id=task["id"]).status_code == 409

    resumed = act(http, SUPERVISOR, instance_id, "resume", reason="  Domicili localitzat.  ")
    assert resumed.status_code == 200 and resumed.json()["instance_status"] == "running"
    [entry] = history(http, reference, "instance_resumed")
    assert (entry["actor"], entry["detail"]["reason"]) == (SUPERVISOR, "Domicili localitzat.")
    assert act(http, SUPERVISOR, instance_id, "resume").status_code == 409  # not suspended
    assert http.get(f"/api/tasks/{task['id']}", CASEWORKER).json()["instance_suspended"] is False
    work(http, CASEWORKER, reference, "visita_domiciliaria")


def test_a_timer_due_while_suspended_fires_on_resume(http, camins, manual_clock):
    reference, instance_id = start_waiting(http, camins, TIMER_EVENT)
    assert act(http, SUPERVISOR, instance_id, "suspend").status_code == 200
    manual_clock.advance(timedelta(days=2))
    assert camins.engine.acquire_due_timers("worker-1") == []  # deferred, not lost
    assert camins.engine.next_timer_due() is not None
    assert "seguiment" not in open_rows(camins, reference)

    assert act(http, SUPERVISOR, instance_id, "resume").status_code == 200
    assert open_rows(camins, reference)["seguiment"] == "open"
    [fired] = history(http, reference, "timer_fired")
    assert fired["element_id"] == "wait" and fired["detail"]["on"] == "resume"
    assert camins.engine.next_timer_due() is None


def test_a_message_for_a_suspended_instance_is_refused_to_its_sender_and_held_when_a_pathway_threw_it(http, camins):
    reference, instance_id = start_waiting(http, camins, MESSAGE_EVENT)
    assert act(http, SUPERVISOR, instance_id, "suspend").status_code == 200
    sent = http.post("/api/messages", SUPERVISOR,
                     json={"name": "prova_resposta", "case_reference": reference, "payload": {}})
    assert sent.status_code == 409 and "suspended" in sent.json()["detail"]

    # Thrown by another pathway: it waits in the outbox, undelivered, and is delivered on resume.
    with camins.db.write() as session:
        outbox = Outbox(name="prova_resposta", business_key=reference, payload={}, status="pending",
                        created_at=manual_clock_now())
        session.add(outbox)
        session.flush()
        outbox_id = outbox.id
    camins.engine.deliver_outbox(outbox_id)
    assert _outbox_status(camins, outbox_id) == "pending"
    assert "seguiment" not in open_rows(camins, reference)

    assert act(http, SUPERVISOR, instance_id, "resume").status_code == 200
    assert _outbox_status(camins, outbox_id) == "delivered"
    assert open_rows(camins, reference)["seguiment"] == "open"


def manual_clock_now():
    from engine import clock
    return clock.now()


def _outbox_status(camins, outbox_id: int) -> str:
    with camins.db.read() as session:
        return session.get(Outbox, outbox_id).status


# ------------------------------------------------------------------------------------ cancel
def test_a_supervisor_cancels_an_instance_with_its_reason(http, camins):
    reference, instance_id = investigation(http)
    cancelled = act(http, SUPERVISOR, instance_id, "cancel")
    assert cancelled.status_code == 200 and cancelled.json()["instance_status"] == "cancelled"
    assert inbox(http, CASEWORKER, reference) == []
    assert open_rows(camins, reference) == {}
    [entry] = history(http, reference, "instance_cancelled")
    assert (entry["actor"], entry["detail"]["reason"]) == (SUPERVISOR, REASON)
    assert logged(camins, SUPERVISOR, "cancel_instance") == [reference]
    # Done is done: every act on it is a conflict now.
    for name in ("cancel", "suspend", "resume"):
        again = act(http, SUPERVISOR, instance_id, name)
        assert again.status_code == 409 and "cancelled" in again.json()["detail"], name


def test_a_suspended_instance_can_be_cancelled(http, camins):
    _reference, instance_id = investigation(http)
    assert act(http, SUPERVISOR, instance_id, "suspend").status_code == 200
    assert act(http, SUPERVISOR, instance_id, "cancel").json()["instance_status"] == "cancelled"


def test_acts_on_a_completed_instance_are_conflicts(http, camins):
    reference, _instance_id = investigation(http)
    detection = instance_of(http, reference, "deteccio")  # it ended when the investigation began
    assert detection["status"] == "completed"
    for name, body in (("suspend", {}), ("resume", {}), ("cancel", {}),
                       ("move", {"return_to_element": "registre_notificacio"})):
        refused = act(http, SUPERVISOR, detection["id"], name, **body)
        assert refused.status_code == 409 and "completed" in refused.json()["detail"], name
    assert history(http, reference, "instance_suspended") == history(http, reference, "instance_cancelled") == []


def test_two_supervisors_suspending_at_once_one_wins(http, camins):
    reference, instance_id = investigation(http)
    http.login(SUPERVISOR), http.login("cap.llevant")
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda user: act(http, user, instance_id, "suspend").status_code,
                                [SUPERVISOR, "cap.llevant"]))
    assert sorted(answers) == [200, 409]
    assert len(history(http, reference, "instance_suspended")) == 1


# ------------------------------------------------------------------------------------ move a token
def test_return_to_an_earlier_task_opens_it_again_and_abandons_what_came_after(http, camins):
    reference, instance_id = investigation(http)
    work(http, CASEWORKER, reference, "visita_domiciliaria")
    work(http, CASEWORKER, reference, "informe_social")
    assert set(open_rows(camins, reference)) == {"informe_educatiu"}

    moved = act(http, SUPERVISOR, instance_id, "move", return_to_element="visita_domiciliaria")
    assert moved.status_code == 200, moved.text
    assert open_rows(camins, reference) == {"visita_domiciliaria": "open"}
    assert [t["element_id"] for t in inbox(http, CASEWORKER, reference)] == ["visita_domiciliaria"]
    assert inbox(http, "es.manacor", reference) == []  # the educational report is gone from its queue
    [entry] = history(http, reference, "token_moved")
    assert entry["actor"] == SUPERVISOR and entry["element_id"] == "visita_domiciliaria"
    assert entry["detail"]["reason"] == REASON and "informe_educatiu" in entry["detail"]["from"]
    assert [h["element_id"] for h in history(http, reference, "task_cancelled")] == ["informe_educatiu"]
    assert logged(camins, SUPERVISOR, "move_token") == [reference]
    # The first completion keeps its row; the reopened task is done again and the pathway goes on.
    with camins.db.read() as session:
        states = sorted(session.scalars(select(HumanTask.state).where(HumanTask.business_key == reference,
                                                                     HumanTask.element_id == "visita_domiciliaria")))
    assert states == ["completed", "open"]
    work(http, CASEWORKER, reference, "visita_domiciliaria")
    assert set(open_rows(camins, reference)) == {"informe_social", "informe_educatiu"}


def test_return_abandons_the_timers_of_the_branch_left(http, camins):
    """At the IMAS decision a 20-day boundary timer waits; returning to the severity assessment drops it."""
    reference, instance_id = investigation(http)
    work_open_tasks(camins, reference, ["visita_domiciliaria", "informe_social", "informe_educatiu",
                                        "valoracio_gravetat", "validar_valoracio"],
                    {"valoracio_gravetat": SEVERITY_SCORES["greu"]})
    detail = http.get(f"/api/instances/{instance_id}", SUPERVISOR).json()
    assert [t["element_id"] for t in detail["timers"]] == ["termini_imas"]
    moved = act(http, SUPERVISOR, instance_id, "move", return_to_element="valoracio_gravetat")
    assert moved.status_code == 200, moved.text
    detail = http.get(f"/api/instances/{instance_id}", SUPERVISOR).json()
    assert detail["timers"] == [] and detail["active_elements"] == ["valoracio_gravetat"]
    assert open_rows(camins, reference) == {"valoracio_gravetat": "open"}


def test_skip_passes_an_open_task_and_the_pathway_goes_on(http, camins):
    reference, instance_id = investigation(http)
    task = task_in_inbox(http, CASEWORKER, reference, "visita_domiciliaria")
    skipped = act(http, SUPERVISOR, instance_id, "move", skip_task_id=task["id"])
    assert skipped.status_code == 200, skipped.text
    assert set(open_rows(camins, reference)) == {"informe_social", "informe_educatiu"}
    [entry] = history(http, reference, "task_skipped")
    assert (entry["actor"], entry["element_id"], entry["detail"]["reason"]) == \
        (SUPERVISOR, "visita_domiciliaria", REASON)
    with camins.db.read() as session:
        row = session.get(HumanTask, task["id"])
    assert (row.state, row.completed_by) == ("skipped", SUPERVISOR)
    # Skipped is not open: a second skip, or the caseworker's completion, is a conflict.
    assert act(http, SUPERVISOR, instance_id, "move", skip_task_id=task["id"]).status_code == 409
    assert http.post(f"/api/tasks/{task['id']}/complete", CASEWORKER, json={"data": {}}).status_code == 409


def test_moves_that_cannot_be_made_are_refused_and_change_nothing(http, camins):
    reference, instance_id = investigation(http)
    before = open_rows(camins, reference)
    never_done = act(http, SUPERVISOR, instance_id, "move", return_to_element="informe_social")
    assert never_done.status_code == 409 and "has not been completed" in never_done.json()["detail"]
    not_a_task = act(http, SUPERVISOR, instance_id, "move", return_to_element="gw_inici_informes")
    assert not_a_task.status_code == 422 and "not a user task" in not_a_task.json()["detail"]
    unknown = act(http, SUPERVISOR, instance_id, "move", return_to_element="no_such_element")
    assert unknown.status_code == 422
    ghost_task = act(http, SUPERVISOR, instance_id, "move", skip_task_id="00000000-0000-4000-8000-000000000000")
    assert ghost_task.status_code == 409
    both = act(http, SUPERVISOR, instance_id, "move", skip_task_id="00000000-0000-4000-8000-000000000000",
               return_to_element="visita_domiciliaria")
    assert both.status_code == 422
    assert act(http, SUPERVISOR, instance_id, "move").status_code == 422
    # The detection pathway ended when the investigation began: nothing moves in it any more.
    detection = instance_of(http, reference, "deteccio")["id"]
    assert act(http, SUPERVISOR, detection, "move", return_to_element="registre_notificacio").status_code == 409
    assert open_rows(camins, reference) == before
    assert history(http, reference, "token_moved") == [] and history(http, reference, "task_skipped") == []


def test_a_skip_the_pathway_cannot_go_on_from_is_refused(http, camins):
    reference = notify(http, "Manacor")
    work(http, "adm.manacor", reference, "registre_notificacio")
    task = task_in_inbox(http, CASEWORKER, reference, "valorar_urgencia")
    detection = instance_of(http, reference, "deteccio")["id"]
    refused = act(http, SUPERVISOR, detection, "move", skip_task_id=task["id"])
    assert refused.status_code == 422 and "unable to go on" in refused.json()["detail"]
    assert open_rows(camins, reference) == {"valorar_urgencia": "open"}
    assert http.get(f"/api/instances/{detection}", SUPERVISOR).json()["incidents"] == []


# ------------------------------------------------------------------------------------ reasons
def test_every_act_needs_a_reason(http, camins):
    reference, instance_id = investigation(http)
    task = task_in_inbox(http, CASEWORKER, reference, "visita_domiciliaria")
    for name in ("suspend", "resume", "cancel"):
        for reason in (None, "", "   \n ", "x" * 2001):
            refused = act(http, SUPERVISOR, instance_id, name, reason=reason)
            assert refused.status_code == 422 and "reason" in refused.json()["errors"], (name, reason)
    refused = http.post(f"/api/tasks/{task['id']}/reassign", SUPERVISOR, json={"username": CASEWORKER})
    assert refused.status_code == 422 and "reason" in refused.json()["errors"]
    blank = http.post("/api/tasks/reassign", SUPERVISOR, json={"task_ids": [task["id"]], "username": None,
                                                               "reason": " "})
    assert blank.status_code == 422 and "reason" in blank.json()["errors"]
    assert instance_of(http, reference, "investigacio")["status"] == "running"
    assert history(http, reference, "task_reassigned") == []


# ------------------------------------------------------------------------------------ reassign
def test_reassign_one_task_with_its_reason(http, camins):
    colleague(camins)
    reference, _instance_id = investigation(http)
    task = task_in_inbox(http, CASEWORKER, reference, "visita_domiciliaria")
    moved = http.post(f"/api/tasks/{task['id']}/reassign", SUPERVISOR,
                      json={"username": "ts2.manacor", "reason": REASON})
    assert moved.status_code == 200 and moved.json()["assignee"] == "ts2.manacor"
    [entry] = history(http, reference, "task_reassigned")
    assert (entry["actor"], entry["detail"]["assignee"], entry["detail"]["reason"]) == \
        (SUPERVISOR, "ts2.manacor", REASON)
    assert logged(camins, SUPERVISOR, "reassign_task") == [reference]


def test_bulk_reassign_reports_each_task_and_one_refusal_undoes_nothing(http, camins):
    colleague(camins)
    first, _ = investigation(http)
    second, _ = investigation(http)
    elsewhere = notify(http, "Inca")  # Raiguer: not the coordinator of Manacor's to see
    visits = [task_in_inbox(http, CASEWORKER, ref, "visita_domiciliaria")["id"] for ref in (first, second)]
    foreign = task_in_inbox(http, "adm.inca", elsewhere, "registre_notificacio")["id"]
    with camins.db.read() as session:  # the urgency assessment the social worker completed
        done = {"id": session.scalar(select(HumanTask.id).where(HumanTask.business_key == first,
                                                                 HumanTask.element_id == "valorar_urgencia"))}
    ghost = "00000000-0000-4000-8000-000000000000"

    report = http.post("/api/tasks/reassign", SUPERVISOR,
                       json={"task_ids": [visits[0], foreign, ghost, done["id"], visits[1], visits[0]],
                             "username": "ts2.manacor", "reason": REASON})
    assert report.status_code == 200, report.text
    body = report.json()
    outcomes = {item["task_id"]: item for item in body["items"]}
    assert (body["reassigned"], body["refused"], len(body["items"])) == (2, 3, 5)
    assert outcomes[visits[0]]["outcome"] == outcomes[visits[1]]["outcome"] == "reassigned"
    # Not yours to see and not existing read the same.
    assert outcomes[foreign] == {"task_id": foreign, "outcome": "not_found", "detail": "task not found"}
    assert outcomes[ghost] == {"task_id": ghost, "outcome": "not_found", "detail": "task not found"}
    assert outcomes[done["id"]]["outcome"] == "refused" and "completed" in outcomes[done["id"]]["detail"]
    assert [t["assignee"] for ref in (first, second) for t in inbox(http, "ts2.manacor", ref)] == \
        ["ts2.manacor", "ts2.manacor"]
    assert sorted(logged(camins, SUPERVISOR, "reassign_task")) == sorted([first, second])

    # A caseworker is not a supervisor at all; too many ids is refused whole.
    assert http.post("/api/tasks/reassign", CASEWORKER,
                     json={"task_ids": visits, "username": None, "reason": REASON}).status_code == 403
    too_many = http.post("/api/tasks/reassign", SUPERVISOR,
                         json={"task_ids": [ghost] * 201, "username": None, "reason": REASON})
    assert too_many.status_code == 422 and "task_ids" in too_many.json()["errors"]
    # Reassignment to someone who is not a candidate is refused, task by task.
    wrong = http.post("/api/tasks/reassign", SUPERVISOR,
                      json={"task_ids": [visits[0]], "username": "ts.inca", "reason": REASON}).json()
    assert wrong["items"][0]["outcome"] == "refused" and "does not hold role" in wrong["items"][0]["detail"]


# ------------------------------------------------------------------------------------ retry
def test_retry_an_incident_with_its_reason(http, camins, monkeypatch):
    reference = notify(http, "Manacor")
    task = task_in_inbox(http, "adm.manacor", reference, "registre_notificacio")

    def service_down(*args, **kwargs):
        raise ConnectionError("register unreachable")

    monkeypatch.setattr(camins.hooks, "call_service", service_down)
    failed = http.post(f"/api/tasks/{task['id']}/complete", "adm.manacor",
                       json={"data": {"canal": "full_notificacio", "data_recepcio": "2026-11-20",
                                      "es_reiteracio": False}})
    monkeypatch.undo()
    assert failed.status_code == 409 and failed.json()["incident_id"], failed.text
    incident_id = failed.json()["incident_id"]

    assert http.post(f"/api/incidents/{incident_id}/retry", OUTSIDER, json={"reason": REASON}).status_code == 404
    assert http.post(f"/api/incidents/{incident_id}/retry", "adm.manacor",
                     json={"reason": REASON}).status_code == 403
    assert http.post(f"/api/incidents/{incident_id}/retry", SUPERVISOR, json={"reason": " "}).status_code == 422
    retried = http.post(f"/api/incidents/{incident_id}/retry", SUPERVISOR, json={"reason": REASON})
    assert retried.status_code == 200, retried.text
    [entry] = history(http, reference, "incident_resolved")
    assert (entry["actor"], entry["detail"]["reason"]) == (SUPERVISOR, REASON)
    assert logged(camins, SUPERVISOR, "retry_incident") == [reference]
    assert set(open_rows(camins, reference)) == {"valorar_urgencia"}
    again = http.post(f"/api/incidents/{incident_id}/retry", SUPERVISOR, json={"reason": REASON})
    assert again.status_code == 409


# ------------------------------------------------------------------------------------ who may act
def test_only_the_cases_supervisor_acts_the_caseworker_gets_403_and_raiguer_404(http, camins):
    reference, instance_id = investigation(http)
    work(http, CASEWORKER, reference, "visita_domiciliaria")
    task = task_in_inbox(http, CASEWORKER, reference, "informe_social")
    ghost = 2147483646
    acts = [("suspend", {}), ("resume", {}), ("cancel", {}), ("move", {"skip_task_id": task["id"]}),
            ("move", {"return_to_element": "visita_domiciliaria"})]
    for name, body in acts:
        outsider = act(http, OUTSIDER, instance_id, name, **body)
        assert outsider.status_code == 404, (name, outsider.text)
        assert outsider.json() == act(http, OUTSIDER, ghost, name, **body).json()
        assert outsider.json() == act(http, SUPERVISOR, ghost, name, **body).json()
        assert act(http, CASEWORKER, instance_id, name, **body).status_code == 403, name
        assert act(http, "analista", instance_id, name, **body).status_code == 403, name
    for user, status in ((OUTSIDER, 404), (CASEWORKER, 403)):
        one = http.post(f"/api/tasks/{task['id']}/reassign", user, json={"username": None, "reason": REASON})
        assert one.status_code == status, user
    many = http.post("/api/tasks/reassign", OUTSIDER, json={"task_ids": [task["id"]], "username": None,
                                                            "reason": REASON})
    assert many.json()["items"] == [{"task_id": task["id"], "outcome": "not_found", "detail": "task not found"}]
    # Nothing happened, and the refusals wrote no access-log row.
    for user in (OUTSIDER, CASEWORKER, "analista"):
        for action in ("suspend_instance", "resume_instance", "cancel_instance", "move_token", "reassign_task"):
            assert logged(camins, user, action) == [], (user, action)
    assert instance_of(http, reference, "investigacio")["status"] == "running"
    assert set(open_rows(camins, reference)) == {"informe_social", "informe_educatiu"}

    # The supervisor may do each of them.
    assert act(http, SUPERVISOR, instance_id, "move", return_to_element="visita_domiciliaria").status_code == 200
    work(http, CASEWORKER, reference, "visita_domiciliaria")
    task = task_in_inbox(http, CASEWORKER, reference, "informe_social")
    assert act(http, SUPERVISOR, instance_id, "move", skip_task_id=task["id"]).status_code == 200
    assert act(http, SUPERVISOR, instance_id, "suspend").status_code == 200
    assert act(http, SUPERVISOR, instance_id, "resume").status_code == 200
    assert act(http, SUPERVISOR, instance_id, "cancel").status_code == 200
