"""Analysts: versions of a pathway (list, diff, retire) and the migration of running instances, over HTTP.

Version 1 of a small pathway is visit → report → close. Version 2 renames the report (so the instances
that completed it cannot move), adds a coordinator's review after it and renames the closing task.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine.bundle import BundleFile, bundles_from_directory
from engine.errors import NotFound
from engine.models import Definition, HistoryEvent, HumanTask, Instance, Timer
from tasks.worker import TimerWorker
from workflows.pathways import BUNDLED_DIAGRAMS

from .pathway_driver import notify, to_imas_decision

FORM = b"""{"type": "default", "id": "Form_nota", "schemaVersion": 16, "components": [
  {"type": "textarea", "key": "nota", "label": "Nota", "id": "Field_nota", "validate": {"maxLength": 200}}]}"""
WITH_FORM = ('<bpmn:extensionElements><spiffworkflow:properties><spiffworkflow:property name="form" '
             'value="forms/nota.form" /></spiffworkflow:properties></bpmn:extensionElements>')

V1 = dict(informe="Informe", revisio="", tancar="Tancar", after_informe="tancar")
V2 = dict(informe="Informe social", tancar="Tancar el cas", after_informe="revisar",
          revisio="""
    <bpmn:userTask id="revisar" name="Revisar l'informe">""" + WITH_FORM + """<bpmn:incoming>f_informe</bpmn:incoming>
      <bpmn:outgoing>f_revisio</bpmn:outgoing></bpmn:userTask>
    <bpmn:sequenceFlow id="f_revisio" sourceRef="revisar" targetRef="tancar" />""")

DIAGRAM = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="prova_versions" /></bpmn:collaboration>
  <bpmn:process id="prova_versions" name="Prova de versions" isExecutable="true">
    <bpmn:laneSet id="lanes">
      <bpmn:lane id="lane_ts" name="Treballador/a social"><bpmn:flowNodeRef>start</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>visita</bpmn:flowNodeRef><bpmn:flowNodeRef>informe</bpmn:flowNodeRef>
        <bpmn:flowNodeRef>tancar</bpmn:flowNodeRef><bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane>
      <bpmn:lane id="lane_coord" name="Coordinador/a SSCB"><bpmn:flowNodeRef>revisar</bpmn:flowNodeRef></bpmn:lane>
    </bpmn:laneSet>
    <bpmn:startEvent id="start" name="Inici"><bpmn:outgoing>f_start</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="visita" name="Visita">{form}<bpmn:incoming>f_start</bpmn:incoming>
      <bpmn:outgoing>f_visita</bpmn:outgoing></bpmn:userTask>
    <bpmn:userTask id="informe" name="{informe}">{form}<bpmn:incoming>f_visita</bpmn:incoming>
      <bpmn:outgoing>f_informe</bpmn:outgoing></bpmn:userTask>{revisio}
    <bpmn:userTask id="tancar" name="{tancar}">{form}<bpmn:incoming>f_revisio</bpmn:incoming>
      <bpmn:outgoing>f_tancar</bpmn:outgoing></bpmn:userTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f_tancar</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f_start" sourceRef="start" targetRef="visita" />
    <bpmn:sequenceFlow id="f_visita" sourceRef="visita" targetRef="informe" />
    <bpmn:sequenceFlow id="f_informe" sourceRef="informe" targetRef="{after_informe}" />
    <bpmn:sequenceFlow id="f_tancar" sourceRef="tancar" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""
KEY = "prova_versions"
WORKER = "ts.sonservera"


def diagram(version: dict) -> str:
    text = DIAGRAM.format(form=WITH_FORM, **version)
    if not version["revisio"]:  # version 1: the report leads straight to closing, through the flow f_revisio
        text = text.replace('id="f_informe" sourceRef="informe" targetRef="tancar"',
                            'id="f_revisio" sourceRef="informe" targetRef="tancar"')
        text = text.replace("<bpmn:outgoing>f_informe</bpmn:outgoing>", "<bpmn:outgoing>f_revisio</bpmn:outgoing>")
        text = text.replace("<bpmn:flowNodeRef>revisar</bpmn:flowNodeRef>", "")
        text = text.replace('<bpmn:lane id="lane_coord" name="Coordinador/a SSCB"></bpmn:lane>', "")
    return text


def deploy(http, version: dict) -> dict:
    response = http.post("/api/definitions", "analista",
                         files=[("files", (f"{KEY}.bpmn", diagram(version).encode(), "application/xml")),
                                ("files", ("forms/nota.form", FORM, "application/json"))])
    assert response.status_code == 201, response.text
    return response.json()


def start(http) -> tuple[int, str]:
    reference = notify(http)
    response = http.post("/api/instances", "analista", json={"process_key": KEY, "case_reference": reference,
                                                             "data": {}})
    assert response.status_code == 201, response.text
    return response.json()["id"], reference


def open_task(http, reference: str, element_id: str, user: str = WORKER) -> dict:
    tasks = [t for t in http.get(f"/api/tasks?case={reference}&pathway={KEY}", user).json()["items"]
             if t["element_id"] == element_id]
    assert len(tasks) == 1, (element_id, tasks)
    return tasks[0]


def complete(http, reference: str, element_id: str, user: str = WORKER) -> None:
    task = open_task(http, reference, element_id, user)
    response = http.post(f"/api/tasks/{task['id']}/complete", user, json={"data": {}})
    assert response.status_code == 200, response.text


def instance(http, instance_id: int) -> dict:
    response = http.get(f"/api/instances/{instance_id}", "analista")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def fleet(http):
    """Version 1 deployed, four instances at different points, then version 2 deployed."""
    deploy(http, V1)
    at_visit, at_visit_ref = start(http)
    at_report, at_report_ref = start(http)
    complete(http, at_report_ref, "visita")
    at_close, at_close_ref = start(http)
    for element in ("visita", "informe"):
        complete(http, at_close_ref, element)
    finished, finished_ref = start(http)
    for element in ("visita", "informe", "tancar"):
        complete(http, finished_ref, element)
    assert instance(http, finished)["status"] == "completed"
    assert deploy(http, V2)["version"] == 2
    return {"at_visit": (at_visit, at_visit_ref), "at_report": (at_report, at_report_ref),
            "at_close": (at_close, at_close_ref), "finished": (finished, finished_ref)}


def test_versions_list_shows_status_deployment_and_running_instances(http, fleet):
    response = http.get(f"/api/definitions/{KEY}/versions", "analista")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(v["version"], v["status"], v["running_instances"]) for v in items] == [(2, "active", 0),
                                                                                     (1, "active", 3)]
    assert all(v["deployed_by"] == "analista" and len(v["content_hash"]) == 64 for v in items)
    assert items[0]["content_hash"] != items[1]["content_hash"]
    assert items[1]["retired_at"] is None and items[1]["scenarios"] is None


def test_diff_names_added_removed_and_changed_elements_and_flows(http, fleet):
    response = http.get(f"/api/definitions/{KEY}/diff?from=1&to=2", "analista")
    assert response.status_code == 200, response.text
    diff = response.json()
    elements = diff["elements"]
    assert [(e["id"], e["type"], e["lane"]) for e in elements["added"]] == [
        ("revisar", "UserTask", "Coordinador/a SSCB")]
    assert elements["removed"] == []
    changed = {e["id"]: e["changes"] for e in elements["changed"]}
    assert changed == {"informe": ["name", "outgoing flows"], "tancar": ["name", "incoming flows"]}
    flows = diff["sequence_flows"]
    assert [(f["id"], f["source"], f["target"]) for f in flows["added"]] == [("f_informe", "informe", "revisar")]
    assert flows["changed"] == [{"id": "f_revisio", "source": "revisar", "target": "tancar", "name": None,
                                 "condition": None, "changes": ["source"]}]
    assert diff["files"]["changed"] == [{"name": f"{KEY}.bpmn", "changes": ["content"]}]
    # And backwards: what version 1 lacks.
    back = http.get(f"/api/definitions/{KEY}/diff?from=2&to=1", "analista").json()
    assert [e["id"] for e in back["elements"]["removed"]] == ["revisar"]


def test_preview_says_which_can_move_and_why_the_others_cannot_and_writes_nothing(http, camins, fleet):
    with camins.db.read() as session:
        before = [(i.id, i.version, i.definition_id) for i in session.scalars(select(Instance).order_by(Instance.id))]
    response = http.post("/api/migrations/preview", "analista",
                         json={"process_key": KEY, "from_version": 1, "to_version": 2})
    assert response.status_code == 200, response.text
    report = response.json()
    by_id = {i["instance_id"]: i for i in report["instances"]}
    # By default: the unfinished instances of version 1.
    assert set(by_id) == {fleet["at_visit"][0], fleet["at_report"][0], fleet["at_close"][0]}
    assert by_id[fleet["at_visit"][0]]["can_migrate"] and by_id[fleet["at_report"][0]]["can_migrate"]
    refused = by_id[fleet["at_close"][0]]
    assert not refused["can_migrate"] and refused["case_reference"] == fleet["at_close"][1]
    assert refused["reasons"] == ["'Informe' (informe) is completed and version 2 changed its name, outgoing flows"]
    assert (report["can_migrate"], report["refused"], report["migrated"]) == (2, 1, 0)
    # A finished instance, asked for by id, is refused with its reason.
    finished = http.post("/api/migrations/preview", "analista",
                         json={"process_key": KEY, "from_version": 1, "to_version": 2,
                               "instance_ids": [fleet["finished"][0]]}).json()["instances"]
    assert finished[0]["reasons"] == ["the instance is completed: only unfinished instances move"]
    with camins.db.read() as session:
        after = [(i.id, i.version, i.definition_id) for i in session.scalars(select(Instance).order_by(Instance.id))]
        assert session.scalar(select(HistoryEvent.id).where(HistoryEvent.event == "instance_migrated")) is None
    assert after == before


def test_batch_migration_moves_some_refuses_others_with_reasons_and_moved_ones_continue_on_v2(http, camins,
                                                                                             fleet):
    at_visit, at_visit_ref = fleet["at_visit"]
    at_report, at_report_ref = fleet["at_report"]
    at_close, at_close_ref = fleet["at_close"]
    report_task = open_task(http, at_report_ref, "informe")
    response = http.post("/api/migrations", "analista",
                         json={"process_key": KEY, "from_version": 1, "to_version": 2, "reason": "Afegir la revisió",
                               "instance_ids": [at_visit, at_report, at_close, fleet["finished"][0]]})
    assert response.status_code == 200, response.text
    report = response.json()
    outcome = {i["instance_id"]: i for i in report["instances"]}
    assert outcome[at_visit]["migrated"] and outcome[at_visit]["version"] == 2
    assert outcome[at_report]["migrated"] and outcome[at_report]["reasons"] == []
    assert not outcome[at_close]["migrated"] and outcome[at_close]["version"] == 1
    assert "'Informe' (informe) is completed" in outcome[at_close]["reasons"][0]
    assert outcome[fleet["finished"][0]]["reasons"] == ["the instance is completed: only unfinished instances move"]
    assert (report["migrated"], report["refused"], report["unfinished_on_from_version"]) == (2, 2, 1)

    # The open report task kept its id and its place in the inbox, with version 2's name.
    moved_task = open_task(http, at_report_ref, "informe")
    assert moved_task["id"] == report_task["id"] and moved_task["name"] == "Informe social"
    # The moved ones continue on version 2: after the report comes the coordinator's review, new in version 2.
    complete(http, at_report_ref, "informe")
    review = open_task(http, at_report_ref, "revisar", "coord.sonservera")
    assert review["role"] == "sscb_coordinator" and review["org_unit"] == "son-servera"
    complete(http, at_report_ref, "revisar", "coord.sonservera")
    assert open_task(http, at_report_ref, "tancar")["name"] == "Tancar el cas"
    complete(http, at_visit_ref, "visita")
    assert open_task(http, at_visit_ref, "informe")["name"] == "Informe social"
    assert instance(http, at_visit)["active_elements"] == ["informe"]
    # The refused one goes on, untouched, on version 1: closing follows the report directly.
    complete(http, at_close_ref, "tancar")
    assert instance(http, at_close)["status"] == "completed"

    with camins.db.read() as session:
        migrated = session.scalars(select(HistoryEvent).where(HistoryEvent.event == "instance_migrated")
                                   .order_by(HistoryEvent.instance_id)).all()
        assert [(h.instance_id, h.actor, h.detail) for h in migrated] == [
            (i, "analista", {"from_version": 1, "to_version": 2, "reason": "Afegir la revisió"})
            for i in sorted((at_visit, at_report))]
        changed = session.scalar(select(HistoryEvent).where(HistoryEvent.event == "task_changed",
                                                            HistoryEvent.instance_id == at_report))
        assert changed.detail["changes"] == ["name"]
        versions = dict(session.execute(select(Instance.id, Instance.version)
                                        .where(Instance.id.in_((at_visit, at_report)))).all())
        assert session.scalar(select(HumanTask.name).where(HumanTask.id == report_task["id"])) == "Informe social"
    case = http.get(f"/api/cases/{at_report_ref}", "coord.sonservera").json()
    assert "instance_migrated" in [h["event"] for h in case["history"]]
    assert versions  # the version counters moved on with each step


def test_retired_version_starts_nothing_new_while_its_instances_go_on(http, fleet):
    at_visit, at_visit_ref = fleet["at_visit"]
    retired = http.post(f"/api/definitions/{KEY}/versions/1/retire", "analista", json={"reason": "Substituïda"})
    assert retired.status_code == 200, retired.text
    assert (retired.json()["status"], retired.json()["retired_by"], retired.json()["retire_reason"]) == \
        ("retired", "analista", "Substituïda")
    again = http.post(f"/api/definitions/{KEY}/versions/1/retire", "analista", json={"reason": "Un altre cop"})
    assert again.status_code == 409 and "retired already" in again.json()["detail"]
    # New starts use version 2; the running instance of version 1 goes on.
    new_id, _ = start(http)
    assert instance(http, new_id)["version"] == 2
    complete(http, at_visit_ref, "visita")
    assert instance(http, at_visit)["version"] == 1 and instance(http, at_visit)["active_elements"] == ["informe"]
    assert http.post(f"/api/definitions/{KEY}/versions/2/retire", "analista",
                     json={"reason": "Pathway retirat"}).status_code == 200
    reference = notify(http)
    refused = http.post("/api/instances", "analista", json={"process_key": KEY, "case_reference": reference,
                                                            "data": {}})
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == f"every version of process '{KEY}' is retired: deploy a new version to start it"
    listed = http.get(f"/api/definitions/{KEY}/versions", "analista").json()["items"]
    assert [(v["version"], v["status"]) for v in listed] == [(2, "retired"), (1, "retired")]


@pytest.mark.parametrize("user", ["coord.sonservera", "cap.llevant", "ts.sonservera", "notificant.escola",
                                  "auditor"])
def test_only_analysts_see_versions_and_migrate(http, fleet, user):
    body = {"process_key": KEY, "from_version": 1, "to_version": 2}
    for method, path, kwargs in [
            ("GET", f"/api/definitions/{KEY}/versions", {}),
            ("GET", f"/api/definitions/{KEY}/diff?from=1&to=2", {}),
            ("POST", f"/api/definitions/{KEY}/versions/1/retire", {"json": {"reason": "no"}}),
            ("POST", "/api/migrations/preview", {"json": body}),
            ("POST", "/api/migrations", {"json": {**body, "reason": "no"}})]:
        response = http.call(method, path, user, **kwargs)
        assert response.status_code == 403, (path, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")


@pytest.mark.parametrize("body, status, field, message", [
    ({"process_key": KEY, "from_version": 1, "to_version": 1}, 422, "to_version", "must differ from from_version"),
    ({"process_key": "no_such", "from_version": 1, "to_version": 2}, 404, None, "no deployed process 'no_such'"),
    ({"process_key": KEY, "from_version": 1, "to_version": 9}, 404, None, f"process '{KEY}' has no version 9"),
    ({"process_key": KEY, "from_version": 1, "to_version": 2, "instance_ids": list(range(1, 502))}, 422,
     "instance_ids", "Length must be between 1 and 500."),
    ({"process_key": KEY, "from_version": 1, "to_version": 2, "instance_ids": [1]}, 422, "instance_ids",
     f"not instances of process '{KEY}': 1"),
    ({"process_key": KEY, "from_version": 1, "to_version": 2, "instance_ids": ["x"]}, 422, "instance_ids.0",
     "Not a valid integer."),
    ({"process_key": KEY, "from_version": 0, "to_version": 2}, 422, "from_version", None),
])
def test_bad_migration_requests_are_clear_4xx_and_write_nothing(http, camins, fleet, body, status, field, message):
    for path, extra in (("/api/migrations/preview", {}), ("/api/migrations", {"reason": "prova"})):
        response = http.post(path, "analista", json={**body, **extra})
        assert response.status_code == status, response.text
        problem = response.json()
        assert response.headers["Content-Type"].startswith("application/problem+json")
        if field:
            assert field in problem["errors"], problem
            if message:
                assert message in str(problem["errors"][field]), problem
        else:
            assert problem["detail"] == message
    with camins.db.read() as session:
        assert set(session.scalars(select(Instance.definition_id).where(Instance.process_key == KEY))) == {
            session.scalar(select(Instance.definition_id).where(Instance.id == fleet["finished"][0]))}


def test_a_migration_needs_a_reason_and_retiring_unknown_versions_is_404(http, fleet):
    blank = http.post("/api/migrations", "analista", json={"process_key": KEY, "from_version": 1, "to_version": 2,
                                                           "reason": "   "})
    assert blank.status_code == 422 and blank.json()["errors"] == {"reason": ["say why: it is recorded"]}
    for version in (7, 2**31, 10**15):
        missing = http.post(f"/api/definitions/{KEY}/versions/{version}/retire", "analista", json={"reason": "x"})
        assert missing.status_code == 404 and missing.json()["detail"] == f"process '{KEY}' has no version {version}"
    assert http.post("/api/definitions/no_such/versions/1/retire", "analista",
                     json={"reason": "x"}).status_code == 404
    assert http.get("/api/definitions/no_such/versions", "analista").status_code == 404
    assert http.get(f"/api/definitions/{KEY}/diff?from=1", "analista").status_code == 422


# ------------------------------------------------------------------ a bundled pathway: timers and messages
REVIEW_V2 = "Termini vençut: revisar la derivació"


def investigacio_v2(camins) -> int:
    """The assessment pathway with the overdue review renamed: a change after the 20-day timer."""
    files = next(b for b in bundles_from_directory(BUNDLED_DIAGRAMS) if b[0].name == "investigacio.bpmn")
    changed = [BundleFile(f.name, f.content.replace("Termini de 20 dies vençut: revisar".encode(), REVIEW_V2.encode()))
               for f in files]
    definition, created = camins.engine.deploy(changed, "analista")
    assert created
    return definition.version


def test_a_waiting_timer_keeps_its_due_time_when_its_instance_moves(http, camins, manual_clock):
    reference = to_imas_decision(http)
    with camins.db.read() as session:
        instance_id = session.scalar(select(Instance.id).where(Instance.business_key == reference,
                                                               Instance.process_key == "investigacio"))
        timer_before = session.scalars(select(Timer).where(Timer.instance_id == instance_id)).one()
        due, timer_id = timer_before.due_at, timer_before.id
    manual_clock.advance(timedelta(days=5))
    assert investigacio_v2(camins) == 2
    response = http.post("/api/migrations", "analista", json={
        "process_key": "investigacio", "from_version": 1, "to_version": 2, "reason": "Nom de la revisió",
        "instance_ids": [instance_id]})
    assert response.status_code == 200, response.text
    assert response.json()["instances"][0]["migrated"], response.json()
    with camins.db.read() as session:
        timer = session.scalars(select(Timer).where(Timer.instance_id == instance_id)).one()
        assert (timer.id, timer.due_at) == (timer_id, due)  # not restarted: 15 days left, not 20
    manual_clock.advance(timedelta(days=15, minutes=1))
    assert TimerWorker(camins.engine, owner="worker-a").run_once() == 1
    with camins.db.read() as session:
        review = session.scalars(select(HumanTask).where(HumanTask.instance_id == instance_id,
                                                         HumanTask.element_id == "revisar_termini_vencut")).one()
        assert (review.name, review.role, review.state) == (REVIEW_V2, "imas_section_head", "open")
        assert session.get(Instance, instance_id).definition_id == session.scalar(
            select(Definition.id).where(Definition.process_key == "investigacio", Definition.version == 2))


def test_message_starts_skip_retired_versions(http, camins):
    assert investigacio_v2(camins) == 2
    assert http.post("/api/definitions/investigacio/versions/2/retire", "analista",
                     json={"reason": "Error al nom"}).status_code == 200
    reference = notify(http)
    [started] = camins.engine.deliver_message("investigacio_iniciada", reference, {}, None)
    with camins.db.read() as session:
        assert session.get(Instance, started).definition.version == 1  # the newest active one
    assert http.post("/api/definitions/investigacio/versions/1/retire", "analista",
                     json={"reason": "Tot retirat"}).status_code == 200
    other = notify(http)
    with pytest.raises(NotFound):
        camins.engine.deliver_message("investigacio_iniciada", other, {}, None)


def test_camins_diff_prints_what_changed(http, fleet, database_url):
    from .test_cli import camins as run_camins

    result = run_camins("diff", KEY, "1", "2", url=database_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{KEY}: version 1 → 2"
    assert "  + revisar (UserTask 'Revisar l'informe', lane Coordinador/a SSCB)" in lines
    assert "  ~ informe (UserTask 'Informe social', lane Treballador/a social): name, outgoing flows" in lines
    assert "  + f_informe (informe → revisar)" in lines and "  ~ f_revisio (revisar → tancar): source" in lines
    missing = run_camins("diff", KEY, "1", "9", url=database_url)
    assert missing.returncode == 1 and f"process '{KEY}' has no version 9" in missing.stderr
