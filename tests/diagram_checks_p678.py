"""Checks of pathways 6 (acolliment), 7 (adopció) and 8 (emancipació).

Runs on its own, printing a report:  cd /work/main && .venv/bin/python tests/diagram_checks_p678.py

Diagrams: acolliment.bpmn, familia_acollidora.bpmn, adopcio.bpmn, sollicitants_adopcio.bpmn,
emancipacio.bpmn and their forms (bpmn/forms/p6_*, p7_*, p8_*).

1. Static checks (lxml): no DOCTYPE, full diagram interchange (a shape with bounds for every
   participant, lane and flow node, an edge with >= 2 waypoints for every sequence flow),
   layout sanity (nodes inside their lane, no overlapping shapes or labels, edges that start
   and end on their nodes and cross no other node), lane names from the role catalogue, user
   task properties (form named after the task, due_in, legal clocks from the catalogue and
   each started clock stopped), exclusive gateway conditions (the form keys they read exist
   and are required), message names from the fixed list, user task ids unique across bpmn/,
   every script/expression accepted by the sandbox, and the deploy-time bundle compilation
   of the engine (engine.bundle.compile_bundle with the domain hooks).
2. Dynamic checks: parse with SpiffBpmnParser(validator=VALIDATOR) and run every gateway
   branch to an end with the project's SandboxedScriptEngine on a manual clock (the engine's
   clock module makes SpiffWorkflow's timers read it too), validating every submission
   against its form and round-tripping the state through the engine's spec-free serializer.
   Prints the message(s) each run threw and ended with.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lxml import etree  # noqa: E402
from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow  # noqa: E402
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition  # noqa: E402
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from engine import clock as engine_clock  # noqa: E402  (installs the clock into Spiff's timers)
from engine.bundle import bundles_from_directory, compile_bundle  # noqa: E402
from engine.errors import DeployError  # noqa: E402
from engine.sandbox import SandboxedScriptEngine, ScriptRejected, check_expression, check_script  # noqa: E402
from engine.serializer import StateSerializer  # noqa: E402
from workflows.forms import parse_form, validate_submission  # noqa: E402
from workflows.hooks import DomainHooks  # noqa: E402

BPMN_DIR = ROOT / "bpmn"
DIAGRAMS = {
    "acolliment.bpmn": "acolliment",
    "familia_acollidora.bpmn": "familia_acollidora",
    "adopcio.bpmn": "adopcio",
    "sollicitants_adopcio.bpmn": "sollicitants_adopcio",
    "emancipacio.bpmn": "emancipacio",
}
NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core",
}
LANES = {
    "Treballador/a social", "Educador/a social", "Treballador/a familiar", "Auxiliar administratiu/va",
    "Coordinador/a SSCB", "Referent d'infància IMAS", "Equip de primera valoració i urgències",
    "Professional de referència IMAS", "Psicòleg/psicòloga IMAS", "Jurista IMAS", "Cap de secció IMAS",
    "Tècnic/a d'acolliment familiar", "Tècnic/a d'adopcions", "Tècnic/a d'emancipació",
    "Comissió de Declaració de Risc", "Comissió de Desemparament i Tutela",
}
CLOCKS = {
    "risk_allegations", "risk_proposal", "risk_procedure", "intervention_project", "imas_prior_inquiries",
    "guardianship_proposal", "resolution_notice", "urgent_diligences", "protection_plan",
    "temporary_measure_limit", "post_return_followup", "foster_fiscalia", "emergency_foster_limit",
    "adoption_proposal", "post_care_followup",
}
MESSAGES = {
    "derivacio_intervencio_municipal", "derivacio_proteccio_imas", "proteccio_urgent", "inici_reunificacio",
    "inici_acolliment", "inici_adopcio", "inici_emancipacio", "intervencio_tancada", "reunificacio_tancada",
    "acolliment_finalitzat", "adopcio_constituida", "adopcio_no_constituida", "emancipacio_finalitzada",
    "emancipacio_rebutjada", "revisio_programada", "revisions_finalitzades", "al_legacions_presentades",
    "audiencia_celebrada", "consentiment_familia", "negativa_familia", "acusament_fiscalia",
    "sentencia_judicial",
}
FLOW_NODE_TAGS = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "exclusiveGateway", "parallelGateway",
    "inclusiveGateway", "eventBasedGateway", "complexGateway",
}
FORM_TYPES = {"textfield", "textarea", "number", "checkbox", "select", "radio", "datetime"}
CALLABLE = {"len", "min", "max", "int", "str", "bool", "abs", "round", "sum", "float", "list", "dict", "set",
            "tuple", "range", "sorted", "any", "all", "enumerate", "zip", "isinstance",
            "today", "now", "date", "timedelta", "parse_date", "age_in_years", "add_months", "days_between",
            "iso_duration"}
CONSTANTS = {"True", "False", "None"}
START_DATA = {"data_naixement"}
ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")

PROBLEMS: list[str] = []


def problem(msg: str) -> None:
    PROBLEMS.append(msg)
    print("  PROBLEM:", msg)


def local(el) -> str:
    return etree.QName(el).localname


def safe_parse(path: Path):
    raw = path.read_bytes()
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", raw, re.IGNORECASE):
        problem(f"{path.name}: DOCTYPE/ENTITY declaration")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_pis=True)
    return etree.fromstring(raw, parser)


# --------------------------------------------------------------------------- forms
def check_form(path: Path) -> dict[str, dict]:
    """Returns key -> component; reports structural problems."""
    comps_by_key: dict[str, dict] = {}
    try:
        raw = path.read_bytes()
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as err:
        problem(f"{path.name}: not valid JSON ({err})")
        return comps_by_key
    try:
        parse_form(raw, path.name)          # the server's own form validation
    except ValueError as err:
        problem(f"{path.name}: rejected by workflows.forms.parse_form: {err}")
    if doc.get("type") != "default" or doc.get("id") != f"Form_{path.stem}" or doc.get("schemaVersion") != 16:
        problem(f"{path.name}: needs type 'default', id 'Form_{path.stem}' and schemaVersion 16")
    comps = doc.get("components")
    if not isinstance(comps, list) or not comps:
        problem(f"{path.name}: components must be a non-empty list")
        return comps_by_key
    for c in comps:
        t, key, label = c.get("type"), c.get("key"), c.get("label")
        if t not in FORM_TYPES:
            problem(f"{path.name}: component type {t!r} not allowed")
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            problem(f"{path.name}: key {key!r} is not snake_case ascii")
        elif key in comps_by_key:
            problem(f"{path.name}: duplicate key {key}")
        else:
            comps_by_key[key] = c
        if not isinstance(label, str) or not label.strip():
            problem(f"{path.name}: {key}: missing label")
        if t == "datetime" and c.get("subtype") != "date":
            problem(f"{path.name}: {key}: datetime needs subtype 'date'")
        if t in ("select", "radio"):
            vals = c.get("values")
            if not isinstance(vals, list) or not vals or not all(
                    isinstance(v, dict) and set(v) == {"label", "value"} for v in vals):
                problem(f"{path.name}: {key}: values must be a list of {{label, value}}")
        if t == "radio" and all(isinstance(v.get("value"), bool) for v in c.get("values", [])):
            if {v["value"] for v in c["values"]} != {True, False}:
                problem(f"{path.name}: {key}: a yes/no radio needs the values true and false")
        v = c.get("validate", {})
        if not isinstance(v, dict) or not set(v) <= {"required", "min", "max", "minLength", "maxLength"}:
            problem(f"{path.name}: {key}: bad validate {v!r}")
        if t == "checkbox" and v.get("required"):
            problem(f"{path.name}: {key}: a required checkbox forces the box to be ticked")
    return comps_by_key


# --------------------------------------------------------------------------- expressions
def expr_names(source: str, where: str, mode: str = "eval") -> tuple[set[str], set[str]]:
    """Names read and assigned by an expression or script; checked by the sandbox too."""
    try:
        (check_script if mode == "exec" else check_expression)(source.strip())
    except ScriptRejected as err:
        problem(f"{where}: rejected by the sandbox: {err}")
    try:
        tree = ast.parse(source.strip(), mode=mode)
    except SyntaxError as err:
        problem(f"{where}: syntax error {err}")
        return set(), set()
    read, written = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Lambda, ast.FunctionDef, ast.ClassDef)):
            problem(f"{where}: forbidden construct {type(node).__name__}")
        if isinstance(node, ast.Attribute):
            problem(f"{where}: attribute access .{node.attr} not used in these diagrams")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                problem(f"{where}: name {node.id} starts with underscore")
            (written if isinstance(node.ctx, ast.Store) else read).add(node.id)
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in CALLABLE):
                problem(f"{where}: call to {ast.dump(node.func)} not allowed")
    return read - CALLABLE - CONSTANTS, written


# --------------------------------------------------------------------------- geometry
def bounds_of(shape):
    b = shape.find("dc:Bounds", NS)
    if b is None:
        return None
    return tuple(float(b.get(k)) for k in ("x", "y", "width", "height"))


def overlap(a, b, tol=0.0):
    return (a[0] + tol < b[0] + b[2] and b[0] + tol < a[0] + a[2]
            and a[1] + tol < b[1] + b[3] and b[1] + tol < a[1] + a[3])


def inside(inner, outer):
    return (inner[0] >= outer[0] and inner[1] >= outer[1]
            and inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3])


def on_border(pt, r, tol=2.0):
    x, y = pt
    within_x = r[0] - tol <= x <= r[0] + r[2] + tol
    within_y = r[1] - tol <= y <= r[1] + r[3] + tol
    near_v = abs(x - r[0]) <= tol or abs(x - r[0] - r[2]) <= tol
    near_h = abs(y - r[1]) <= tol or abs(y - r[1] - r[3]) <= tol
    return (within_x and within_y) and (near_v or near_h)


def segment_hits(p, q, r, where):
    """Axis-aligned segment p-q crosses the interior of rectangle r (shrunk by 1px)."""
    x0, y0, x1, y1 = r[0] + 1, r[1] + 1, r[0] + r[2] - 1, r[1] + r[3] - 1
    if abs(p[0] - q[0]) < 0.01:     # vertical
        return x0 < p[0] < x1 and max(p[1], q[1]) > y0 and min(p[1], q[1]) < y1
    if abs(p[1] - q[1]) < 0.01:     # horizontal
        return y0 < p[1] < y1 and max(p[0], q[0]) > x0 and min(p[0], q[0]) < x1
    problem(f"{where}: diagonal edge segment {p}->{q}")
    return False


# --------------------------------------------------------------------------- static check
def props_of(el) -> dict:
    return {p.get("name"): p.get("value")
            for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property", NS)}


def check_diagram(path: Path, process_id: str) -> dict:
    print(f"static: {path.name}")
    root = safe_parse(path)
    shapes = {s.get("bpmnElement"): s for s in root.iterfind(".//bpmndi:BPMNShape", NS)}
    edges = {e.get("bpmnElement"): e for e in root.iterfind(".//bpmndi:BPMNEdge", NS)}
    info = {"user_tasks": {}, "messages": {}, "throws": [], "catches": [], "timers": [], "services": [],
            "clocks": {}}

    parts = root.findall(".//bpmn:participant", NS)
    if len(parts) != 1 or parts[0].get("processRef") != process_id:
        problem(f"{path.name}: needs one participant referring to process {process_id}")
    for part in parts:
        if part.get("id") not in shapes or bounds_of(shapes[part.get("id")]) is None:
            problem(f"{path.name}: participant {part.get('id')} has no shape")
    pool = bounds_of(shapes[parts[0].get("id")])

    for msg in root.iterfind("bpmn:message", NS):
        info["messages"][msg.get("id")] = msg.get("name")
        if msg.get("name") not in MESSAGES:
            problem(f"{path.name}: message name {msg.get('name')!r} is not one of the fixed names")

    process = root.find("bpmn:process", NS)
    if process is None or process.get("id") != process_id or process.get("isExecutable") != "true":
        problem(f"{path.name}: needs the executable process {process_id}")
    nodes = {el.get("id"): el for el in process if local(el) in FLOW_NODE_TAGS}
    flows = {el.get("id"): el for el in process if local(el) == "sequenceFlow"}

    # lanes
    lane_of, lane_boxes = {}, {}
    for lane in process.iterfind(".//bpmn:lane", NS):
        name = lane.get("name")
        if name not in LANES:
            problem(f"{path.name}: lane name {name!r} is not a role label")
        if lane.get("id") not in shapes or bounds_of(shapes[lane.get("id")]) is None:
            problem(f"{path.name}: lane {lane.get('id')} has no shape")
            continue
        box = bounds_of(shapes[lane.get("id")])
        if not inside(box, pool):
            problem(f"{path.name}: lane {name} outside its pool")
        for other_id, other in lane_boxes.items():
            if overlap(box, other):
                problem(f"{path.name}: lanes {lane.get('id')} and {other_id} overlap")
        lane_boxes[lane.get("id")] = box
        for ref in lane.iterfind("bpmn:flowNodeRef", NS):
            if ref.text in lane_of:
                problem(f"{path.name}: {ref.text} is in two lanes")
            if ref.text not in nodes:
                problem(f"{path.name}: lane {name} refers to unknown node {ref.text}")
            lane_of[ref.text] = (lane.get("id"), name)

    # nodes
    boxes = {}
    for nid, el in nodes.items():
        kind = local(el)
        if nid not in shapes or bounds_of(shapes[nid]) is None:
            problem(f"{path.name}: flow node {nid} has no shape with bounds")
            continue
        boxes[nid] = bounds_of(shapes[nid])
        if nid not in lane_of:
            problem(f"{path.name}: flow node {nid} is in no lane")
        elif kind != "boundaryEvent" and not inside(boxes[nid], lane_boxes[lane_of[nid][0]]):
            problem(f"{path.name}: {nid} drawn outside its lane {lane_of[nid][1]}")
        if kind != "parallelGateway" and not el.get("name"):
            problem(f"{path.name}: {nid} has no name")
    for a in boxes:
        for b in boxes:
            if a < b and overlap(boxes[a], boxes[b]):
                problem(f"{path.name}: shapes {a} and {b} overlap")
    labels = {}
    for nid, shape in shapes.items():
        lab = shape.find("bpmndi:BPMNLabel", NS)
        if nid in nodes and lab is not None:
            labels[nid] = bounds_of(lab)
            if nid in lane_of and not inside(labels[nid], lane_boxes[lane_of[nid][0]]):
                problem(f"{path.name}: label of {nid} sticks out of its lane")
    for fid, edge in edges.items():
        lab = edge.find("bpmndi:BPMNLabel", NS)
        if lab is not None:
            labels[fid] = bounds_of(lab)
    for lid, lb in labels.items():
        for other, ob in boxes.items():
            if other != lid and overlap(lb, ob):
                problem(f"{path.name}: label of {lid} covers {other}")
        for lid2, lb2 in labels.items():
            if lid < lid2 and overlap(lb, lb2):
                problem(f"{path.name}: labels of {lid} and {lid2} overlap")
        if not inside(lb, pool):
            problem(f"{path.name}: label of {lid} outside the pool")

    # flows
    for fid, fl in flows.items():
        src, tgt = fl.get("sourceRef"), fl.get("targetRef")
        if src not in nodes or tgt not in nodes:
            problem(f"{path.name}: flow {fid} refers to unknown nodes")
            continue
        if fid not in [o.text for o in nodes[src].iterfind("bpmn:outgoing", NS)] or \
                fid not in [i.text for i in nodes[tgt].iterfind("bpmn:incoming", NS)]:
            problem(f"{path.name}: flow {fid} missing from incoming/outgoing of its nodes")
        edge = edges.get(fid)
        wps = [] if edge is None else [(float(w.get("x")), float(w.get("y")))
                                       for w in edge.iterfind("di:waypoint", NS)]
        if len(wps) < 2:
            problem(f"{path.name}: sequence flow {fid} has no edge with 2+ waypoints")
            continue
        if src in boxes and not on_border(wps[0], boxes[src]):
            problem(f"{path.name}: edge {fid} does not start on {src}")
        if tgt in boxes and not on_border(wps[-1], boxes[tgt]):
            problem(f"{path.name}: edge {fid} does not end on {tgt}")
        for p, q in zip(wps, wps[1:]):
            if not (inside((min(p[0], q[0]), min(p[1], q[1]), abs(p[0] - q[0]), abs(p[1] - q[1])), pool)):
                problem(f"{path.name}: edge {fid} leaves the pool")
            for other, ob in boxes.items():
                if other not in (src, tgt) and segment_hits(p, q, ob, f"{path.name}:{fid}"):
                    problem(f"{path.name}: edge {fid} crosses {other}")
    for eid in edges:
        if eid not in flows:
            problem(f"{path.name}: edge for unknown flow {eid}")
    for sid in shapes:
        if sid not in nodes and sid not in lane_boxes and sid != parts[0].get("id"):
            problem(f"{path.name}: shape for unknown element {sid}")

    # names the expressions may read: start data, form keys, message variables, script/service results
    known = set(START_DATA)
    forms: dict[str, dict] = {}
    for nid, el in nodes.items():
        if local(el) == "userTask":
            form = props_of(el).get("form")
            if form and (BPMN_DIR / form).exists():
                forms[nid] = check_form(BPMN_DIR / form)
                known |= set(forms[nid])
        for var in el.iterfind(".//spiffworkflow:messageVariable", NS):
            known.add(var.text.strip())
        for op in el.iterfind(".//spiffworkflow:serviceTaskOperator", NS):
            known.add(op.get("resultVariable"))
        for s in el.iterfind("bpmn:script", NS):
            known |= expr_names(s.text, f"{path.name}:{nid}", mode="exec")[1]
    required = {k for comps in forms.values() for k, c in comps.items()
                if c.get("validate", {}).get("required") or c.get("type") == "checkbox"}

    # gateways
    for nid, el in nodes.items():
        outs = [flows[f.text] for f in el.iterfind("bpmn:outgoing", NS)]
        if local(el) in ("userTask", "serviceTask", "scriptTask", "startEvent", "intermediateCatchEvent",
                         "intermediateThrowEvent") and len(outs) != 1:
            problem(f"{path.name}: {nid} must have exactly one outgoing flow")
        if local(el) == "endEvent" and outs:
            problem(f"{path.name}: end event {nid} has outgoing flows")
        if local(el) == "exclusiveGateway":
            default = el.get("default")
            if default and default not in [f.get("id") for f in outs]:
                problem(f"{path.name}: default of {nid} is not one of its outgoing flows")
            if len(outs) < 2:
                problem(f"{path.name}: gateway {nid} has fewer than two outgoing flows")
            for f in outs:
                cond = f.find("bpmn:conditionExpression", NS)
                if not f.get("name"):
                    problem(f"{path.name}: flow {f.get('id')} out of {nid} has no label")
                if f.get("id") == default:
                    if cond is not None:
                        problem(f"{path.name}: default flow {f.get('id')} has a condition")
                elif cond is None or not (cond.text or "").strip():
                    problem(f"{path.name}: flow {f.get('id')} from {nid} has no condition")
                else:
                    read, _ = expr_names(cond.text, f"{path.name}:{f.get('id')}")
                    for name in read - known:
                        problem(f"{path.name}: condition on {f.get('id')} uses unknown {name}")
                    for name in read & set().union(*[set(c) for c in forms.values()]):
                        if name not in required:
                            problem(f"{path.name}: condition on {f.get('id')} reads {name}, not required")

    # user tasks
    user_ids = [nid for nid, el in nodes.items() if local(el) == "userTask"]
    for nid in user_ids:
        props = props_of(nodes[nid])
        form = props.get("form")
        if form != f"forms/{nid}.form":
            problem(f"{path.name}: user task {nid}: form property must be forms/{nid}.form, got {form}")
        if not form or not (BPMN_DIR / form).exists():
            problem(f"{path.name}: {nid}: form {form} does not exist")
        if props.get("due_in") and not ISO_DURATION.match(props["due_in"]):
            problem(f"{path.name}: {nid}: due_in {props['due_in']} is not an ISO-8601 duration")
        if props.get("distinct_from") and props["distinct_from"] not in user_ids:
            problem(f"{path.name}: {nid}: distinct_from refers to no user task")
        unknown_props = set(props) - {"form", "due_in", "legal_basis", "distinct_from", "clock_start",
                                   "clock_start_after", "clock_stop"}
        if unknown_props:
            problem(f"{path.name}: {nid}: unknown properties {sorted(unknown_props)}")
        info["user_tasks"][nid] = dict(lane=lane_of.get(nid, (None, None))[1], form=form,
                                       keys=sorted(forms.get(nid, {})), props=props)

    # legal clocks on any element
    starts, stops = {}, {}
    for nid, el in nodes.items():
        props = props_of(el)
        for key, where in (("clock_start", starts), ("clock_start_after", starts), ("clock_stop", stops)):
            for cid in [c.strip() for c in (props.get(key) or "").split(",") if c.strip()]:
                if cid not in CLOCKS:
                    problem(f"{path.name}: {nid}: clock id {cid!r} is not in the catalogue")
                where.setdefault(cid, []).append(nid)
    for cid in set(starts) | set(stops):
        if cid not in starts or cid not in stops:
            problem(f"{path.name}: clock {cid} is started or stopped but not both")
        info["clocks"][cid] = (starts.get(cid, []), stops.get(cid, []))

    # service tasks, scripts, message payloads, timers
    for nid, el in nodes.items():
        for p in el.iterfind(".//spiffworkflow:parameter", NS):
            expr_names(p.get("value"), f"{path.name}:{nid}:{p.get('id')}")
        for op in el.iterfind(".//spiffworkflow:serviceTaskOperator", NS):
            params = {p.get("id"): p.get("value") for p in op.iterfind(".//spiffworkflow:parameter", NS)}
            if op.get("id") != "record_communication" or set(params) != {"recipient", "subject"}:
                problem(f"{path.name}: {nid}: service must be record_communication(recipient, subject)")
            info["services"].append((nid, params.get("recipient"), params.get("subject")))
        for s in el.iterfind("bpmn:script", NS):
            read, _ = expr_names(s.text, f"{path.name}:{nid}", mode="exec")
            for name in read - known:
                problem(f"{path.name}: script {nid} uses unknown {name}")
        for med in el.iterfind("bpmn:messageEventDefinition", NS):
            payload = med.find("bpmn:extensionElements/spiffworkflow:messagePayload", NS)
            var = med.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            name = info["messages"].get(med.get("messageRef"))
            if name is None:
                problem(f"{path.name}: {nid}: messageRef {med.get('messageRef')} is not a message")
            if payload is not None:
                read, _ = expr_names(payload.text, f"{path.name}:{nid}:payload")
                for n in read - known:
                    problem(f"{path.name}: payload of {nid} uses unknown {n}")
                if not isinstance(ast.parse(payload.text.strip(), mode="eval").body, ast.Dict):
                    problem(f"{path.name}: payload of {nid} is not a dict display")
                info["throws"].append((nid, name, payload.text.strip()))
            if var is not None:
                info["catches"].append((nid, name, var.text.strip()))
            if local(el) in ("startEvent", "intermediateCatchEvent") and var is None:
                problem(f"{path.name}: {nid} catches {name} without a messageVariable")
        for td in el.iterfind(".//bpmn:timeDuration", NS):
            value = ast.literal_eval(td.text.strip())
            if not ISO_DURATION.match(value):
                problem(f"{path.name}: timer {nid}: {td.text} is not a quoted ISO duration")
            info["timers"].append((nid, "timeDuration", td.text.strip()))
        for td in el.iterfind(".//bpmn:timeDate", NS):
            read, _ = expr_names(td.text, f"{path.name}:{nid}:timeDate")
            for n in read - known:
                problem(f"{path.name}: timer {nid} uses unknown {n}")
            info["timers"].append((nid, "timeDate", td.text.strip()))
    return info


def check_unique_user_tasks() -> None:
    """User task ids (= form file names) must be unique across the whole bpmn/ folder."""
    seen: dict[str, str] = {}
    ours = set(DIAGRAMS)
    for path in sorted(BPMN_DIR.glob("*.bpmn")):
        try:
            root = safe_parse(path)
        except etree.XMLSyntaxError as err:
            print(f"  note: {path.name} (another pathway) does not parse: {err}")
            continue
        for el in root.iterfind(".//bpmn:userTask", NS):
            uid = el.get("id")
            if uid in seen and (path.name in ours or seen[uid] in ours):
                problem(f"user task id {uid} is in both {seen[uid]} and {path.name}")
            seen.setdefault(uid, path.name)


def check_bundles() -> None:
    """What `camins deploy` would do with each of our diagrams."""
    hooks = DomainHooks()
    for files in bundles_from_directory(BPMN_DIR):
        if files[0].name not in DIAGRAMS:
            continue
        try:
            try:
                compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)
            except TypeError:
                compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form)
        except DeployError as err:
            problem(f"{files[0].name}: deploy compilation failed: {err}")
            continue
        print(f"  bundle {files[0].name}: process {compiled.process_key} ({compiled.name}), "
              f"{len(files) - 1} form(s), message starts {compiled.message_starts}")


# --------------------------------------------------------------------------- dynamic
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CLOCK = engine_clock.ManualClock(T0)
engine_clock.set_clock(CLOCK)
COMMUNICATIONS: list[tuple[str, str]] = []


def service_handler(operation, params, context):
    assert operation == "record_communication", operation
    assert set(params) == {"recipient", "subject"}, params
    COMMUNICATIONS.append((params["recipient"], params["subject"]))
    return json.dumps({"ok": True, "recipient": params["recipient"]})


ENGINE = SandboxedScriptEngine(clock=CLOCK.now, service_handler=service_handler)
STATE = StateSerializer()
FORMS = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (BPMN_DIR / "forms").glob("*.form")}


def load_spec(bpmn: str, process_id: str):
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN_DIR / bpmn))
    return parser.get_spec(process_id), parser.get_subprocess_specs(process_id)


class Run:
    """One instance of a process, stepped like the engine does (state saved after every step)."""

    def __init__(self, specs, birth: str, label: str):
        self.spec, self.subs = specs
        self.label = label
        self.thrown: list[tuple[str, dict]] = []
        self.path: list[str] = []
        wf = BpmnWorkflow(self.spec, self.subs, script_engine=ENGINE)
        for task in wf.get_tasks(spec_name="Start"):
            task.data.update({"data_naixement": birth})
        self.wf = wf
        self.step()

    def step(self):
        self.wf.do_engine_steps()
        self.thrown += [(e.event_definition.name, e.payload) for e in self.wf.get_events()]
        self.wf = STATE.loads(STATE.dumps(self.wf), self.spec, self.subs, ENGINE)

    def ready(self):
        return sorted(t.task_spec.name for t in self.wf.get_tasks(state=TaskState.READY) if t.task_spec.manual)

    def waiting_messages(self):
        return sorted(t.task_spec.event_definition.name for t in self.wf.get_tasks(state=TaskState.WAITING)
                      if isinstance(getattr(t.task_spec, "event_definition", None), MessageEventDefinition))

    def timers(self):
        return [(e.name, e.event_type, e.value) for e in self.wf.waiting_events()
                if e.event_type in ("TimeDateEventDefinition", "DurationTimerEventDefinition",
                                    "CycleTimerEventDefinition")]

    def deliver(self, name: str, payload: dict):
        waiting = [t for t in self.wf.get_tasks(state=TaskState.WAITING)
                   if isinstance(getattr(t.task_spec, "event_definition", None), MessageEventDefinition)
                   and t.task_spec.event_definition.name == name]
        assert waiting, f"{self.label}: nothing waits for {name} (waiting: {self.waiting_messages()})"
        self.wf.send_event(BpmnEvent(waiting[0].task_spec.event_definition, payload=payload))
        self.path.append(f"<{name}>")
        self.step()

    def fire_timers(self):
        self.wf.refresh_timers()
        self.step()

    def complete(self, spec_name: str, lane: str, **values):
        ready = {t.task_spec.name: t for t in self.wf.get_tasks(state=TaskState.READY) if t.task_spec.manual}
        assert spec_name in ready, f"{self.label}: expected {spec_name} READY, got {sorted(ready)}"
        task = ready[spec_name]
        assert task.task_spec.lane == lane, (spec_name, task.task_spec.lane, lane)
        form_ref = task.task_spec.extensions["properties"]["form"]
        form = FORMS[Path(form_ref).stem]
        data = fill(form, values)
        cleaned = validate_submission(form, data)       # the server's own submission check
        task.data.update(cleaned)
        task.run()
        self.path.append(spec_name)
        self.step()
        return task

    def ended(self):
        assert self.wf.is_completed(), (self.label, self.ready(), self.waiting_messages(), self.timers())
        return self.thrown


def fill(form: dict, values: dict) -> dict:
    """A complete submission: the given values plus a plausible value for every other field."""
    data = {}
    for c in form["components"]:
        key, t = c["key"], c["type"]
        if key in values:
            data[key] = values[key]
        elif t == "datetime":
            data[key] = CLOCK.now().date().isoformat()
        elif t in ("select", "radio"):
            data[key] = c["values"][0]["value"]
        elif t == "number":
            data[key] = c.get("validate", {}).get("min", 1)
        elif t == "checkbox":
            data[key] = False
        else:
            data[key] = "Text de prova"
    unknown = set(values) - set(data)
    assert not unknown, f"values for keys not in the form: {unknown}"
    return data


LANE_TAF = "Tècnic/a d'acolliment familiar"
LANE_CAP = "Cap de secció IMAS"
LANE_PSI = "Psicòleg/psicòloga IMAS"
LANE_TAD = "Tècnic/a d'adopcions"
LANE_COM = "Comissió de Desemparament i Tutela"
LANE_JUR = "Jurista IMAS"
LANE_TEM = "Tècnic/a d'emancipació"

SPECS: dict[str, tuple] = {}
REVISIO = None


def revisio_chain(payload: dict, birth: str, reviews: int) -> dict:
    """Runs the separate `revisio` process (if present) for `reviews` reviews; returns the
    revisions_finalitzades payload. Falls back to a synthetic message if revisio is not usable."""
    global REVISIO
    try:
        if REVISIO is None:
            REVISIO = load_spec("revisio.bpmn", "revisio")
        current = payload
        for n in range(1, reviews + 1):
            r = Run(REVISIO, birth, f"revisio {n}")
            r.deliver("revisio_programada", current)
            assert r.timers(), "revisio does not wait on its timer"
            CLOCK.advance(timedelta(days=190))
            r.fire_timers()
            last = n == reviews
            r.complete("revisio_imas", "Professional de referència IMAS", continuar_revisions=not last,
                       resultat="objectius_assolits" if last else "en_curs")
            (name, current), = r.ended()
            assert name == ("revisions_finalitzades" if last else "revisio_programada"), name
        print(f"      (revisio.bpmn ran {reviews} review instance(s), chained by revisio_programada)")
        return current
    except Exception as err:        # revisio is another helper's diagram: note, don't fail
        print(f"      note: revisio.bpmn not used ({type(err).__name__}: {err}); synthetic message")
        return {"resultat": "objectius_assolits", "ambit": "imas"}


def run_acolliment(tipus: str, urgencia_mesura: str | None = None, use_revisio: bool = False):
    CLOCK.set(T0)
    COMMUNICATIONS.clear()
    birth = "2019-06-10"
    r = Run(SPECS["acolliment"], birth, f"acolliment {tipus}")
    assert r.waiting_messages() == ["inici_acolliment"], r.waiting_messages()
    r.deliver("inici_acolliment", {"mesura": "acolliment_familiar"})
    for round_ in (1, 2):
        r.complete("p6_proposta_acoplament", LANE_TAF, tipus_acolliment=tipus, familia_extensa=tipus == "permanent",
                   codi_expedient_familia="FA-2025-014")
        r.complete("p6_resolucio_formalitzacio", LANE_CAP, compensacio_economica=True)
        assert COMMUNICATIONS[-1][0] == "Fiscalia de Menors", COMMUNICATIONS
        # the review chain is handed to `revisio`: one throw, then wait
        (name, payload), = [t for t in r.thrown if t[0] == "revisio_programada"][-1:]
        # Emergency care is reviewed more often (2 months), so its decision comes within its 6 months.
        ambit = "urgencia" if tipus == "urgencia" else "imas"
        assert payload == {"ambit": ambit, "numero": 1, "data_naixement": birth}, payload
        assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
        assert r.ready() == []
        result = revisio_chain(payload, birth, 2) if use_revisio else \
            {"resultat": "objectius_assolits", "ambit": "imas"}
        r.deliver("revisions_finalitzades", result)
        assert r.wf.get_tasks(state=TaskState.READY)[0].data["revisions"] == result
        if tipus != "urgencia":
            break
        r.complete("p6_decidir_mesura_urgencia", LANE_CAP, mesura_seguent=urgencia_mesura)
        if urgencia_mesura not in ("acolliment_temporal", "acolliment_permanent"):
            break
        assert r.ready() == ["p6_proposta_acoplament"], r.ready()   # new matching and formalisation
        tipus = urgencia_mesura.split("_")[1]
        assert round_ == 1
    r.complete("p6_tancar_acolliment", LANE_TAF, motiu_fi="retorn_familia" if tipus != "permanent" else "majoria_edat")
    return r.ended(), r


def run_familia(idonia: bool):
    CLOCK.set(T0)
    COMMUNICATIONS.clear()
    r = Run(SPECS["familia_acollidora"], "2019-06-10", "familia_acollidora")
    r.complete("p6_sessio_informativa", LANE_TAF, modalitat_interes="temporal", nombre_assistents=2)
    r.complete("p6_sollicitud_familia", LANE_TAF, codi_expedient_familia="FA-2025-020", familia_extensa=False)
    r.complete("p6_formacio_familia", LANE_TAF, hores_formacio=24)
    r.complete("p6_valoracio_idoneitat", LANE_PSI, idonia=idonia, modalitat_idonia="temporal")
    ended = r.ended()
    end = [t for t in r.wf.get_tasks(state=TaskState.COMPLETED) if t.task_spec.name.startswith("fi_")][0]
    if idonia:
        assert COMMUNICATIONS == [], COMMUNICATIONS
    else:
        assert [c[0] for c in COMMUNICATIONS] == ["Família"], COMMUNICATIONS
    return ended, end.task_spec.name, r


def run_adopcio(declarada: bool, constituida: bool | None = None):
    CLOCK.set(T0)
    COMMUNICATIONS.clear()
    r = Run(SPECS["adopcio"], "2023-01-20", "adopcio")
    assert r.waiting_messages() == ["inici_adopcio"], r.waiting_messages()
    r.deliver("inici_adopcio", {"mesura": "adopcio"})
    r.complete("p7_proposta_adoptabilitat", LANE_TAD)
    r.complete("p7_declaracio_adoptabilitat", LANE_COM, adoptabilitat_declarada=declarada)
    if declarada:
        r.complete("p7_assignar_familia", LANE_TAD, codi_expedient_sollicitants="AD-2024-007", idoneitat_vigent=True)
        r.complete("p7_resolucio_guarda_adoptiva", LANE_CAP, data_resolucio_guarda="2025-03-03")
        task = [t for t in r.wf.get_tasks(state=TaskState.READY) if t.task_spec.name == "p7_proposta_jutjat"][0]
        props = task.task_spec.extensions["properties"]
        assert props["due_in"] == "P3M" and props["clock_stop"] == "adoption_proposal", props
        CLOCK.advance(timedelta(days=60))
        r.complete("p7_proposta_jutjat", LANE_JUR, jutjat="Jutjat de Primera Instància núm. 3 de Palma")
        assert [c[0] for c in COMMUNICATIONS] == ["Fiscalia de Menors", "Jutjat de família"], COMMUNICATIONS
        assert r.waiting_messages() == ["sentencia_judicial"], r.waiting_messages()
        r.deliver("sentencia_judicial", {"adopcio_constituida": constituida})
        if constituida:
            assert COMMUNICATIONS[-1][1] == "Conservació de l'expedient d'origen durant 50 anys", COMMUNICATIONS
            r.complete("p7_seguiment_postadoptiu", LANE_TAD, resultat_seguiment="adaptacio_adequada")
    return r.ended(), r


def run_sollicitants(idonia: bool):
    CLOCK.set(T0)
    COMMUNICATIONS.clear()
    r = Run(SPECS["sollicitants_adopcio"], "2019-06-10", "sollicitants_adopcio")
    r.complete("p7_sessio_informativa_adopcio", LANE_TAD, nombre_sollicitants=2,
               codi_expedient_sollicitants="AD-2025-031")
    r.complete("p7_formacio_sollicitants", LANE_TAD, hores_formacio_adopcio=30)
    r.complete("p7_declaracio_idoneitat", LANE_PSI, idonia=idonia)
    ended = r.ended()
    end = [t for t in r.wf.get_tasks(state=TaskState.COMPLETED) if t.task_spec.name.startswith("fi_")][0]
    assert [c[0] for c in COMMUNICATIONS] == ([] if idonia else ["Sol·licitants"]), COMMUNICATIONS
    return ended, end.task_spec.name, r


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def run_emancipacio(birth: str, consent: bool, expect_wait_until: str | None, verbose: bool = False):
    """Start on T0 (2025-03-03 09:00 UTC). If expect_wait_until is given, the young person is under 16
    and the path must wait until that date; the 18th birthday timer must fire exactly on its date."""
    CLOCK.set(T0)
    r = Run(SPECS["emancipacio"], birth, f"emancipacio {birth}")
    r.deliver("inici_emancipacio", {"mesura": "emancipacio"})
    b = date.fromisoformat(birth)
    sixteen = date(b.year + 16, b.month, b.day) if (b.month, b.day) != (2, 29) else date(b.year + 16, 2, 28)
    eighteen = date(b.year + 18, b.month, b.day) if (b.month, b.day) != (2, 29) else date(b.year + 18, 2, 28)

    def say(msg):
        if verbose:
            print(f"      {msg}")

    if expect_wait_until:
        assert sixteen.isoformat() == expect_wait_until
        assert r.ready() == [], r.ready()
        timers = r.timers()
        assert timers == [("Compleix 16 anys", "TimeDateEventDefinition", f"{expect_wait_until}T00:00:00+00:00")], timers
        say(f"{T0:%Y-%m-%d %H:%M} start, age 15: waits on timer 'Compleix 16 anys' due {timers[0][2]}")
        CLOCK.set(at(f"{(sixteen - timedelta(days=1)).isoformat()}T23:59:59"))
        r.fire_timers()
        assert r.ready() == [], r.ready()
        say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} (day before the 16th birthday): still waiting")
        CLOCK.set(at(f"{sixteen.isoformat()}T00:00:00"))
        r.fire_timers()
        assert r.ready() == [], "Spiff fires a timer only when due < now (strictly)"
        say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} (exactly the due instant): not yet (Spiff needs due < now)")
        CLOCK.set(at(f"{sixteen.isoformat()}T00:00:01"))
        r.fire_timers()
        assert r.ready() == ["p8_consentiment"], r.ready()
        say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} (16th birthday): p8_consentiment ready")
    else:
        assert r.ready() == ["p8_consentiment"], (r.ready(), r.timers())
    r.complete("p8_consentiment", LANE_TEM, consentiment=consent)
    if not consent:
        return r.ended(), r
    r.complete("p8_pla_autonomia", LANE_TEM, objectiu_principal="formacio")
    CLOCK.advance(timedelta(days=30))
    r.complete("p8_admissio_programa", LANE_TEM, programa="pis_autonomia")
    timers = r.timers()
    assert timers == [("Compleix 18 anys", "TimeDateEventDefinition", f"{eighteen.isoformat()}T00:00:00+00:00")], timers
    say(f"{CLOCK.now():%Y-%m-%d} programme admission: waits on 'Compleix 18 anys' due {timers[0][2]}")
    CLOCK.set(at(f"{(eighteen - timedelta(days=1)).isoformat()}T23:59:59"))
    r.fire_timers()
    assert r.ready() == [], r.ready()
    say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} (day before the 18th birthday): still waiting")
    CLOCK.set(at(f"{eighteen.isoformat()}T00:00:01"))
    r.fire_timers()
    assert r.ready() == ["p8_suport_post18"], r.ready()
    say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} (18th birthday): p8_suport_post18 ready")
    r.complete("p8_suport_post18", LANE_TEM, data_sortida_centre=eighteen.isoformat(), ajuda_economica=True,
               xarxa_emancipacio=True)
    (name, kind, due), = r.timers()
    assert kind == "DurationTimerEventDefinition" and datetime.fromisoformat(due) == \
        at(f"{eighteen.replace(year=eighteen.year + 1).isoformat()}T00:00:01"), due
    say(f"follow-up timer 'Un any de seguiment' due {due}")
    CLOCK.set(datetime.fromisoformat(due) - timedelta(seconds=1))
    r.fire_timers()
    assert r.ready() == [], r.ready()
    CLOCK.set(datetime.fromisoformat(due) + timedelta(seconds=1))
    r.fire_timers()
    r.complete("p8_tancar_seguiment", LANE_TEM, situacio_final="autonomia_assolida")
    return r.ended(), r


def run_emancipacio_late():
    """17 years 11 months at the start; the 18th birthday passes before the programme admission:
    the timeDate is then in the past and SpiffWorkflow fires it at once, without a refresh."""
    CLOCK.set(T0)
    r = Run(SPECS["emancipacio"], "2007-03-20", "emancipacio late")
    r.deliver("inici_emancipacio", {"mesura": "emancipacio"})
    r.complete("p8_consentiment", LANE_TEM, consentiment=True)
    r.complete("p8_pla_autonomia", LANE_TEM)
    CLOCK.set(at("2025-04-02T10:00:00"))
    r.complete("p8_admissio_programa", LANE_TEM)
    assert r.ready() == ["p8_suport_post18"] and r.timers() == [], (r.ready(), r.timers())
    r.complete("p8_suport_post18", LANE_TEM)
    CLOCK.advance(timedelta(days=367))
    r.fire_timers()
    r.complete("p8_tancar_seguiment", LANE_TEM, situacio_final="xarxa_govern")
    return r.ended(), r


def main() -> int:
    print("== static checks")
    infos = {}
    for name, process_id in DIAGRAMS.items():
        infos[name] = check_diagram(BPMN_DIR / name, process_id)
    check_unique_user_tasks()
    ours = {f"forms/{nid}.form" for i in infos.values() for nid in i["user_tasks"]}
    for f in sorted((BPMN_DIR / "forms").glob("p[678]_*.form")):
        if f"forms/{f.name}" not in ours:
            problem(f"form {f.name} is used by no user task of these diagrams")
    check_bundles()
    for name, info in infos.items():
        print(f"  -- {name}")
        for nid, u in info["user_tasks"].items():
            extra = {k: v for k, v in u["props"].items() if k != "form"}
            print(f"     {nid} [{u['lane']}] keys={u['keys']} {extra or ''}")
        for nid, msg, payload in info["throws"]:
            print(f"     {nid} throws {msg} payload {payload}")
        for nid, msg, var in info["catches"]:
            print(f"     {nid} catches {msg} into {var}")
        for nid, kind, expr in info["timers"]:
            print(f"     timer {nid}: {kind} {expr}")
        for nid, rec, subj in info["services"]:
            print(f"     service {nid}: record_communication({rec}, {subj})")
        for cid, (st, sp) in info["clocks"].items():
            print(f"     clock {cid}: start {st} stop {sp}")

    print("== runs")
    results = []

    def record(label, got, expected_end, expected_throws=()):
        names = [n for n, _p in got]
        expected = list(expected_throws) + ([expected_end] if expected_end else [])
        ok = names == expected
        results.append(ok)
        print(f"  {'ok ' if ok else 'BAD'} {label}: threw {got}")
        if not ok:
            problem(f"{label}: expected messages {expected}, got {names}")

    for name, process_id in DIAGRAMS.items():
        SPECS[process_id] = load_spec(name, process_id)

    def attempt(label, fn, *args, end=None, throws=(), **kwargs):
        try:
            out = fn(*args, **kwargs)
        except Exception as err:    # report and continue with the other paths
            problem(f"{label}: {type(err).__name__}: {err}")
            results.append(False)
            return None
        got = out[0]
        record(label, got, end, throws)
        return out

    rv = ("revisio_programada",)
    out = attempt("acolliment temporal (revisions amb revisio.bpmn)", run_acolliment, "temporal",
                  use_revisio=True, end="acolliment_finalitzat", throws=rv)
    if out:
        print(f"      path: {' > '.join(out[1].path)}")
    attempt("acolliment permanent", run_acolliment, "permanent", end="acolliment_finalitzat", throws=rv)
    out = attempt("acolliment d'urgència > acolliment permanent (nova formalització)", run_acolliment, "urgencia",
                  urgencia_mesura="acolliment_permanent", end="acolliment_finalitzat", throws=rv + rv)
    if out:
        print(f"      path: {' > '.join(out[1].path)}")
    attempt("acolliment d'urgència > retorn a la família", run_acolliment, "urgencia",
            urgencia_mesura="retorn_familia", end="acolliment_finalitzat", throws=rv)
    for idonia in (True, False):
        out = attempt(f"familia_acollidora idònia={idonia}", run_familia, idonia, end=None)
        if out:
            print(f"      ended at {out[1]}; communications {COMMUNICATIONS}")
    attempt("adopcio constituïda", run_adopcio, True, True, end="adopcio_constituida")
    attempt("adopcio no constituïda (sentència)", run_adopcio, True, False, end="adopcio_no_constituida")
    attempt("adopcio: adoptabilitat no declarada", run_adopcio, False, end="adopcio_no_constituida")
    for idonia in (True, False):
        out = attempt(f"sollicitants_adopcio idonis={idonia}", run_sollicitants, idonia, end=None)
        if out:
            print(f"      ended at {out[1]}; communications {COMMUNICATIONS}")
    print("  emancipacio, 15 anys i 10 mesos (nascut 2009-05-03, inici 2025-03-03):")
    attempt("emancipacio 15a10m: espera als 16, consent, 18 anys, seguiment d'1 any", run_emancipacio,
            "2009-05-03", True, "2025-05-03", verbose=True, end="emancipacio_finalitzada")
    attempt("emancipacio 16 anys fets avui, no consent", run_emancipacio, "2009-03-03", False, None,
            end="emancipacio_rebutjada")
    attempt("emancipacio 17 anys, consent", run_emancipacio, "2008-01-15", True, None,
            end="emancipacio_finalitzada")
    attempt("emancipacio 17 anys i 11 mesos, 18 complerts abans de l'admissió", run_emancipacio_late,
            end="emancipacio_finalitzada")

    print(f"== {len(results)} runs, {sum(results)} ok; {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
