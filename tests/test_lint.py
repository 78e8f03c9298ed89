"""The modelling rules (engine/lint.py): each caught on a small faulty diagram, and quiet on its fix.

Each rule gets the diagram an analyst might draw by mistake, the finding a modeler would show on
the element (rule id and element id), and the corrected drawing, which must lint clean under every
rule. Then the bundled pathways, `camins validate` and the validate and deploy API.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.lint import lint
from engine.xmlsafe import parse_xml
from workflows.pathways import BUNDLED_DIAGRAMS

from .deploy_http import assert_problem_json, deploy_client

ROOT = Path(__file__).resolve().parent.parent
HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs" targetNamespace="http://camins">
  <bpmn:process id="{key}" name="Prova de regles" isExecutable="true">
"""
TAIL = """
  </bpmn:process>
</bpmn:definitions>
"""


def diagram(*elements: str, key: str = "regles") -> str:
    return HEAD.format(key=key) + "\n".join(elements) + TAIL


def node(kind: str, node_id: str, name: str | None = None, inner: str = "", **attributes) -> str:
    attrs = "".join(f' {k}="{v}"' for k, v in attributes.items())
    label = f' name="{name}"' if name is not None else ""
    return f'<bpmn:{kind} id="{node_id}"{label}{attrs}>{inner}</bpmn:{kind}>'


def start(node_id="inici", name="Cas obert"):
    return node("startEvent", node_id, name)


def end(node_id="fi", name="Cas tancat"):
    return node("endEvent", node_id, name)


def task(node_id, name="Fer la feina", **attributes):
    return node("task", node_id, name, **attributes)


def flow(flow_id, source, target, name=None, condition=None):
    label = f' name="{name}"' if name is not None else ""
    inner = f"<bpmn:conditionExpression>{condition}</bpmn:conditionExpression>" if condition else ""
    return (f'<bpmn:sequenceFlow id="{flow_id}"{label} sourceRef="{source}" targetRef="{target}">'
            f"{inner}</bpmn:sequenceFlow>")


def findings(content: str) -> set[tuple[str, str]]:
    """(rule, element id) of every finding."""
    return {(f.rule, f.element_id) for f in lint(parse_xml(content.encode()), "prova.bpmn")}


# A choice drawn right: named question, named answers, a condition on each but the default.
def choice(default="f_no", yes_condition="risc == True", no_condition=None, extra=""):
    return [
        node("exclusiveGateway", "gw", "Hi ha risc?", inner=extra, **({"default": default} if default else {})),
        flow("f_si", "gw", "intervenir", "Sí", yes_condition),
        flow("f_no", "gw", "arxivar", "No", no_condition),
    ]


CHOICE_TAIL = [task("intervenir", "Intervenir"), task("arxivar", "Arxivar"), end("fi_intervencio", "Intervenció"),
               end("fi_arxiu", "Arxivat"), flow("f3", "intervenir", "fi_intervencio"),
               flow("f4", "arxivar", "fi_arxiu")]


def with_choice(key: str = "regles", **kwargs) -> str:
    return diagram(start(), task("valorar", "Valorar"), flow("f1", "inici", "valorar"), flow("f2", "valorar", "gw"),
                   *choice(**kwargs), *CHOICE_TAIL, key=key)


def test_a_well_drawn_choice_is_clean():
    assert findings(with_choice()) == set()


# ------------------------------------------------------------------------------- no-implicit-split
def _after_registering(source: str, *extra: str) -> str:
    """Register, then inform the prosecutor and summon the family, both leaving `source`."""
    return diagram(start(), task("registrar", "Registrar"), task("informar", "Informar la fiscalia"),
                   task("citar", "Citar la família"), end("fi_a", "Fiscalia informada"), end("fi_b", "Família citada"),
                   flow("f1", "inici", "registrar"), flow("f2", source, "informar"), flow("f3", source, "citar"),
                   flow("f4", "informar", "fi_a"), flow("f5", "citar", "fi_b"), *extra)


def test_no_implicit_split_catches_a_task_with_two_plain_outgoing_flows():
    assert findings(_after_registering("registrar")) == {("no-implicit-split", "registrar")}
    fixed = _after_registering("split", node("parallelGateway", "split"), flow("f6", "registrar", "split"))
    assert findings(fixed) == set()


# -------------------------------------------------------------------------------- no-implicit-join
def _parallel(join_target: str, *extra: str) -> str:
    return diagram(start(), node("parallelGateway", "split"), task("informe_a", "Informe social"),
                   task("informe_b", "Informe psicològic"), task("valorar", "Valorar"), end(),
                   flow("f1", "inici", "split"), flow("f2", "split", "informe_a"), flow("f3", "split", "informe_b"),
                   flow("f4", "informe_a", join_target), flow("f5", "informe_b", join_target),
                   flow("f6", "valorar", "fi"), *extra)


def test_no_implicit_join_catches_parallel_branches_meeting_at_a_task():
    assert findings(_parallel("valorar")) == {("no-implicit-join", "valorar")}
    fixed = _parallel("join", node("parallelGateway", "join"), flow("f7", "join", "valorar"))
    assert findings(fixed) == set()


def test_no_implicit_join_catches_a_task_beside_its_non_interrupting_boundary_event():
    timer = '<bpmn:timerEventDefinition><bpmn:timeDuration>"P20D"</bpmn:timeDuration></bpmn:timerEventDefinition>'
    faulty = diagram(start(), task("decidir", "Decidir"), task("revisar", "Revisar el cas"), end(),
                     node("boundaryEvent", "termini", "20 dies", timer, attachedToRef="decidir",
                          cancelActivity="false"),
                     flow("f1", "inici", "decidir"), flow("f2", "decidir", "revisar"),
                     flow("f3", "termini", "revisar"), flow("f4", "revisar", "fi"))
    assert findings(faulty) == {("no-implicit-join", "revisar")}
    interrupting = faulty.replace('cancelActivity="false"', 'cancelActivity="true"')
    assert findings(interrupting) == set()


def test_alternative_paths_and_loops_merging_into_a_task_are_not_implicit_joins():
    """Only one token arrives at a time, so the task runs as drawn."""
    loop_back = with_choice().replace('targetRef="arxivar"', 'targetRef="valorar"')
    assert ("no-implicit-join", "valorar") not in findings(loop_back)


# --------------------------------------------------------------------------------- no-disconnected
def test_no_disconnected_catches_loose_and_dangling_elements():
    faulty = diagram(start(), task("registrar", "Registrar"), end(), task("oblidada", "Tasca oblidada"),
                     task("sense_sortida", "Sense sortida"), node("endEvent", "fi_sol", "Fi sense entrada"),
                     flow("f1", "inici", "registrar"), flow("f2", "registrar", "fi"),
                     flow("f3", "registrar", "sense_sortida", condition="urgent"))
    assert {f for f in findings(faulty) if f[0] == "no-disconnected"} == {
        ("no-disconnected", "oblidada"), ("no-disconnected", "sense_sortida"), ("no-disconnected", "fi_sol")}
    fixed = diagram(start(), task("registrar", "Registrar"), end(), flow("f1", "inici", "registrar"),
                    flow("f2", "registrar", "fi"))
    assert findings(fixed) == set()


def test_event_subprocesses_boundary_events_and_subprocess_contents_are_connected_enough():
    timer = '<bpmn:timerEventDefinition><bpmn:timeDuration>"P1D"</bpmn:timeDuration></bpmn:timerEventDefinition>'
    message = '<bpmn:messageEventDefinition messageRef="m" />'
    inner = (node("startEvent", "sub_inici") + task("sub_feina", "Feina interna") + node("endEvent", "sub_fi")
             + flow("s1", "sub_inici", "sub_feina") + flow("s2", "sub_feina", "sub_fi"))
    handler = (node("startEvent", "avis", "Avís rebut", message, isInterrupting="false") + task("atendre", "Atendre")
               + node("endEvent", "avis_fi", "Avís atès") + flow("e1", "avis", "atendre")
               + flow("e2", "atendre", "avis_fi"))
    clean = diagram(start(), node("subProcess", "sub", "Instrucció", inner), end(),
                    node("boundaryEvent", "retard", "Un dia", timer, attachedToRef="sub"), end("fi_retard", "Retard"),
                    node("subProcess", "avisos", "Avisos", handler, triggeredByEvent="true"),
                    flow("f1", "inici", "sub"), flow("f2", "sub", "fi"), flow("f3", "retard", "fi_retard"))
    assert findings(clean) == set()


# ---------------------------------------------------------------------------------- label-required
def test_label_required_catches_unnamed_tasks_events_questions_and_answers():
    faulty = with_choice().replace('name="Valorar"', "").replace('name="Hi ha risc?"', "") \
        .replace('name="Sí"', "").replace('name="Arxivat"', 'name=" "')
    assert findings(faulty) == {("label-required", "valorar"), ("label-required", "gw"),
                                ("label-required", "f_si"), ("label-required", "fi_arxiu")}
    assert findings(with_choice()) == set()


def test_a_parallel_gateway_and_a_joining_gateway_need_no_name():
    assert findings(_parallel("join", node("parallelGateway", "join"), flow("f7", "join", "valorar"))) == set()


# ------------------------------------------------------------------------ exclusive-gateway-default
def test_exclusive_gateway_default_catches_a_choice_with_no_way_out():
    faulty = with_choice(default=None, no_condition="risc == False")
    assert findings(faulty) == {("exclusive-gateway-default", "gw")}
    assert findings(with_choice()) == set()


def test_a_gateway_declared_exhaustive_needs_no_default():
    declared = ('<bpmn:extensionElements><spiffworkflow:properties><spiffworkflow:property name="exhaustive" '
                'value="risc is a required yes/no field" /></spiffworkflow:properties></bpmn:extensionElements>')
    assert findings(with_choice(default=None, no_condition="risc == False", extra=declared)) == set()
    empty_reason = declared.replace("risc is a required yes/no field", "")
    assert findings(with_choice(default=None, no_condition="risc == False", extra=empty_reason)) == \
        {("exclusive-gateway-default", "gw")}


def test_exclusive_gateway_default_catches_a_default_that_leaves_elsewhere():
    assert findings(with_choice(default="f1")) == {("exclusive-gateway-default", "gw"),
                                                   ("conditional-flows", "f_no")}


# -------------------------------------------------------------------------------- conditional-flows
def test_conditional_flows_catches_a_branch_without_condition_and_a_default_with_one():
    assert findings(with_choice(yes_condition=None)) == {("conditional-flows", "f_si")}
    assert findings(with_choice(no_condition="risc == False")) == {("conditional-flows", "f_no")}
    assert findings(with_choice()) == set()


def test_conditional_flows_applies_to_a_conditional_split_on_a_task():
    faulty = diagram(start(), task("valorar", "Valorar"), *CHOICE_TAIL, flow("f1", "inici", "valorar"),
                     flow("f_urgent", "valorar", "intervenir", "Urgent", "urgent == True"),
                     flow("f_resta", "valorar", "arxivar", "La resta"))
    assert findings(faulty) == {("conditional-flows", "f_resta")}
    fixed = faulty.replace('id="valorar" name="Valorar"', 'id="valorar" name="Valorar" default="f_resta"')
    assert findings(fixed) == set()


# ------------------------------------------------------------------------------- no-unreachable-end
def test_no_unreachable_end_catches_an_end_no_token_reaches():
    """A review loop drawn beside the main path, never connected to it."""
    def review(entry_target: str) -> str:
        return diagram(start(), task("registrar", "Registrar"), end(), task("revisar", "Revisar"),
                       node("exclusiveGateway", "gw", "Revisió feta?", default="f_no"), end("fi_revisat", "Revisat"),
                       flow("f1", "inici", "registrar"), flow("f2", "registrar", entry_target),
                       flow("f3", "revisar", "gw"), flow("f_no", "gw", "revisar", "No"),
                       flow("f_si", "gw", "fi_revisat", "Sí", "revisat == True"))
    assert findings(review("fi")) == {("no-unreachable-end", "fi_revisat")}
    fixed = review("revisar").replace(end(), "")
    assert findings(fixed) == set()


def test_no_unreachable_end_catches_a_loop_with_no_way_out():
    trapped = diagram(start(), task("a", "Demanar informe"), task("b", "Llegir informe"), end(),
                      flow("f1", "inici", "a"), flow("f2", "a", "b"), flow("f3", "b", "a"))
    assert findings(trapped) == {("no-unreachable-end", "a"), ("no-unreachable-end", "b"),
                                 ("no-unreachable-end", "fi"), ("no-disconnected", "fi")}
    way_out = trapped.replace(flow("f3", "b", "a"), node("exclusiveGateway", "gw", "Complet?", default="f3")
                              + flow("f3", "gw", "a", "No") + flow("f4", "b", "gw")
                              + flow("f5", "gw", "fi", "Sí", "complet == True"))
    assert findings(way_out) == set()


def test_an_end_reached_through_a_boundary_event_is_reachable():
    timer = '<bpmn:timerEventDefinition><bpmn:timeDuration>"P2Y"</bpmn:timeDuration></bpmn:timerEventDefinition>'
    clean = diagram(start(), task("esperar", "Esperar"), end(), end("fi_limit", "Límit superat"),
                    node("boundaryEvent", "limit", "Dos anys", timer, attachedToRef="esperar"),
                    flow("f1", "inici", "esperar"), flow("f2", "esperar", "fi"), flow("f3", "limit", "fi_limit"))
    assert findings(clean) == set()


def test_findings_name_rule_element_line_and_severity():
    finding = lint(parse_xml(with_choice(yes_condition=None).encode()), "prova.bpmn")[0]
    assert (finding.rule, finding.element_id, finding.severity, finding.file) == \
        ("conditional-flows", "f_si", "error", "prova.bpmn")
    assert finding.line and "f_si" in finding.message and "condition" in finding.message
    assert str(finding).startswith(f"prova.bpmn:{finding.line} [f_si] error conditional-flows: ")


# ---------------------------------------------------------------------------------- bundled diagrams
@pytest.mark.parametrize("path", sorted(BUNDLED_DIAGRAMS.glob("*.bpmn")), ids=lambda p: p.name)
def test_bundled_diagrams_lint_clean(path):
    assert [str(f) for f in lint(parse_xml(path.read_bytes()), path.name)] == []


# ------------------------------------------------------------------------------------ camins validate
def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "api.cli", "validate", str(path)], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=300)


def test_camins_validate_prints_each_finding_and_fails(tmp_path):
    faulty = tmp_path / "regles.bpmn"
    faulty.write_text(with_choice(default=None, no_condition="risc == False"))
    result = _validate(faulty)
    assert result.returncode == 1
    assert "regles.bpmn" in result.stderr and "breaks modelling rules" in result.stderr
    line = next(line for line in result.stderr.splitlines() if "exclusive-gateway-default" in line)
    assert "[gw]" in line and "no default flow" in line
    faulty.write_text(with_choice())
    fixed = _validate(faulty)
    assert fixed.returncode == 0, fixed.stderr
    assert "ok  regles" in fixed.stdout and "modelling rules" not in fixed.stderr


# ---------------------------------------------------------------------------------- validate API
@pytest.fixture(scope="module")
def client(database_url):
    with deploy_client(database_url) as deployer:
        yield deployer


def test_validate_api_lists_lint_findings_of_a_deployable_bundle(client):
    faulty = with_choice(default=None, no_condition="risc == False", key="regles_api")
    sent = client.send([("regles.bpmn", faulty)], "/api/definitions/validate")
    assert sent.status == 200, sent.response.text
    body = sent.response.json()
    assert body["valid"] is True and body["lint_clean"] is False
    assert [(f["rule"], f["element_id"], f["severity"], f["file"]) for f in body["lint"]] == \
        [("exclusive-gateway-default", "gw", "error", "regles.bpmn")]
    assert body["lint"][0]["line"] and body["lint"][0]["message"]
    clean = client.send([("regles.bpmn", with_choice(key="regles_api"))], "/api/definitions/validate").response.json()
    assert clean["lint"] == [] and clean["lint_clean"] is True


def test_deploy_api_accepts_a_bundle_that_breaks_rules_and_lists_them(client):
    faulty = with_choice(yes_condition=None, key="regles_deploy").replace('name="Sí" ', "")
    sent = client.send([("regles.bpmn", faulty)])
    # Spiff refuses an unconditional non-default branch of an exclusive gateway: a deploy problem too.
    body = assert_problem_json(sent)
    assert any(p["element_id"] == "f_si" for p in body["problems"])
    assert {(f["rule"], f["element_id"]) for f in body["lint"]} == {("conditional-flows", "f_si"),
                                                                    ("label-required", "f_si")}
    unnamed = with_choice(key="regles_deploy").replace('name="Sí" ', "")
    deployed = client.send([("regles.bpmn", unnamed)])
    assert deployed.status == 201, deployed.response.text
    assert deployed.response.json()["lint_clean"] is False
    assert [(f["rule"], f["element_id"]) for f in deployed.response.json()["lint"]] == [("label-required", "f_si")]
    assert ("regles_deploy", deployed.response.json()["version"]) in client.deployed()
