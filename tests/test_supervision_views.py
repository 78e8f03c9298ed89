"""Supervisors' read-only views over HTTP: a pathway's overview per element, the instances behind a count,
the workload of people and queues, and one instance's path, history, incidents and variables.

The world (`world`): detection cases in Manacor and Son Servera (comarca Llevant i Migjorn, section IMAS
Llevant) and in Inca (Raiguer, IMAS Ponent) at different tasks, one of each urgent with its one-day task
overdue; and a small process of our own (`prova_supervisio`, two versions) whose review task is due in two
days, starts two legal clocks, and fails at its script on a zero divisor, which opens an incident.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from engine.bundle import BundleFile
from workflows.models import AccessLog

from .scenario import Case

PROCESS = "prova_supervisio"
BUNDLE = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs_supervisio"
  targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="prova_supervisio" /></bpmn:collaboration>
  <bpmn:process id="prova_supervisio" name="{name}" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane" name="Coordinador/a SSCB">
      <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>revisar</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>calcular</bpmn:flowNodeRef><bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="revisar" name="Revisar el cas">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/revisar.form" />
        <spiffworkflow:property name="due_in" value="P2D" />
        <spiffworkflow:property name="clock_start" value="resolution_notice, urgent_diligences" />
      </spiffworkflow:properties></bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:scriptTask id="calcular" name="Calcular"><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
      <bpmn:script>resultat = 10 / divisor</bpmn:script></bpmn:scriptTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="revisar" />
    <bpmn:sequenceFlow id="f2" sourceRef="revisar" targetRef="calcular" />
    <bpmn:sequenceFlow id="f3" sourceRef="calcular" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""
FORM = b"""{"type": "default", "id": "revisar", "schemaVersion": 16, "components": [
  {"type": "number", "id": "Field_divisor", "key": "divisor", "label": "Divisor", "validate": {"required": true}}]}"""
START_DATA = {"nota": "Viu amb l'àvia materna", "detalls": {"germans": 2, "escola": "CEIP Manacor"}}


def _deploy(camins, name: str) -> None:
    camins.deploy_bundle(None, [BundleFile("prova_supervisio.bpmn", BUNDLE.format(name=name).encode()),
                                BundleFile("forms/revisar.form", FORM)])


def _start(http, case: Case) -> int:
    response = http.post("/api/instances", "analista",
                         json={"process_key": PROCESS, "case_reference": case.reference, "data": START_DATA})
    assert response.status_code == 201, response.text
    return response.json()["id"]


class World:
    """References and instance ids of the cases built by `world`."""

    def __init__(self, http, camins, manual_clock):
        self.http = http
        # Detection (deteccio): where each case's token is.
        self.manacor_new = Case(http, camins, "Manacor")                  # registre_notificacio
        self.manacor_registered = Case(http, camins, "Manacor")           # valorar_urgencia
        self.manacor_registered.do("registre_notificacio")
        self.manacor_urgent = Case(http, camins, "Manacor")               # assumir_guarda_provisional, P1D
        self.manacor_urgent.do("registre_notificacio")
        self.manacor_urgent.do("valorar_urgencia", perill_immediat=True)
        self.sonservera_new = Case(http, camins, "Son Servera")           # registre_notificacio
        self.inca_new = Case(http, camins, "Inca")                        # registre_notificacio
        self.inca_urgent = Case(http, camins, "Inca")                     # assumir_guarda_provisional, P1D
        self.inca_urgent.do("registre_notificacio")
        self.inca_urgent.do("valorar_urgencia", perill_immediat=True)
        # The review process: version 1 on a Manacor case, version 2 on a Son Servera and an Inca case.
        _deploy(camins, "Prova de supervisió")
        self.manacor_review = _start(http, self.manacor_new)
        _deploy(camins, "Prova de supervisió (v2)")
        self.sonservera_review = _start(http, self.sonservera_new)
        self.inca_review = _start(http, self.inca_new)
        # The Manacor coordinator submits a zero divisor: the script fails, an incident opens at `calcular`.
        task = self.manacor_new.open_task("revisar")
        failed = http.post(f"/api/tasks/{task.id}/complete", "coord.manacor", json={"data": {"divisor": 0}})
        assert failed.status_code == 409 and failed.json()["element_id"] == "calcular", failed.text
        self.incident = failed.json()["incident_id"]
        # Three days on: the one-day urgent tasks and the two-day reviews are overdue; of the review's clocks,
        # the 48-hour notice is breached and the 15-day diligences are at risk (80 % from day 12) only later.
        manual_clock.advance(timedelta(days=3))


@pytest.fixture
def world(http, camins, manual_clock) -> World:
    return World(http, camins, manual_clock)


def _overview(http, user: str, process: str = PROCESS, query: str = "") -> dict:
    response = http.get(f"/api/supervision/processes/{process}/overview{query}", user)
    assert response.status_code == 200, response.text
    return response.json()


def _counts(overview: dict) -> dict[str, tuple[int, int, int]]:
    """element id → (instances there, instances with an incident there, overdue tasks there)."""
    return {e["element_id"]: (e["instances"], e["incidents"], e["overdue_tasks"]) for e in overview["elements"]}


def _instances(http, user: str, query: str = "", process: str = PROCESS) -> dict:
    response = http.get(f"/api/supervision/processes/{process}/instances{query}", user)
    assert response.status_code == 200, response.text
    return response.json()


def _log_rows(camins, username: str, action: str) -> list[str]:
    with camins.db.read() as session:
        return list(session.scalars(select(AccessLog.case_reference).where(AccessLog.username == username,
                                                                           AccessLog.action == action)
                                    .order_by(AccessLog.id)))


# ----------------------------------------------------------------------------------- overview
def test_the_overview_counts_tokens_incidents_and_overdue_tasks_per_element_in_the_supervisors_scope(world):
    http = world.http
    manacor = _overview(http, "coord.manacor")
    assert _counts(manacor) == {"revisar": (1, 0, 1), "calcular": (0, 1, 0)}
    assert manacor["totals"] == {"instances": 1, "instances_with_incidents": 1, "overdue_tasks": 1}
    assert [d["version"] for d in manacor["definitions"]] == [1, 2]
    assert {e["element_id"]: e["name"] for e in manacor["elements"]} == {"revisar": "Revisar el cas",
                                                                         "calcular": "Calcular"}
    # The section head of IMAS Llevant sees Manacor and Son Servera; Inca is IMAS Ponent's.
    llevant = _overview(http, "cap.llevant")
    assert _counts(llevant) == {"revisar": (2, 0, 2), "calcular": (0, 1, 0)}
    assert _overview(http, "cap.ponent")["totals"] == {"instances": 1, "instances_with_incidents": 0,
                                                       "overdue_tasks": 1}
    detection = _overview(http, "coord.manacor", "deteccio")
    assert _counts(detection) == {"registre_notificacio": (1, 0, 0), "valorar_urgencia": (1, 0, 0),
                                  "assumir_guarda_provisional": (1, 0, 1)}
    assert detection["totals"]["instances"] == 3


def test_the_overview_shows_the_legal_clocks_at_risk_and_breached_of_the_cases_concerned(world, manual_clock):
    http = world.http
    clocks = _overview(http, "cap.llevant")["clocks"]
    assert (clocks["at_risk"], clocks["breached"]) == (0, 2)
    assert [(c["clock_id"], c["breached"], c["article"]) for c in clocks["by_clock"]] == [
        ("resolution_notice", 2, "Llei 9/2019 art. 132.1; CC art. 172.1")]
    manual_clock.advance(timedelta(days=10))  # day 13 of 15: the diligences are at risk
    clocks = _overview(http, "coord.manacor")["clocks"]
    assert (clocks["at_risk"], clocks["breached"]) == (1, 1)
    assert {c["clock_id"]: (c["at_risk"], c["breached"]) for c in clocks["by_clock"]} == {
        "resolution_notice": (0, 1), "urgent_diligences": (1, 0)}


def test_the_overview_by_version_and_territory_filters_narrow_and_never_widen(world):
    http = world.http
    assert _counts(_overview(http, "cap.llevant", query="?version=1")) == {"revisar": (1, 0, 1),
                                                                         "calcular": (0, 1, 0)}
    only_v2 = _overview(http, "cap.llevant", query="?version=2")
    assert _counts(only_v2) == {"revisar": (1, 0, 1)}
    assert [d["name"] for d in only_v2["definitions"]] == ["Prova de supervisió (v2)"]
    assert _counts(_overview(http, "cap.llevant", query="?municipality=Son Servera")) == {"revisar": (1, 0, 1)}
    assert _counts(_overview(http, "cap.llevant", query="?comarca=llevant-i-migjorn&section=IMAS Llevant")) == {
        "revisar": (2, 0, 2), "calcular": (0, 1, 0)}
    # Outside the scope a filter gives nothing, not the other territory's data.
    for query in ("?municipality=Inca", "?comarca=Raiguer", "?section=IMAS Ponent"):
        outside = _overview(http, "cap.llevant", query=query)
        assert outside["elements"] == [] and outside["totals"]["instances"] == 0, query
        assert outside["clocks"] == {"at_risk": 0, "breached": 0, "by_clock": []}, query


def test_analysts_get_the_counts_of_every_territory_without_a_case_reference(world, camins):
    http = world.http
    counts = _overview(http, "analista")
    assert _counts(counts) == {"revisar": (3, 0, 3), "calcular": (0, 1, 0)}
    assert _counts(_overview(http, "analista", query="?comarca=Raiguer")) == {"revisar": (1, 0, 1)}
    body = http.get(f"/api/supervision/processes/{PROCESS}/overview", "analista").text
    assert "EXP-" not in body
    assert _log_rows(camins, "analista", "list_instances") == []
    # The instances behind the counts name cases: for supervisors only.
    assert http.get(f"/api/supervision/processes/{PROCESS}/instances", "analista").status_code == 403
    assert http.get("/api/supervision/workload", "analista").status_code == 403


@pytest.mark.parametrize("user", ["ts.manacor", "adm.manacor", "intake.imas", "auditor", "notificant.escola"])
def test_non_supervisors_are_refused_every_view(world, user):
    for path in (f"/api/supervision/processes/{PROCESS}/overview", f"/api/supervision/processes/{PROCESS}/instances",
                 "/api/supervision/workload"):
        response = world.http.get(path, user)
        assert response.status_code == 403, (path, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")


def test_bad_filters_are_422_naming_the_field_and_unknown_processes_404(world):
    http = world.http
    base = f"/api/supervision/processes/{PROCESS}"
    for path, field in [(f"{base}/instances?per_page=0", "per_page"), (f"{base}/instances?page=0", "page"),
                        (f"{base}/overview?municipality=Atlantis", "municipality"),
                        (f"{base}/overview?municipality=Raiguer", "municipality"),  # a comarca, not a town
                        (f"{base}/instances?comarca=Manacor", "comarca"),
                        ("/api/supervision/workload?section=Llevant i Migjorn", "section"),
                        (f"{base}/overview?version=7", "version"), (f"{base}/overview?version=zero", "version"),
                        (f"{base}/instances?incident=maybe", "incident"), (f"{base}/instances?element=", "element")]:
        response = http.get(path, "cap.llevant")
        assert response.status_code == 422, (path, response.text)
        assert field in response.json()["errors"], (path, response.json())
    missing = http.get("/api/supervision/processes/no_such_process/overview", "cap.llevant")
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/problem+json")
    assert http.get("/api/supervision/processes/no_such_process/instances", "cap.llevant").status_code == 404


# ---------------------------------------------------------------------------------- instances
def test_the_instances_behind_each_count_are_listed_and_each_case_shown_is_logged(world, camins):
    http = world.http
    page = _instances(http, "coord.manacor")
    assert page["total"] == 1
    [item] = page["items"]
    assert item["id"] == world.manacor_review and item["case_reference"] == world.manacor_new.reference
    assert (item["version"], item["active_elements"], item["open_incidents"], item["overdue_tasks"]) == (
        1, ["revisar"], 1, 1)
    assert _log_rows(camins, "coord.manacor", "list_instances") == [world.manacor_new.reference]

    def ids(user, query):
        return [i["id"] for i in _instances(http, user, query)["items"]]

    assert ids("cap.llevant", "") == [world.manacor_review, world.sonservera_review]  # oldest first
    assert ids("cap.llevant", "?element=revisar") == [world.manacor_review, world.sonservera_review]
    assert ids("cap.llevant", "?element=calcular") == []  # no token there...
    assert ids("cap.llevant", "?element=calcular&incident=true") == [world.manacor_review]  # ...but an incident
    assert ids("cap.llevant", "?incident=false") == [world.sonservera_review]
    assert ids("cap.llevant", "?element=revisar&overdue=true") == [world.manacor_review, world.sonservera_review]
    assert ids("cap.llevant", "?version=2") == [world.sonservera_review]
    assert ids("cap.llevant", "?municipality=Son Servera") == [world.sonservera_review]
    assert ids("cap.llevant", "?municipality=Inca") == []
    second = _instances(http, "cap.llevant", "?per_page=1&page=2")
    assert second["total"] == 2 and [i["id"] for i in second["items"]] == [world.sonservera_review]
    detection = _instances(http, "coord.manacor", "?element=assumir_guarda_provisional&overdue=true", "deteccio")
    assert [i["case_reference"] for i in detection["items"]] == [world.manacor_urgent.reference]


# ----------------------------------------------------------------------------------- workload
def test_the_workload_counts_open_tasks_per_professional_and_per_role_queue(world):
    http = world.http
    claimed = http.post(f"/api/tasks/{world.manacor_registered.open_task('valorar_urgencia').id}/claim",
                        "ts.manacor")
    assert claimed.status_code == 200, claimed.text
    response = http.get("/api/supervision/workload", "coord.manacor")
    assert response.status_code == 200, response.text
    load = response.json()
    people = {p["username"]: (p["open_tasks"], p["overdue_tasks"]) for p in load["professionals"]}
    # The coordinator kept the review whose submission waits in the incident (overdue since day 2).
    assert people == {"coord.manacor": (1, 1), "ts.manacor": (1, 0)}
    queues = {(q["role"], q["org_unit"]): (q["open_tasks"], q["overdue_tasks"]) for q in load["role_queues"]}
    assert queues == {("sscb_admin", "manacor"): (1, 0), ("imas_intake", "imas"): (1, 1)}
    assert load["role_queues"][0]["role"] == "imas_intake"  # the most overdue first
    assert load["role_queues"][0]["org_unit_name"] == "IMAS"
    # The section head of IMAS Llevant sees Son Servera's queues too; filters narrow to one town.
    llevant = http.get("/api/supervision/workload", "cap.llevant").json()
    llevant_queues = {(q["role"], q["org_unit"]): q["open_tasks"] for q in llevant["role_queues"]}
    assert llevant_queues == {("sscb_admin", "manacor"): 1, ("sscb_admin", "son-servera"): 1,
                              ("sscb_coordinator", "son-servera"): 1, ("imas_intake", "imas"): 1}
    son_servera = http.get("/api/supervision/workload?municipality=Son Servera", "cap.llevant").json()
    assert son_servera["professionals"] == []
    assert {q["org_unit"] for q in son_servera["role_queues"]} == {"son-servera"}


# ------------------------------------------------------------------------------- one instance
def test_one_instance_shows_its_path_position_history_incidents_and_variables(world, camins):
    response = world.http.get(f"/api/instances/{world.manacor_review}", "coord.manacor")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["active_elements"] == ["revisar"]
    assert view["completed_elements"] == ["inici"]
    assert view["taken_flows"] == ["f1"]
    events = [(h["event"], h["element_id"], h["actor"]) for h in view["history"]]
    assert events[0] == ("instance_started", None, "analista")
    assert ("task_ready", "revisar", "analista") in events
    assert ("incident_opened", "calcular", "coord.manacor") in events
    assert all(h["at"] for h in view["history"])
    [incident] = view["incidents"]
    assert (incident["id"], incident["element_id"], incident["error_type"], incident["status"]) == (
        world.incident, "calcular", "WorkflowTaskException", "open")
    assert "division by zero" in incident["message"]
    assert view["variables_redacted"] is False
    assert view["variables"]["nota"] == START_DATA["nota"]
    assert view["variables"]["detalls"] == START_DATA["detalls"]
    assert view["variables"]["data_naixement"] == "2015-04-01"  # from the case, for the timers of age
    assert world.manacor_new.reference in _log_rows(camins, "coord.manacor", "read_instance")


def test_an_analyst_sees_the_shape_of_the_variables_but_not_their_values(world, camins):
    view = world.http.get(f"/api/instances/{world.manacor_review}", "analista").json()
    assert view["variables_redacted"] is True
    assert view["variables"]["nota"] == "[redactat]"
    assert view["variables"]["detalls"] == {"germans": "[redactat]", "escola": "[redactat]"}
    assert view["variables"]["data_naixement"] == "[redactat]"
    assert "Viu amb" not in json_text(view) and "2015-04-01" not in json_text(view)
    # The path and the incident are what an analyst needs to mend the diagram: those stay.
    assert view["active_elements"] == ["revisar"] and view["incidents"][0]["element_id"] == "calcular"
    assert world.manacor_new.reference in _log_rows(camins, "analista", "read_instance")


def test_an_analyst_does_not_read_the_reasons_supervisors_wrote_in_the_history(world):
    reason = "La mare ha demanat ajornar la visita."
    response = world.http.post(f"/api/instances/{world.manacor_review}/suspend", "coord.manacor",
                               json={"reason": reason})
    assert response.status_code == 200, response.text
    supervisor = world.http.get(f"/api/instances/{world.manacor_review}", "coord.manacor").json()
    [suspended] = [h for h in supervisor["history"] if h["event"] == "instance_suspended"]
    assert suspended["detail"]["reason"] == reason
    analyst = world.http.get(f"/api/instances/{world.manacor_review}", "analista").json()
    [suspended] = [h for h in analyst["history"] if h["event"] == "instance_suspended"]
    assert suspended["detail"]["reason"] == "[redactat]" and suspended["actor"] == "coord.manacor"
    assert "La mare" not in json_text(analyst)


def json_text(value) -> str:
    import json
    return json.dumps(value, ensure_ascii=False)


# ------------------------------------------------------------------- Raiguer against Llevant
def test_a_raiguer_supervisor_neither_sees_nor_acts_on_a_llevant_i_migjorn_case(world, camins):
    http = world.http
    manacor_refs = {world.manacor_new.reference, world.manacor_registered.reference,
                    world.manacor_urgent.reference}
    # The overview counts only Inca's cases, whatever the filter asks for.
    assert _counts(_overview(http, "coord.inca")) == {"revisar": (1, 0, 1)}
    assert _counts(_overview(http, "coord.inca", "deteccio")) == {"registre_notificacio": (1, 0, 0),
                                                                  "assumir_guarda_provisional": (1, 0, 1)}
    for query in ("?municipality=Manacor", "?comarca=Llevant i Migjorn", "?section=IMAS Llevant"):
        assert _overview(http, "coord.inca", query=query)["elements"] == [], query
        assert _overview(http, "coord.inca", "deteccio", query)["totals"]["instances"] == 0, query
    # The instance lists show Inca's instances only.
    shown = {i["case_reference"] for process in (PROCESS, "deteccio")
             for i in _instances(http, "coord.inca", process=process)["items"]}
    assert shown == {world.inca_new.reference, world.inca_urgent.reference}
    assert _instances(http, "coord.inca", "?municipality=Manacor")["total"] == 0
    assert not manacor_refs & set(_log_rows(camins, "coord.inca", "list_instances"))
    # The workload holds Inca's tasks only.
    load = http.get("/api/supervision/workload", "coord.inca").json()
    assert {q["org_unit"] for q in load["role_queues"]} == {"inca", "imas"}
    assert load["professionals"] == []
    assert http.get("/api/supervision/workload?municipality=Manacor", "coord.inca").json() == {
        "professionals": [], "role_queues": []}
    # The Manacor instance answers 404 word for word like one that never existed; acting on it is refused.
    hidden = http.get(f"/api/instances/{world.manacor_review}", "coord.inca")
    ghost = http.get("/api/instances/2147483646", "coord.inca")
    assert hidden.status_code == 404 and hidden.json() == ghost.json()
    assert http.post(f"/api/incidents/{world.incident}/retry", "coord.inca").status_code == 404
    task = world.manacor_new.open_task("revisar")
    assert http.post(f"/api/tasks/{task.id}/claim", "coord.inca").status_code == 404
    assert http.get(f"/api/tasks/{task.id}", "coord.inca").status_code == 404
    assert _log_rows(camins, "coord.inca", "read_instance") == []
