"""Checks of pathway 3 (bpmn/intervencio.bpmn) and of the review process (bpmn/revisio.bpmn).

Runs on its own, printing a report:  .venv/bin/python tests/diagram_checks_p3.py

Modelled on tests/diagram_checks.py:

1. Static checks (lxml): no DOCTYPE, full diagram interchange (a shape with bounds for every
   participant, lane and flow node, an edge with >= 2 waypoints for every sequence flow),
   layout sanity (nodes inside their lane, no overlapping shapes or labels, edges that start
   and end on their nodes and cross no other node), lane names from the role catalogue, user
   task properties, legal clock ids from the catalogue, exclusive gateway conditions (names
   they read exist; form keys they read are required), event-based gateways, message names
   and payload keys of the hand-offs, form-js files. Both diagrams also go through the
   engine's own deploy checks (engine.bundle.compile_bundle with the domain hooks).
2. Dynamic checks: parse with SpiffBpmnParser (XSD-validated) and run every gateway branch to
   its end with the project's sandboxed script engine and one manual clock (timers fire by
   moving the clock). Pathway 3 runs drive real `revisio` instances for their reviews: the
   `revisio_programada` event thrown by one instance starts the next. Every submission is
   validated against its form first, as the service does. Prints the messages each run ends
   with, the review intervals around the third birthday, and the serialized size of 40
   chained review instances.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lxml import etree  # noqa: E402
from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow  # noqa: E402
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer  # noqa: E402
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition  # noqa: E402
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition  # noqa: E402
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition  # noqa: E402
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from engine import clock as engine_clock  # noqa: E402  (patches Spiff's timers to read our clock)
from engine.sandbox import SandboxedScriptEngine  # noqa: E402
from engine.serializer import StateSerializer  # noqa: E402  (what the engine stores: no spec)
from workflows.forms import parse_form, validate_submission  # noqa: E402

BPMN_DIR = ROOT / "bpmn"
DIAGRAMS = {"intervencio.bpmn": "intervencio", "revisio.bpmn": "revisio"}

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core",
}
ROLE_LANES = {
    "Treballador/a social", "Educador/a social", "Treballador/a familiar", "Auxiliar administratiu/va",
    "Coordinador/a SSCB", "Referent d'infància IMAS", "Equip de primera valoració i urgències",
    "Professional de referència IMAS", "Psicòleg/psicòloga IMAS", "Jurista IMAS", "Cap de secció IMAS",
    "Tècnic/a d'acolliment familiar", "Tècnic/a d'adopcions", "Tècnic/a d'emancipació",
    "Comissió de Declaració de Risc", "Comissió de Desemparament i Tutela",
}
CLOCK_IDS = {
    "risk_allegations", "risk_proposal", "risk_procedure", "intervention_project", "imas_prior_inquiries",
    "guardianship_proposal", "resolution_notice", "urgent_diligences", "protection_plan",
    "temporary_measure_limit", "post_return_followup", "foster_fiscalia", "emergency_foster_limit",
    "adoption_proposal", "post_care_followup",
}
# Fixed hand-off names and the payload keys the other pathways rely on (None: not checked).
MESSAGE_KEYS = {
    "derivacio_intervencio_municipal": None,
    "revisio_programada": {"ambit", "numero", "data_naixement"},
    "revisions_finalitzades": {"resultat", "ambit"},
    "derivacio_proteccio_imas": {"gravetat", "puntuacio", "origen"},
    "intervencio_tancada": None,
    "consentiment_familia": None,
    "negativa_familia": None,
    "al_legacions_presentades": None,
}
FLOW_NODE_TAGS = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "exclusiveGateway", "parallelGateway",
    "inclusiveGateway", "eventBasedGateway", "complexGateway",
}
FORM_TYPES = {"textfield", "textarea", "number", "checkbox", "select", "radio", "datetime"}
SAFE_CALLS = {"len", "min", "max", "int", "float", "str", "bool", "abs", "round", "sum", "list", "dict", "set",
              "tuple", "range", "sorted", "any", "all", "enumerate", "zip", "isinstance",
              "today", "now", "date", "timedelta", "parse_date", "age_in_years", "add_months", "days_between",
              "iso_duration"}
SAFE_NAMES = SAFE_CALLS | {"True", "False", "None"}
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
    """Component by key; problems for anything outside the conventions."""
    comps_by_key: dict[str, dict] = {}
    try:
        raw = path.read_bytes()
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as err:
        problem(f"{path.name}: not valid JSON ({err})")
        return comps_by_key
    try:
        parse_form(raw, path.name)          # the service's own deploy-time check
    except ValueError as err:
        problem(f"{path.name}: rejected by workflows.forms: {err}")
    if doc.get("type") != "default" or not doc.get("id") or doc.get("schemaVersion") != 16:
        problem(f"{path.name}: needs type 'default', an id and schemaVersion 16")
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
            elif t == "radio" and all(isinstance(v["value"], bool) for v in vals) \
                    and {v["value"] for v in vals} != {True, False}:
                problem(f"{path.name}: {key}: a yes/no radio needs the values true and false")
        v = c.get("validate", {})
        if not isinstance(v, dict) or not set(v) <= {"required", "min", "max", "minLength", "maxLength"}:
            problem(f"{path.name}: {key}: bad validate {v!r}")
        if t == "checkbox" and v.get("required"):
            problem(f"{path.name}: {key}: a required checkbox forces the box to be ticked")
    return comps_by_key


# --------------------------------------------------------------------------- expressions
def expr_names(source: str, where: str, mode: str = "eval") -> tuple[set[str], set[str]]:
    """Names read and names assigned by an expression or script; flags unsafe constructs."""
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
            problem(f"{where}: attribute access .{node.attr} not allowed")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                problem(f"{where}: name {node.id} starts with underscore")
            (written if isinstance(node.ctx, ast.Store) else read).add(node.id)
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in SAFE_CALLS):
                problem(f"{where}: call to {ast.dump(node.func)} not allowed")
    return read - SAFE_NAMES, written


def dict_keys(source: str) -> set[str] | None:
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Dict) or not all(isinstance(k, ast.Constant) for k in tree.keys):
        return None
    return {k.value for k in tree.keys}


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


def segment_hits(p, q, r):
    """Axis-aligned segment p-q crosses the interior of rectangle r (shrunk by 1px)."""
    x0, y0, x1, y1 = r[0] + 1, r[1] + 1, r[0] + r[2] - 1, r[1] + r[3] - 1
    if abs(p[0] - q[0]) < 0.01:     # vertical
        return x0 < p[0] < x1 and max(p[1], q[1]) > y0 and min(p[1], q[1]) < y1
    if abs(p[1] - q[1]) < 0.01:     # horizontal
        return y0 < p[1] < y1 and max(p[0], q[0]) > x0 and min(p[0], q[0]) < x1
    problem(f"diagonal edge segment {p}->{q}")
    return False


# --------------------------------------------------------------------------- static check
def props_of(el) -> dict:
    return {p.get("name"): p.get("value")
            for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property", NS)}


def check_diagram(path: Path) -> dict:
    print(f"static: {path.name}")
    root = safe_parse(path)
    shapes = {s.get("bpmnElement"): s for s in root.iterfind(".//bpmndi:BPMNShape", NS)}
    edges = {e.get("bpmnElement"): e for e in root.iterfind(".//bpmndi:BPMNEdge", NS)}
    info = {"user_tasks": {}, "messages": {}, "conditions": {}, "throws": [], "catches": [], "clocks": {},
            "timers": []}

    for part in root.iterfind(".//bpmn:participant", NS):
        if part.get("id") not in shapes or bounds_of(shapes[part.get("id")]) is None:
            problem(f"{path.name}: participant {part.get('id')} has no shape")
    pool = bounds_of(shapes[root.find(".//bpmn:participant", NS).get("id")])
    for msg in root.iterfind("bpmn:message", NS):
        info["messages"][msg.get("id")] = msg.get("name")
        if msg.get("name") not in MESSAGE_KEYS:
            problem(f"{path.name}: message {msg.get('name')} is not one of the agreed names")

    process = root.find("bpmn:process", NS)
    if process is None or process.get("isExecutable") != "true" or process.get("id") != DIAGRAMS[path.name]:
        problem(f"{path.name}: needs one executable process {DIAGRAMS[path.name]}")
    nodes = {el.get("id"): el for el in process if local(el) in FLOW_NODE_TAGS}
    flows = {el.get("id"): el for el in process if local(el) == "sequenceFlow"}

    # lanes
    lane_of, lane_boxes = {}, {}
    for lane in process.iterfind(".//bpmn:lane", NS):
        name = lane.get("name")
        if name not in ROLE_LANES:
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
            for other, ob in boxes.items():
                if other != nid and overlap(labels[nid], ob):
                    problem(f"{path.name}: label of {nid} covers {other}")
            if not inside(labels[nid], pool):
                problem(f"{path.name}: label of {nid} is outside the pool")
    for fid, edge in edges.items():
        lab = edge.find("bpmndi:BPMNLabel", NS)
        if lab is not None:
            labels[fid] = bounds_of(lab)
            for other, ob in boxes.items():
                if overlap(labels[fid], ob):
                    problem(f"{path.name}: label of flow {fid} covers {other}")
    for a in labels:
        for b in labels:
            if a < b and overlap(labels[a], labels[b]):
                problem(f"{path.name}: labels of {a} and {b} overlap")

    # flows
    for fid, fl in flows.items():
        src, tgt = fl.get("sourceRef"), fl.get("targetRef")
        if src not in nodes or tgt not in nodes:
            problem(f"{path.name}: flow {fid} refers to unknown nodes")
            continue
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
        if wps[-1][0] < wps[0][0] - 1:
            problem(f"{path.name}: edge {fid} runs right to left")
        host = nodes[src].get("attachedToRef")
        for p, q in zip(wps, wps[1:], strict=False):
            for other, ob in boxes.items():
                if other not in (src, tgt, host) and segment_hits(p, q, ob):
                    problem(f"{path.name}: edge {fid} crosses {other}")
    for nid, el in nodes.items():
        ins = [f for f in flows.values() if f.get("targetRef") == nid]
        outs = [f for f in flows.values() if f.get("sourceRef") == nid]
        if local(el) != "startEvent" and not ins:
            problem(f"{path.name}: {nid} has no incoming flow")
        if local(el) != "endEvent" and not outs:
            problem(f"{path.name}: {nid} has no outgoing flow")

    # names set inside the diagram (message variables, scripts, service results) + start data + form keys
    known = set(START_DATA)
    form_comps: dict[str, dict] = {}
    for el in process.iter():
        if not isinstance(el.tag, str):
            continue
        if local(el) == "messageVariable":
            known.add(el.text.strip())
        if local(el) == "serviceTaskOperator" and el.get("resultVariable"):
            known.add(el.get("resultVariable"))
        if local(el) == "script":
            known |= expr_names(el.text, f"{path.name}:script", mode="exec")[1]

    # user tasks
    user_ids = [nid for nid, el in nodes.items() if local(el) == "userTask"]
    for nid in user_ids:
        el = nodes[nid]
        props = props_of(el)
        form = props.get("form")
        if form != f"forms/{nid}.form":
            problem(f"{path.name}: user task {nid} must use form forms/{nid}.form (has {form})")
            continue
        form_path = BPMN_DIR / form
        comps = check_form(form_path) if form_path.exists() else {}
        if not form_path.exists():
            problem(f"{path.name}: {nid}: form {form} does not exist")
        form_comps.update(comps)
        known |= set(comps)
        if props.get("due_in") and not ISO_DURATION.match(props["due_in"]):
            problem(f"{path.name}: {nid}: due_in {props['due_in']} is not an ISO-8601 duration")
        if props.get("distinct_from") and props["distinct_from"] not in user_ids:
            problem(f"{path.name}: {nid}: distinct_from refers to no user task")
        if not (props.get("legal_basis") or "").startswith(("Llei 9/2019", "LO 1/1996", "CC")):
            problem(f"{path.name}: {nid}: legal_basis missing or not citing a law")
        info["user_tasks"][nid] = dict(lane=lane_of.get(nid, (None, None))[1], form=form,
                                       keys=list(comps), props=props)

    # clocks: only on elements whose extensions Spiff parses (tasks and events, not gateways)
    for nid, el in nodes.items():
        props = props_of(el)
        for key in ("clock_start", "clock_stop"):
            for cid in [c.strip() for c in (props.get(key) or "").split(",") if c.strip()]:
                if cid not in CLOCK_IDS:
                    problem(f"{path.name}: {nid}: unknown clock id {cid}")
                if local(el).endswith("Gateway"):
                    problem(f"{path.name}: {nid}: clocks on gateways are ignored by SpiffWorkflow")
                info["clocks"].setdefault(cid, {"clock_start": [], "clock_stop": []})[key].append(nid)
    for cid, where in info["clocks"].items():
        if not where["clock_start"] or not where["clock_stop"]:
            problem(f"{path.name}: clock {cid} is started or stopped nowhere: {where}")

    # gateways
    for nid, el in nodes.items():
        outs = [flows[f.text] for f in el.iterfind("bpmn:outgoing", NS)]
        if local(el) == "exclusiveGateway":
            default = el.get("default")
            if default and default not in [f.get("id") for f in outs]:
                problem(f"{path.name}: default of {nid} is not one of its outgoing flows")
            for f in outs:
                cond = f.find("bpmn:conditionExpression", NS)
                if f.get("id") == default:
                    if cond is not None:
                        problem(f"{path.name}: default flow {f.get('id')} has a condition")
                elif cond is None or not (cond.text or "").strip():
                    problem(f"{path.name}: flow {f.get('id')} from {nid} has no condition")
                else:
                    read, _ = expr_names(cond.text, f"{path.name}:{f.get('id')}")
                    info["conditions"][f.get("id")] = (cond.text.strip(), sorted(read))
                    for name in read - known:
                        problem(f"{path.name}: condition on {f.get('id')} uses unknown {name}")
                    for name in read & set(form_comps):
                        c = form_comps[name]
                        if c["type"] != "checkbox" and not c.get("validate", {}).get("required"):
                            problem(f"{path.name}: condition on {f.get('id')} reads {name}, not required")
        if local(el) == "eventBasedGateway":
            for f in outs:
                target = nodes[f.get("targetRef")]
                if local(target) != "intermediateCatchEvent":
                    problem(f"{path.name}: event-based gateway {nid} leads to {local(target)}")
                if f.find("bpmn:conditionExpression", NS) is not None:
                    problem(f"{path.name}: flow {f.get('id')} after an event-based gateway has a condition")

    # service tasks, scripts, message payloads, timers
    for nid, el in nodes.items():
        for p in el.iterfind(".//spiffworkflow:parameter", NS):
            read, _ = expr_names(p.get("value"), f"{path.name}:{nid}:{p.get('id')}")
            for name in read - known:
                problem(f"{path.name}: parameter {p.get('id')} of {nid} uses unknown {name}")
        op = el.find(".//spiffworkflow:serviceTaskOperator", NS)
        if local(el) == "serviceTask":
            params = {p.get("id") for p in el.iterfind(".//spiffworkflow:parameter", NS)}
            if op is None or op.get("id") != "record_communication" or params != {"recipient", "subject"}:
                problem(f"{path.name}: service task {nid} must call record_communication(recipient, subject)")
        for s in el.iterfind("bpmn:script", NS):
            read, _ = expr_names(s.text, f"{path.name}:{nid}", mode="exec")
            for name in read - known:
                problem(f"{path.name}: script {nid} uses unknown {name}")
        for med in el.iterfind("bpmn:messageEventDefinition", NS):
            payload = med.find("bpmn:extensionElements/spiffworkflow:messagePayload", NS)
            var = med.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            name = info["messages"].get(med.get("messageRef"))
            if name is None:
                problem(f"{path.name}: {nid} refers to an undeclared message")
            if local(el) in ("endEvent", "intermediateThrowEvent"):
                if payload is None:
                    problem(f"{path.name}: {nid} throws {name} without a payload")
                    continue
                read, _ = expr_names(payload.text, f"{path.name}:{nid}:payload")
                for n in read - known:
                    problem(f"{path.name}: payload of {nid} uses unknown {n}")
                keys = dict_keys(payload.text)
                if keys is None:
                    problem(f"{path.name}: payload of {nid} is not a dict display")
                elif MESSAGE_KEYS.get(name) is not None and keys != MESSAGE_KEYS[name]:
                    problem(f"{path.name}: payload of {nid} ({name}) has keys {sorted(keys)}, "
                            f"expected {sorted(MESSAGE_KEYS[name])}")
                info["throws"].append((nid, name, payload.text.strip()))
            else:
                if var is None or not re.fullmatch(r"[a-z][a-z0-9_]*", var.text.strip()):
                    problem(f"{path.name}: {nid} catches {name} without a messageVariable")
                else:
                    info["catches"].append((nid, name, var.text.strip()))
        for td in el.iterfind(".//bpmn:timeDuration", NS):
            text = td.text.strip()
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = None
            if value is None:
                read, _ = expr_names(text, f"{path.name}:{nid}:timer")
                for n in read - known:
                    problem(f"{path.name}: timer {nid} uses unknown {n}")
            elif not isinstance(value, str) or not ISO_DURATION.match(value):
                problem(f"{path.name}: timer {nid}: {text} is not a quoted ISO duration")
            info["timers"].append((nid, text))
    return info


def check_deploy() -> None:
    """The engine's deploy-time checks (lanes → roles, forms, scripts, clock ids) on both diagrams."""
    from engine.bundle import bundles_from_directory, compile_bundle
    from engine.errors import DeployError
    from workflows.hooks import DomainHooks

    hooks = DomainHooks()
    for files in bundles_from_directory(BPMN_DIR):
        names = [f.name for f in files]
        mine = [n for n in names if n in DIAGRAMS]
        if not mine:
            continue
        try:
            compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)
            print(f"  deploy check ok: {compiled.process_key} (message starts {compiled.message_starts}; "
                  f"{len(files)} files)")
        except DeployError as err:
            problem(f"{mine[0]}: rejected by the engine's deploy checks: {err}")


# --------------------------------------------------------------------------- dynamic
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CLOCK = engine_clock.ManualClock(T0)
engine_clock.set_clock(CLOCK)
COMMUNICATIONS: list[dict] = []


def service_handler(operation, params, context):
    assert operation == "record_communication", operation
    assert set(params) == {"recipient", "subject"}, params
    COMMUNICATIONS.append(dict(params))
    return json.dumps({"recipient": params["recipient"], "sent_at": CLOCK.now().isoformat()})


ENGINE = SandboxedScriptEngine(clock=CLOCK.now, service_handler=service_handler)
SERIALIZER = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))
STATE = StateSerializer()
FORMS: dict[str, dict] = {}


def load_spec(bpmn: str, process_id: str):
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN_DIR / bpmn))
    return parser.get_spec(process_id), parser.get_subprocess_specs(process_id)


def form_for(task) -> dict:
    name = task.task_spec.extensions["properties"]["form"]
    if name not in FORMS:
        FORMS[name] = parse_form((BPMN_DIR / name).read_bytes(), name)
    return FORMS[name]


class Run:
    """One workflow instance plus the events it threw (get_events() empties Spiff's list)."""

    def __init__(self, spec, data_naixement):
        self.wf = BpmnWorkflow(*spec, script_engine=ENGINE)
        for task in self.wf.get_tasks(spec_name="Start"):
            task.data["data_naixement"] = data_naixement      # as the engine's start_data hook does
        self.thrown: list[BpmnEvent] = []
        self.step()

    def step(self):
        self.wf.do_engine_steps()
        self.thrown += self.wf.get_events()

    def roundtrip(self):
        self.wf = SERIALIZER.deserialize_json(SERIALIZER.serialize_json(self.wf))
        self.wf.script_engine = ENGINE

    def ready(self):
        return sorted(t.task_spec.name for t in self.wf.get_tasks(state=TaskState.READY, manual=True))

    def waiting(self, spec_name):
        tasks = [t for t in self.wf.get_tasks(state=TaskState.WAITING) if t.task_spec.name == spec_name]
        assert len(tasks) == 1, (spec_name, [t.task_spec.name for t in self.wf.get_tasks(state=TaskState.WAITING)])
        return tasks[0]

    def complete(self, spec_name, lane, data):
        ready = {t.task_spec.name: t for t in self.wf.get_tasks(state=TaskState.READY, manual=True)}
        if spec_name not in ready:
            raise AssertionError(f"expected {spec_name} READY, got {sorted(ready)}")
        task = ready[spec_name]
        assert task.task_spec.lane == lane, (spec_name, task.task_spec.lane, lane)
        task.data.update(validate_submission(form_for(task), data))   # 422 in the service if invalid
        task.run()
        self.step()

    def receive(self, event_or_name, payload=None):
        """Deliver an event thrown elsewhere, or an external act by message name (as the engine does).

        An event-based gateway is ONE waiting task whose MultipleEventDefinition holds the
        definitions of the catch events after it (Spiff empties theirs), so the message
        definition is looked up among those.
        """
        if isinstance(event_or_name, BpmnEvent):
            event = event_or_name
        else:
            found = [d for t in self.wf.get_tasks(state=TaskState.WAITING) for d in definitions_of(t)
                     if isinstance(d, MessageEventDefinition) and d.name == event_or_name]
            assert found, f"nobody waits for {event_or_name}"
            event = BpmnEvent(found[0], payload=payload or {})
        self.wf.send_event(event)
        self.step()

    def fire_timer(self, spec_name):
        """Move the shared clock just past the timer's due time and let it fire.

        `spec_name` is the timer event, or the event-based gateway that holds the timer.
        """
        task = self.waiting(spec_name)
        due = datetime.fromisoformat(task.internal_data["event_value"])
        if CLOCK.now() < due + timedelta(minutes=1):
            CLOCK.set(due + timedelta(minutes=1))
        self.wf.refresh_timers()
        self.step()
        return due

    def ended_with(self):
        assert self.wf.is_completed(), self.ready()
        return [(e.event_definition.name, e.payload) for e in self.thrown]

    def clocks(self):
        """Legal clocks started / stopped by the elements this instance went through."""
        started, stopped = [], []
        for task in self.wf.get_tasks(state=TaskState.COMPLETED):
            props = (getattr(task.task_spec, "extensions", None) or {}).get("properties") or {}
            started += [c.strip() for c in (props.get("clock_start") or "").split(",") if c.strip()]
            stopped += [c.strip() for c in (props.get("clock_stop") or "").split(",") if c.strip()]
        return started, stopped


def definitions_of(task) -> list:
    definition = getattr(task.task_spec, "event_definition", None)
    if isinstance(definition, MultipleEventDefinition):
        return list(definition.event_definitions)
    return [] if definition is None else [definition]


def waiting_for(run) -> list[str]:
    """What the instance waits for: message names and timer expressions."""
    out = []
    for task in run.wf.get_tasks(state=TaskState.WAITING):
        for d in definitions_of(task):
            if isinstance(d, MessageEventDefinition):
                out.append(d.name)
            elif isinstance(d, TimerEventDefinition):
                out.append(f"timer {d.expression}")
    return sorted(out)


ENGINE_NOTES: set[str] = set()


def note_engine_projection(run) -> None:
    """engine/runtime.py projects timers and message subscriptions only from WAITING tasks whose own
    event definition is a Timer/MessageEventDefinition; an event-based gateway waits with a
    MultipleEventDefinition, which it does not look into."""
    for task in run.wf.get_tasks(state=TaskState.WAITING):
        if isinstance(getattr(task.task_spec, "event_definition", None), MultipleEventDefinition):
            ENGINE_NOTES.add(task.task_spec.name)


INTERVENCIO = load_spec("intervencio.bpmn", "intervencio")
REVISIO = load_spec("revisio.bpmn", "revisio")
REVIEW_LANE = {"municipal": "Treballador/a social", "imas": "Professional de referència IMAS"}
REVIEW_TASK = {"municipal": "revisio_municipal", "imas": "revisio_imas"}


def months_between(a: datetime, b: datetime) -> int:
    return (b.year - a.year) * 12 + (b.month - a.month)


def review_instance(event, data_naixement, continuar, resultat, sizes=None):
    """One `revisio` instance started by `event`; returns (run, interval in months, thrown event)."""
    run = Run(REVISIO, data_naixement)
    assert waiting_for(run) == ["revisio_programada"], waiting_for(run)
    run.receive(event)
    scheduled_at = CLOCK.now()
    run.roundtrip()
    if sizes is not None:
        sizes.append((len(SERIALIZER.serialize_json(run.wf)), len(STATE.dumps(run.wf))))
    assert run.ready() == [], run.ready()
    due = run.fire_timer("espera_revisio")
    interval = months_between(scheduled_at, due)
    ambit = event.payload["ambit"]
    run.complete(REVIEW_TASK[ambit], REVIEW_LANE[ambit],
                 {"data_revisio": CLOCK.now().date().isoformat(), "resultat": resultat,
                  "continuar_revisions": continuar, "observacions_revisio": ""})
    if sizes is not None:
        sizes.append((len(SERIALIZER.serialize_json(run.wf)), len(STATE.dumps(run.wf))))
    got = run.ended_with()
    assert len(got) == 1, got
    expected = "revisio_programada" if continuar else "revisions_finalitzades"
    assert got[0][0] == expected, got
    if continuar:
        assert got[0][1] == {"ambit": ambit, "numero": event.payload["numero"] + 1,
                             "data_naixement": event.payload["data_naixement"]}, got
    else:
        assert got[0][1] == {"resultat": resultat, "ambit": ambit}, got
    return run, interval, run.thrown[0]


def review_chain(event, data_naixement, outcomes, verbose=True):
    """Chain review instances (each started by the previous one's revisio_programada)."""
    ended = []
    for continuar, resultat in outcomes:
        at = CLOCK.now()
        age = age_ym(data_naixement, at)
        _run, interval, event = review_instance(event, data_naixement, continuar, resultat)
        ended.append((event.event_definition.name, event.payload))
        if verbose:
            print(f"      revisió programada el {at.date()} (edat {age}) → interval {interval} mesos → "
                  f"{'continuar' if continuar else 'finalitzar'}: {resultat} → {event.event_definition.name}")
    return event, ended


def age_ym(birth: str, at: datetime) -> str:
    b = datetime.fromisoformat(birth).date()
    months = months_between(datetime(b.year, b.month, 1), datetime(at.year, at.month, 1))
    if at.day < b.day:
        months -= 1
    return f"{months // 12} anys {months % 12} mesos"


def run_intervencio(answer, allegations=None, declared=None, reviews=(), birth="2019-06-15"):
    """answer: 'consentiment' | 'negativa' | 'termini'; allegations: 'presentades' | 'termini'."""
    CLOCK.set(T0)
    COMMUNICATIONS.clear()
    run = Run(INTERVENCIO, birth)
    assert [e.name for e in run.wf.waiting_events()] == ["derivacio_intervencio_municipal"]
    run.receive("derivacio_intervencio_municipal", {"gravetat": "moderat", "puntuacio": 6,
                                                    "retornat_per_imas": False})
    assert run.wf.get_tasks(state=TaskState.READY, manual=True)[0].data["derivacio"]["gravetat"] == "moderat"
    run.complete("elaborar_projecte_intervencio", "Treballador/a social",
                 {"data_projecte": "2025-03-10", "objectius_projecte": "Millorar la cura i l'escolarització",
                  "durada_prevista_mesos": 12, "recursos_projecte": "Educador/a familiar"})
    run.complete("proposar_conveni", "Treballador/a social",
                 {"data_proposta_conveni": "2025-03-12", "mitja_proposta": "entrevista"})
    run.roundtrip()
    assert waiting_for(run) == ["consentiment_familia", "negativa_familia", 'timer "P30D"'], waiting_for(run)
    note_engine_projection(run)
    if answer == "consentiment":
        run.receive("consentiment_familia", {"data": "2025-03-20"})
        signar = run.wf.get_tasks(state=TaskState.READY, manual=True)[0]
        assert signar.data["resposta_familia"] == {"data": "2025-03-20"}, signar.data
        run.complete("signar_conveni", "Treballador/a social",
                     {"data_signatura_conveni": "2025-03-21", "compromisos_familia": "Assistència escolar diària",
                      "signen_tots_progenitors": True})
    else:
        if answer == "negativa":
            run.receive("negativa_familia", {"data": "2025-03-20"})
        else:
            due = run.fire_timer("gw_resposta_familia")
            assert (due - T0).days == 30, due
        assert not any(t.task_spec.name in ("ev_consentiment_familia", "ev_negativa_familia", "ev_termini_resposta")
                       for t in run.wf.get_tasks(state=TaskState.WAITING)), "race not cancelled"
        run.complete("iniciar_procediment_risc", "Coordinador/a SSCB",
                     {"data_inici_procediment": CLOCK.now().date().isoformat(),
                      "motiu_inici": "negativa_familia" if answer == "negativa" else "sense_resposta",
                      "instructor_designat": True, "fets_procediment": "Rebuig del conveni"})
        assert COMMUNICATIONS[-1]["recipient"] == "Família", COMMUNICATIONS
        opened = CLOCK.now()
        assert waiting_for(run) == ["al_legacions_presentades", 'timer "P15D"'], waiting_for(run)
        note_engine_projection(run)
        if allegations == "presentades":
            run.receive("al_legacions_presentades", {"data": "2025-04-01"})
            proposal = run.wf.get_tasks(state=TaskState.READY, manual=True)[0]
            assert proposal.data["al_legacions"] == {"data": "2025-04-01"}, proposal.data
        else:
            due = run.fire_timer("gw_al_legacions")
            assert (due - opened).days == 15, due
        run.roundtrip()
        proposal = [t for t in run.wf.get_tasks(state=TaskState.READY, manual=True)][0]
        assert proposal.task_spec.extensions["properties"]["due_in"] == "P10D"
        run.complete("proposta_declaracio_risc", "Treballador/a social",
                     {"data_proposta_comissio": CLOCK.now().date().isoformat(), "al_legacions_valorades": True,
                      "proposa_declarar_risc": declared, "fonaments_proposta": "Informe tècnic"})
        run.complete("resolucio_declaracio_risc", "Comissió de Declaració de Risc",
                     {"audiencia_progenitors": True, "data_resolucio": CLOCK.now().date().isoformat(),
                      "declaracio_risc": declared, "fonaments_resolucio": ""})
        if declared:
            assert COMMUNICATIONS[-1] == {"recipient": "Família",
                                          "subject": "Resolució de declaració de la situació de risc"}
    if answer == "consentiment" or declared:
        programmed = [e for e in run.thrown if e.event_definition.name == "revisio_programada"]
        assert len(programmed) == 1 and programmed[0].payload == {
            "ambit": "municipal", "numero": 1, "data_naixement": birth}, programmed
        assert waiting_for(run) == ["revisions_finalitzades"], waiting_for(run)
        run.roundtrip()
        finished, chain = review_chain(programmed[0], birth, reviews)
        print(f"      revisions encadenades: {[n for n, _p in chain]}")
        run.receive(finished)
        if finished.payload["resultat"] == "objectius_assolits":
            run.complete("tancar_cas", "Treballador/a social",
                         {"data_tancament": CLOCK.now().date().isoformat(), "valoracio_final": "Objectius assolits"})
        else:
            run.complete("proposar_derivacio_imas", "Coordinador/a SSCB",
                         {"data_proposta_derivacio": CLOCK.now().date().isoformat(),
                          "motius_derivacio": "Sense millora després de les revisions"})
    started, stopped = run.clocks()
    print(f"      rellotges iniciats {started}, aturats {stopped}")
    if sorted(set(started)) != sorted(set(stopped)):
        problem(f"intervencio {answer}/{allegations}/{declared}: clocks started {started} but stopped {stopped}")
    return run.ended_with()


def run_age_switch():
    """A child aged 2 years 10 months: first interval 3 months, then 6 once they are 3."""
    CLOCK.set(T0)
    birth = T0.date().replace(year=T0.year - 3, month=T0.month + 2).isoformat()     # T0 is in March
    assert age_ym(birth, T0) == "2 anys 10 mesos", age_ym(birth, T0)
    spec_event = REVISIO[0].task_specs["inici_revisio"].event_definition
    event = BpmnEvent(spec_event, payload={"ambit": "municipal", "numero": 1, "data_naixement": birth})
    intervals = []
    for n in range(1, 5):
        at = CLOCK.now()
        age = age_ym(birth, at)
        _run, interval, event = review_instance(event, birth, n < 4, "en_curs" if n < 4 else "objectius_assolits")
        intervals.append(interval)
        print(f"      revisió {n}: programada el {at.date()} amb {age} → interval {interval} mesos")
    ok = intervals == [3, 6, 6, 6]
    if not ok:
        problem(f"age switch: intervals {intervals}, expected [3, 6, 6, 6]")
    return intervals, event


def run_forty(ambit="imas"):
    CLOCK.set(T0)
    birth = "2012-01-20"
    spec_event = REVISIO[0].task_specs["inici_revisio"].event_definition
    event = BpmnEvent(spec_event, payload={"ambit": ambit, "numero": 1, "data_naixement": birth})
    rows = []
    for n in range(1, 41):
        sizes = []
        _run, _interval, event = review_instance(event, birth, n < 40, "en_curs" if n < 40 else "sense_millora",
                                                 sizes=sizes)
        rows.append((n, *sizes))
    print("      revisió: bytes BpmnWorkflowSerializer esperant el temporitzador / en acabar "
          "(entre parèntesis, l'estat sense especificació que desa el motor)")
    for n, (wait_full, wait_state), (end_full, end_state) in rows:
        print(f"      {n:2d}: {wait_full} ({wait_state}) / {end_full} ({end_state})")
    for column, label in ((1, "esperant"), (2, "en acabar")):
        full = [r[column][0] for r in rows]
        spread = max(full) - min(full)
        print(f"      {label}: mín {min(full)}, màx {max(full)}, variació {spread} bytes; "
              f"revisió 1 → 40: {full[0]} → {full[-1]}")
        # only digits vary (numero, dates, timestamps) and the last result's wording
        if spread > 64:
            problem(f"review state grows: {label} sizes vary by {spread} bytes over 40 reviews")
    return event


def main() -> int:
    print("== static checks")
    infos = {name: check_diagram(BPMN_DIR / name) for name in DIAGRAMS}
    check_deploy()
    for name, info in infos.items():
        for nid, u in info["user_tasks"].items():
            extra = {k: v for k, v in u["props"].items() if k != "form"}
            print(f"  {name}: {nid} [{u['lane']}] {u['form']} keys={u['keys']} {extra or ''}")
        for nid, msg, payload in info["throws"]:
            print(f"  {name}: {nid} throws {msg} payload {payload}")
        for nid, msg, var in info["catches"]:
            print(f"  {name}: {nid} catches {msg} into {var}")
        for nid, expr in info["timers"]:
            print(f"  {name}: timer {nid} = {expr}")
        for cid, where in sorted(info["clocks"].items()):
            print(f"  {name}: clock {cid}: start {where['clock_start']} stop {where['clock_stop']}")

    print("== runs")
    results = []

    def record(label, got, expected):
        names = [n for n, _p in got]
        ok = names == expected
        results.append(ok)
        print(f"  {'ok ' if ok else 'BAD'} {label}: ended with {got}")
        if not ok:
            problem(f"{label}: expected {expected}, got {names}")

    cases = [
        ("acord, revisions (continuar, finalitzar) amb objectius assolits",
         dict(answer="consentiment", reviews=[(True, "en_curs"), (False, "objectius_assolits")]),
         ["revisio_programada", "intervencio_tancada"]),
        ("acord, revisió sense millora: derivació a l'IMAS",
         dict(answer="consentiment", reviews=[(False, "sense_millora")]),
         ["revisio_programada", "derivacio_proteccio_imas"]),
        ("negativa, al·legacions presentades, risc declarat, objectius assolits",
         dict(answer="negativa", allegations="presentades", declared=True,
              reviews=[(True, "en_curs"), (False, "objectius_assolits")]),
         ["revisio_programada", "intervencio_tancada"]),
        ("30 dies sense resposta, 15 dies sense al·legacions, risc declarat, revisió en curs: IMAS",
         dict(answer="termini", allegations="termini", declared=True, reviews=[(False, "en_curs")]),
         ["revisio_programada", "derivacio_proteccio_imas"]),
        ("negativa, al·legacions presentades, risc no declarat",
         dict(answer="negativa", allegations="presentades", declared=False), ["intervencio_tancada"]),
        ("30 dies sense resposta, 15 dies sense al·legacions, risc no declarat",
         dict(answer="termini", allegations="termini", declared=False), ["intervencio_tancada"]),
    ]
    for label, kwargs, expected in cases:
        print(f"  intervencio {label}")
        try:
            got = run_intervencio(**kwargs)
        except Exception as err:    # report and continue with the other paths
            problem(f"intervencio {label}: {type(err).__name__}: {err}")
            results.append(False)
            continue
        record(f"intervencio {label}", got, expected)

    print("  revisio: àmbit IMAS, continuar i finalitzar")
    try:
        CLOCK.set(T0)
        spec_event = REVISIO[0].task_specs["inici_revisio"].event_definition
        event = BpmnEvent(spec_event, payload={"ambit": "imas", "numero": 3, "data_naixement": "2016-09-01"})
        _last, chain = review_chain(event, "2016-09-01", [(True, "en_curs"), (False, "objectius_assolits")])
        record("revisio imas (2 instàncies)", chain, ["revisio_programada", "revisions_finalitzades"])
    except Exception as err:
        problem(f"revisio imas: {type(err).__name__}: {err}")
        results.append(False)

    print("  revisio: canvi d'interval als 3 anys (infant de 2 anys i 10 mesos)")
    try:
        intervals, last = run_age_switch()
        record(f"revisio canvi d'interval {intervals}", [(last.event_definition.name, last.payload)],
               ["revisions_finalitzades"])
    except Exception as err:
        problem(f"revisio age switch: {type(err).__name__}: {err}")
        results.append(False)

    print("  revisio: 40 revisions encadenades, mida serialitzada de cada instància")
    try:
        last = run_forty()
        record("revisio 40 revisions encadenades", [(last.event_definition.name, last.payload)],
               ["revisions_finalitzades"])
    except Exception as err:
        problem(f"revisio 40 reviews: {type(err).__name__}: {err}")
        results.append(False)

    if ENGINE_NOTES:
        print(f"  NOTE (engine, not these diagrams): {sorted(ENGINE_NOTES)} wait as ONE task with a "
              "MultipleEventDefinition; engine/runtime.py only projects timers/subscriptions of "
              "Timer/MessageEventDefinition tasks, so it must look into .event_definitions")
    print(f"== {len(results)} runs, {sum(results)} ok; {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
