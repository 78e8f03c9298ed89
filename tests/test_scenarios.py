"""Scenario tests beside a diagram (issue 6): the file format, the runner, `camins test` and the deploy gate.

Scenarios run on throwaway databases of their own, so most tests here need no database fixture; the
deploy gate is tested over HTTP on both databases, as analysts use it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.bundle import bundles_from_directory
from engine.models import Definition, ScenarioVerdict
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.scenarios import drafts_from_path, run_draft

from .test_cli import camins as run_cli

PATHWAYS = ("deteccio", "investigacio", "intervencio", "proteccio", "reunificacio", "acolliment", "adopcio",
            "emancipacio")

# Investigation of a moderate case, as the social services would work it.
MODERATE = """
defaults:
  case: {municipality: Manacor, birth_date: 2015-04-01}
  start: {message: investigacio_iniciada}
scenarios:
  - name: moderada
    steps:
      - complete: visita_domiciliaria
      - complete: informe_social
      - complete: informe_educatiu
      - complete: valoracio_gravetat
        data: {cura_fisica: 2, seguretat: 1, necessitats_emocionals: 2, educacio: 1, maltractament: 0}
      - complete: validar_valoracio
        data: {valoracio_validada: true}
    expect:
      path: [visita_domiciliaria, valoracio_gravetat, validar_valoracio, fi_intervencio_municipal]
      end: %(end)s
      status: completed
      thrown: [derivacio_intervencio_municipal]
"""
# A severe case referred to IMAS, whose 20-day decision timer is running.
SEVERE = """
defaults:
  start: {message: investigacio_iniciada}
scenarios:
  - name: greu
    steps:
      - complete: visita_domiciliaria
      - complete: informe_social
      - complete: informe_educatiu
      - complete: valoracio_gravetat
        data: {cura_fisica: 3, seguretat: 3, necessitats_emocionals: 2, educacio: 2, maltractament: 2}
      - complete: validar_valoracio
        data: {valoracio_validada: true}
%(more)s
"""


def _draft_directory(tmp_path: Path, diagram: str, scenarios: str, content: str | None = None) -> Path:
    """A directory with one bundled diagram (its DMN and forms) and a scenario file beside it."""
    [files] = [b for b in bundles_from_directory(BUNDLED_DIAGRAMS) if b[0].name == f"{diagram}.bpmn"]
    for file in files:
        (tmp_path / file.name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file.name).write_bytes(file.content)
    if content is not None:
        (tmp_path / f"{diagram}.bpmn").write_text(content)
    (tmp_path / f"{diagram}.scenarios.yaml").write_text(scenarios)
    return tmp_path


def _failures(directory: Path) -> list[str]:
    """Every failure of the scenario files of `directory`, as `camins test` would list them."""
    return [f"{file}: {message}" for draft in drafts_from_path(directory) for report in run_draft(draft)
            for file, message in report.failures()]


# ------------------------------------------------------------------------------ the runner
def test_a_scenario_that_follows_the_diagram_passes(tmp_path):
    directory = _draft_directory(tmp_path, "investigacio", MODERATE % {"end": "fi_intervencio_municipal"})
    [draft] = drafts_from_path(directory)
    [report] = run_draft(draft)
    assert report.ok and [r.name for r in report.results] == ["moderada"]


def test_wrong_end_says_which_end_was_reached(tmp_path):
    directory = _draft_directory(tmp_path, "investigacio", MODERATE % {"end": "fi_sense_risc"})
    assert _failures(directory) == ["investigacio.scenarios.yaml: scenario 'moderada': at the end: "
                                    "end: expected fi_sense_risc, reached fi_intervencio_municipal"]


def test_wrong_path_says_where_it_went_instead(tmp_path):
    scenario = MODERATE.replace("validar_valoracio, fi_intervencio_municipal]",
                                "validar_valoracio, comunicar_derivacio_imas]") % {"end": "fi_intervencio_municipal"}
    [failure] = _failures(_draft_directory(tmp_path, "investigacio", scenario))
    assert "at the end: path: 'comunicar_derivacio_imas' not reached after 'validar_valoracio'" in failure
    assert "path taken: inici_investigacio → visita_domiciliaria →" in failure
    assert failure.endswith("gw_gravetat → fi_intervencio_municipal")


def test_a_task_that_never_becomes_ready_fails_at_its_step(tmp_path):
    scenario = SEVERE % {"more": "      - complete: revisar_termini_vencut\n    expect: {status: completed}"}
    assert _failures(_draft_directory(tmp_path, "investigacio", scenario)) == [
        "investigacio.scenarios.yaml: scenario 'greu': step 6 (complete revisar_termini_vencut): the task is not "
        "open (it never became ready, or is done); open tasks: [decisio_imas]"]


def test_moving_the_clock_fires_the_timers_due(tmp_path):
    # The 20-day IMAS decision (art. 120.1): nothing after 19 days, the supervisor's task after 20.
    more = """      - clock: P19D
        expect: {open_tasks: [decisio_imas], clocks: {imas_decision: at_risk}}
      - clock: P1D
        expect: {open_tasks: [decisio_imas, revisar_termini_vencut], clocks: {imas_decision: breached}}
      - complete: revisar_termini_vencut
    expect:
      path: [termini_imas, revisar_termini_vencut]
      active: [decisio_imas]
      status: running"""
    assert _failures(_draft_directory(tmp_path, "investigacio", SEVERE % {"more": more})) == []
    too_early = more.replace("clock: P1D", "clock: PT23H")
    assert [failure.split(": ", 2)[2] for failure in _failures(
        _draft_directory(tmp_path, "investigacio", SEVERE % {"more": too_early}))] == [
        "after step 7 (clock PT23H): open_tasks: expected [decisio_imas, revisar_termini_vencut], open: [decisio_imas]",
        "after step 7 (clock PT23H): clocks: 'imas_decision' expected breached, is at_risk (due 2026-12-10)"]


INTERVENTION = """
defaults:
  start:
    message: derivacio_intervencio_municipal
    payload: {gravetat: moderat, puntuacio: 7, retornat_per_imas: false}
scenarios:
  - name: la família respon
    steps:
      - complete: elaborar_projecte_intervencio
      - complete: proposar_conveni
      - message: %(message)s
        payload: {acord: true}
    expect:
      open_tasks: [signar_conveni]
      path: [ev_consentiment_familia]
"""


def test_a_message_step_delivers_the_act_to_the_waiting_instance(tmp_path):
    directory = _draft_directory(tmp_path, "intervencio", INTERVENTION % {"message": "consentiment_familia"})
    assert _failures(directory) == []


def test_a_message_nothing_waits_for_fails_at_its_step(tmp_path):
    directory = _draft_directory(tmp_path, "intervencio", INTERVENTION % {"message": "sentencia_judicial"})
    [failure] = _failures(directory)
    assert "'sentencia_judicial' is not a message of the diagram" in failure  # caught before running

    directory = _draft_directory(tmp_path, "intervencio", INTERVENTION % {"message": "al_legacions_presentades"})
    [failure] = _failures(directory)
    assert "step 3 (message al_legacions_presentades): nothing waits for message 'al_legacions_presentades'; " \
           "active: [gw_resposta_familia]" in failure


FAILING_SCRIPT = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="prova_incident" /></bpmn:collaboration>
  <bpmn:process id="prova_incident" name="Prova d'incident" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane" name="Treballador/a social">
      <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>valorar</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>calcular</bpmn:flowNodeRef><bpmn:flowNodeRef>fi</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="inici" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="valorar" name="Valorar">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/valorar_urgencia.form" />
      </spiffworkflow:properties></bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:scriptTask id="calcular" name="Calcular"><bpmn:incoming>f2</bpmn:incoming><bpmn:outgoing>f3</bpmn:outgoing>
      <bpmn:script>quocient = 1 / (0 if perill_immediat else 1)</bpmn:script></bpmn:scriptTask>
    <bpmn:endEvent id="fi" name="Fi"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="valorar" />
    <bpmn:sequenceFlow id="f2" sourceRef="valorar" targetRef="calcular" />
    <bpmn:sequenceFlow id="f3" sourceRef="calcular" targetRef="fi" />
  </bpmn:process>
</bpmn:definitions>
"""
INCIDENT = """
scenarios:
  - name: el script falla
    steps:
      - complete: valorar
        data: {perill_immediat: true}
        incident: %(incident)s
    expect: {incidents: [calcular], status: running}
"""


def _incident_directory(tmp_path: Path, incident: str) -> Path:
    (tmp_path / "forms").mkdir(parents=True)
    shutil.copy(BUNDLED_DIAGRAMS / "forms" / "valorar_urgencia.form", tmp_path / "forms")
    (tmp_path / "prova_incident.bpmn").write_text(FAILING_SCRIPT)
    (tmp_path / "prova_incident.scenarios.yaml").write_text(INCIDENT % {"incident": incident})
    return tmp_path


def test_an_expected_incident_passes_and_an_unexpected_one_fails(tmp_path):
    assert _failures(_incident_directory(tmp_path / "expected", "calcular")) == []
    [failure] = _failures(_incident_directory(tmp_path / "elsewhere", "valorar"))
    assert failure.endswith("step 1 (complete valorar): expected an incident at valorar; it was opened at "
                            "[calcular]")
    unexpected = _incident_directory(tmp_path / "unexpected", "calcular")
    (unexpected / "prova_incident.scenarios.yaml").write_text(
        (INCIDENT % {"incident": "calcular"}).replace("        incident: calcular\n", ""))
    [failure] = _failures(unexpected)
    assert "step 1 (complete valorar): opened an incident at calcular: " in failure
    assert "division by zero" in failure


@pytest.mark.parametrize(("text", "message"), [
    ("scenarios: [\n  - name: x", "line 2, column 3: not valid YAML"),
    ("scenarios:\n  - name: x\n    steps:\n      - complete: visita_domiciliaria\n        dada: {}\n"
     "    expect: {}\n", "scenario 'x', step 1 (complete): unknown key 'dada'; did you mean 'data'?"),
    ("scenarios:\n  - name: x\n    steps:\n      - {clock: P20X}\n    expect: {}\n",
     "scenario 'x', step 1 (clock): 'P20X' is not an ISO-8601 duration (e.g. P20D, P6M, PT1H)"),
    ("scenarios:\n  - name: x\n    steps:\n      - {complete: visita_domiciliaria, message: y}\n    expect: {}\n",
     "scenario 'x', step 1: needs exactly one of: complete, clock, message (it has complete, message)"),
    ("scenarios:\n  - name: x\n    expect: {end: fi_sense_risk}\n",
     "scenario 'x', expect, end: 'fi_sense_risk' is not an end event of the process; did you mean 'fi_sense_risc'?"),
    ("scenarios:\n  - name: x\n    case: {municipality: Madrid}\n    expect: {}\n",
     "scenario 'x', case: 'Madrid' is not one of the 53 municipalities of Mallorca"),
    ("a: &a [1]\nb: *a\n", "line 2: YAML aliases (*name) are not allowed"),
])
def test_a_malformed_file_is_reported_with_where_and_what(tmp_path, text, message):
    directory = _draft_directory(tmp_path, "investigacio", text)
    failures = _failures(directory)
    assert any(message in failure for failure in failures), failures
    result = run_cli("test", str(directory))
    assert result.returncode == 1
    assert message in result.stdout and "Traceback" not in result.stdout + result.stderr
    assert "file(s) could not be run" in result.stdout


# --------------------------------------------------------------------------- the command line
def test_the_scenarios_of_every_bundled_pathway_pass_through_camins_test():
    for pathway in PATHWAYS:
        assert (BUNDLED_DIAGRAMS / f"{pathway}.scenarios.yaml").is_file(), pathway
    result = run_cli("test", "bpmn/")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for pathway in PATHWAYS:
        # At least the main path and one alternative per pathway.
        assert sum(f"ok    {pathway}.scenarios.yaml: " in line for line in lines) >= 2, pathway
    assert "FAIL" not in result.stdout
    total = sum(" ok    " in line for line in lines)
    assert f"{total} scenarios: {total} passed, 0 failed" in lines[-1]


def test_camins_test_reports_each_failure_and_exits_1(tmp_path):
    directory = _draft_directory(tmp_path, "investigacio", MODERATE % {"end": "fi_sense_risc"})
    result = run_cli("test", str(directory / "investigacio.bpmn"))
    assert result.returncode == 1
    assert "[1/1] FAIL  investigacio.scenarios.yaml: moderada" in result.stdout
    assert "at the end: end: expected fi_sense_risc, reached fi_intervencio_municipal" in result.stdout
    assert "1 scenarios: 0 passed, 1 failed" in result.stdout
    assert run_cli("test", "--help").returncode == 0


def test_camins_deploy_refuses_failing_scenarios_unless_overridden(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli("db", "upgrade", url=url).returncode == 0
    directory = _draft_directory(tmp_path / "draft", "investigacio", MODERATE % {"end": "fi_sense_risc"})
    refused = run_cli("deploy", str(directory), url=url)
    assert refused.returncode == 1
    assert "scenarios failed: 1 of 1" in refused.stderr and "not deployed" in refused.stderr
    assert "expected fi_sense_risc, reached fi_intervencio_municipal" in refused.stderr
    overridden = run_cli("deploy", str(directory), "--override-reason", "Canvi urgent de la llei", url=url)
    assert overridden.returncode == 0, overridden.stderr
    assert "investigacio v1 deployed (1 of 1 scenarios failed; deployed anyway: Canvi urgent de la llei)" \
        in overridden.stdout


# ---------------------------------------------------------------------------------- over HTTP
def _investigation_upload(scenarios: str, marker: str = "v2") -> list[tuple]:
    """The investigation bundle, changed (by a comment) so that it is a new version, with a scenario file."""
    [files] = [b for b in bundles_from_directory(BUNDLED_DIAGRAMS) if b[0].name == "investigacio.bpmn"]
    parts = []
    for file in files:
        content = file.content + (f"\n<!-- {marker} -->\n".encode() if file.name.endswith(".bpmn") else b"")
        parts.append(("files", (file.name, content, "application/octet-stream")))
    return parts + [("files", ("investigacio.scenarios.yaml", scenarios.encode(), "application/yaml"))]


def _investigation_versions(camins) -> list[int]:
    with camins.db.read() as session:
        return sorted(session.scalars(select(Definition.version).where(Definition.process_key == "investigacio")))


def test_deploy_with_failing_scenarios_is_refused_over_http_unless_a_reason_is_given(http, camins):
    failing = MODERATE % {"end": "fi_sense_risc"}
    refused = http.post("/api/definitions", "analista", files=_investigation_upload(failing))
    assert refused.status_code == 422, refused.text
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    body = refused.json()
    assert body["title"] == "Scenarios failed" and "override_reason" in body["detail"]
    assert body["problems"] == [{"file": "investigacio.scenarios.yaml", "element_id": None, "line": None,
                                 "message": "scenario 'moderada': at the end: end: expected fi_sense_risc, "
                                            "reached fi_intervencio_municipal"}]
    assert body["scenarios"]["passed"] == 0 and body["scenarios"]["failed"] == 1
    assert _investigation_versions(camins) == [1]

    # Validating the draft runs them too, without deploying.
    validated = http.post("/api/definitions/validate", "analista", files=_investigation_upload(failing))
    assert validated.status_code == 200, validated.text
    assert validated.json()["valid"] is True and validated.json()["scenarios"]["failed"] == 1

    reason = "Canvi de criteri aprovat per la direcció; l'escenari s'actualitza demà."
    deployed = http.post("/api/definitions", "analista", files=_investigation_upload(failing),
                         data={"override_reason": reason})
    assert deployed.status_code == 201, deployed.text
    assert deployed.json()["version"] == 2
    assert deployed.json()["scenarios"]["override_reason"] == reason
    listed = http.get("/api/definitions?per_page=100", "analista").json()["items"]
    [v2] = [d for d in listed if d["process_key"] == "investigacio" and d["version"] == 2]
    assert v2["scenarios"]["override_reason"] == reason and v2["scenarios"]["decided_by"] == "analista"
    assert v2["scenarios"]["failed"] == 1 and "expected fi_sense_risc" in v2["scenarios"]["failures"][0]
    with camins.db.read() as session:
        [verdict] = session.scalars(select(ScenarioVerdict)).all()
    assert (verdict.process_key, verdict.override_reason, verdict.decided_by) == ("investigacio", reason, "analista")


def test_deploy_with_passing_scenarios_records_them_and_a_broken_file_is_refused_even_with_a_reason(http, camins):
    passing = MODERATE % {"end": "fi_intervencio_municipal"}
    deployed = http.post("/api/definitions", "analista", files=_investigation_upload(passing))
    assert deployed.status_code == 201, deployed.text
    verdict = deployed.json()["scenarios"]
    assert (verdict["passed"], verdict["failed"], verdict["override_reason"]) == (1, 0, None)
    listed = http.get("/api/definitions?per_page=100", "analista").json()["items"]
    [v2] = [d for d in listed if d["process_key"] == "investigacio" and d["version"] == 2]
    assert v2["scenarios"]["passed"] == 1 and v2["scenarios"]["decided_by"] == "analista"

    # The same content again keeps its version: nothing to decide, so nothing runs.
    again = http.post("/api/definitions", "analista", files=_investigation_upload(passing))
    assert again.status_code == 201 and again.json()["created"] is False and again.json()["scenarios"] is None

    broken = http.post("/api/definitions", "analista", data={"override_reason": "urgent"},
                       files=_investigation_upload("scenarios: [\n  - name: x", marker="v3"))
    assert broken.status_code == 422, broken.text
    assert broken.json()["title"] == "Invalid bundle"
    [problem] = broken.json()["problems"]
    assert problem["file"] == "investigacio.scenarios.yaml" and "line 2, column 3: not valid YAML" in problem["message"]
    assert _investigation_versions(camins) == [1, 2]
