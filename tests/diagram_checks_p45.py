"""Checks of pathway 4 `proteccio` and pathway 5 `reunificacio` (bpmn/proteccio.bpmn, bpmn/reunificacio.bpmn).

Runs on its own and prints a report:  cd /work/main && .venv/bin/python tests/diagram_checks_p45.py

1. Static checks (hardened lxml): no DOCTYPE, full diagram interchange (a shape with bounds for
   the participant, every lane and every flow node, an edge with >= 2 waypoints for every
   sequence flow), layout sanity (lanes inside the pool, nodes inside their lane, no overlapping
   shapes or labels over shapes, orthogonal edges that start and end on their nodes, cross no
   other node and run left to right except the declared loop-backs), lane names from the role
   catalogue, Catalan names on every node, user task properties (form = forms/<id>.form, ISO
   due_in, clock ids from the catalogue), form-js files (also through the project's own form
   validator), exclusive gateway conditions reading required form keys or computed variables,
   every script/condition/payload accepted by the project's sandbox compiler, fixed message names,
   user task ids unique across bpmn/, and the deploy path (engine.bundle.compile_bundle with the
   domain hooks).
2. Dynamic checks: parse with SpiffBpmnParser(validator=VALIDATOR) and run every gateway branch
   to an end with the project's SandboxedScriptEngine and one injectable clock (engine.clock),
   submitting form data through the project's form validation, round-tripping the state through
   the engine's spec-free serializer, and printing the messages each run ended with.
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
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition  # noqa: E402
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser  # noqa: E402
from SpiffWorkflow.util.task import TaskState  # noqa: E402

from engine import clock as engine_clock  # noqa: E402  (installs the clock into Spiff's timers)
from engine.sandbox import SandboxedScriptEngine, ScriptRejected, check_expression, check_script  # noqa: E402
from engine.serializer import StateSerializer  # noqa: E402
from workflows.forms import FormDefinitionError, form_fields, parse_form, validate_submission  # noqa: E402

BPMN_DIR = ROOT / "bpmn"
FILES = {"proteccio.bpmn": "proteccio", "reunificacio.bpmn": "reunificacio"}

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core",
}
LANE_NAMES = {
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
# Fixed message names (thrown / caught) per diagram: the other pathways rely on them.
MESSAGES = {
    "proteccio.bpmn": {
        "throws": {"inici_reunificacio", "inici_acolliment", "inici_adopcio", "inici_emancipacio",
                   "derivacio_intervencio_municipal", "revisio_programada"},
        "catches": {"derivacio_proteccio_imas", "proteccio_urgent", "audiencia_celebrada", "revisions_finalitzades"},
    },
    "reunificacio.bpmn": {
        "throws": {"revisio_programada", "reunificacio_tancada", "inici_acolliment", "inici_adopcio"},
        "catches": {"inici_reunificacio", "revisions_finalitzades"},
    },
}
# Clocks each diagram must carry, element by element: (clock_start, clock_stop).
EXPECTED_CLOCKS = {
    "proteccio.bpmn": {
        "p4_diligencies_previes": ("imas_prior_inquiries", "imas_prior_inquiries"),
        "p4_diligencies_urgents": ("urgent_diligences", "urgent_diligences"),
        "p4_proposta_comissio": ("guardianship_proposal", "guardianship_proposal"),
        "p4_notificar_familia": ("resolution_notice", "resolution_notice"),
        "p4_pip": ("protection_plan", "protection_plan"),
    },
    "reunificacio.bpmn": {
        "p5_programa_reunificacio": ("temporary_measure_limit", None),
        "p5_retorn_llar": ("post_return_followup", "temporary_measure_limit"),
        "p5_solucio_permanent": (None, "temporary_measure_limit"),
        "p5_tancar_seguiment": (None, "post_return_followup"),
    },
}
# Sequence flows that deliberately run right to left (back to an earlier task).
LOOP_BACKS = {"Flow_p4_residencial_menor_3", "Flow_p4_emancipacio_menor_16"}
START_DATA = {"data_naixement"}
SANDBOX_NAMES = {"today", "now", "date", "timedelta", "parse_date", "age_in_years", "add_months", "days_between",
                 "iso_duration", "len", "min", "max", "sum", "abs", "round", "int", "float", "str", "bool", "list",
                 "dict", "set", "tuple", "range", "sorted", "any", "all", "enumerate", "zip", "isinstance",
                 "True", "False", "None"}
FLOW_NODE_TAGS = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "exclusiveGateway", "parallelGateway",
    "inclusiveGateway", "eventBasedGateway", "complexGateway",
}
FORM_TYPES = {"textfield", "textarea", "number", "checkbox", "select", "radio", "datetime"}
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
    """Returns key -> component for a form, after checking the project's conventions."""
    comps_by_key: dict[str, dict] = {}
    raw = path.read_bytes()
    try:
        parse_form(raw, path.name)      # the project's own structural validation (deploy time)
    except FormDefinitionError as err:
        problem(f"{path.name}: rejected by workflows.forms: {err}")
    try:
        doc = json.loads(raw)
    except ValueError as err:
        problem(f"{path.name}: not valid JSON ({err})")
        return comps_by_key
    if doc.get("type") != "default" or doc.get("id") != f"Form_{path.stem}" or doc.get("schemaVersion") != 16:
        problem(f"{path.name}: needs type 'default', id Form_{path.stem} and schemaVersion 16")
    for c in doc.get("components") or []:
        t, key, label = c.get("type"), c.get("key"), c.get("label")
        if t not in FORM_TYPES:
            problem(f"{path.name}: component type {t!r} not allowed")
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            problem(f"{path.name}: key {key!r} is not snake_case ascii")
            continue
        if key in comps_by_key:
            problem(f"{path.name}: duplicate key {key}")
        comps_by_key[key] = c
        if not isinstance(label, str) or not label.strip():
            problem(f"{path.name}: {key}: missing label")
        if t == "datetime" and c.get("subtype") != "date":
            problem(f"{path.name}: {key}: datetime needs subtype 'date'")
        if t == "radio":
            values = [v.get("value") for v in c.get("values", [])]
            if values != [True, False]:
                problem(f"{path.name}: {key}: yes/no radio needs boolean values [true, false]")
        if t == "checkbox" and c.get("validate", {}).get("required"):
            problem(f"{path.name}: {key}: a required checkbox forces the box to be ticked")
    if not comps_by_key:
        problem(f"{path.name}: no input components")
    return comps_by_key


def guaranteed(comp: dict) -> bool:
    """A key a condition may read: required, or a checkbox (arrives as false when unticked)."""
    return comp.get("type") == "checkbox" or bool(comp.get("validate", {}).get("required"))


# --------------------------------------------------------------------------- expressions
def names_in(source: str, where: str, mode: str) -> tuple[set[str], set[str]]:
    """Names read / assigned; the project's sandbox compiler must accept the code."""
    try:
        (check_script if mode == "exec" else check_expression)(source if mode == "exec" else source.strip())
    except ScriptRejected as err:
        problem(f"{where}: rejected by the sandbox: {err}")
    try:
        tree = ast.parse(source.strip(), mode=mode)
    except SyntaxError as err:
        problem(f"{where}: syntax error {err}")
        return set(), set()
    read, written = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            problem(f"{where}: attribute access .{node.attr} (keep expressions plain)")
        if isinstance(node, ast.Name):
            (written if isinstance(node.ctx, ast.Store) else read).add(node.id)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in SANDBOX_NAMES):
            problem(f"{where}: call of something that is not a sandbox helper")
    return read - SANDBOX_NAMES, written


# --------------------------------------------------------------------------- geometry
def bounds_of(el):
    b = el.find("dc:Bounds", NS)
    return None if b is None else tuple(float(b.get(k)) for k in ("x", "y", "width", "height"))


def overlap(a, b):
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(inner, outer):
    return (inner[0] >= outer[0] and inner[1] >= outer[1]
            and inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3])


def on_border(pt, r, tol=2.0):
    x, y = pt
    within = r[0] - tol <= x <= r[0] + r[2] + tol and r[1] - tol <= y <= r[1] + r[3] + tol
    near_v = abs(x - r[0]) <= tol or abs(x - r[0] - r[2]) <= tol
    near_h = abs(y - r[1]) <= tol or abs(y - r[1] - r[3]) <= tol
    return within and (near_v or near_h)


def segment_hits(p, q, r, where):
    x0, y0, x1, y1 = r[0] + 1, r[1] + 1, r[0] + r[2] - 1, r[1] + r[3] - 1
    if abs(p[0] - q[0]) < 0.01:
        return x0 < p[0] < x1 and max(p[1], q[1]) > y0 and min(p[1], q[1]) < y1
    if abs(p[1] - q[1]) < 0.01:
        return y0 < p[1] < y1 and max(p[0], q[0]) > x0 and min(p[0], q[0]) < x1
    problem(f"{where}: diagonal edge segment {p}->{q}")
    return False


# --------------------------------------------------------------------------- static check
def props_of(el) -> dict:
    return {p.get("name"): p.get("value")
            for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property", NS)}


def all_user_task_ids() -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {}
    for path in sorted(BPMN_DIR.glob("*.bpmn")):
        try:
            root = etree.fromstring(path.read_bytes(), etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            continue
        for ut in root.iterfind(".//bpmn:userTask", NS):
            ids.setdefault(ut.get("id"), []).append(path.name)
    return ids


def check_diagram(fname: str) -> dict:
    path = BPMN_DIR / fname
    print(f"static: {fname}")
    root = safe_parse(path)
    shapes = {s.get("bpmnElement"): s for s in root.iterfind(".//bpmndi:BPMNShape", NS)}
    edges = {e.get("bpmnElement"): e for e in root.iterfind(".//bpmndi:BPMNEdge", NS)}
    info = {"user_tasks": {}, "throws": [], "catches": [], "services": [], "timers": []}

    participant = root.find(".//bpmn:participant", NS)
    if participant is None or participant.get("id") not in shapes:
        problem(f"{fname}: participant without shape")
        return info
    pool = bounds_of(shapes[participant.get("id")])
    process = root.find("bpmn:process", NS)
    if process is None or process.get("id") != FILES[fname] or process.get("isExecutable") != "true":
        problem(f"{fname}: needs the executable process {FILES[fname]}")
        return info
    if participant.get("processRef") != process.get("id"):
        problem(f"{fname}: participant does not refer to the process")
    messages = {m.get("id"): m.get("name") for m in root.iterfind("bpmn:message", NS)}
    nodes = {el.get("id"): el for el in process if local(el) in FLOW_NODE_TAGS}
    flows = {el.get("id"): el for el in process if local(el) == "sequenceFlow"}
    if any(local(el) in ("subProcess", "callActivity") for el in process):
        problem(f"{fname}: unexpected subprocess/call activity")

    # lanes
    lane_of, lane_boxes = {}, {}
    for lane in process.iterfind(".//bpmn:lane", NS):
        name = lane.get("name")
        if name not in LANE_NAMES:
            problem(f"{fname}: lane name {name!r} is not a role label")
        if lane.get("id") not in shapes:
            problem(f"{fname}: lane {lane.get('id')} has no shape")
            continue
        box = bounds_of(shapes[lane.get("id")])
        if not inside(box, pool):
            problem(f"{fname}: lane {name} outside its pool")
        for other_id, other in lane_boxes.items():
            if overlap(box, other):
                problem(f"{fname}: lanes {lane.get('id')} and {other_id} overlap")
        lane_boxes[lane.get("id")] = box
        for ref in lane.iterfind("bpmn:flowNodeRef", NS):
            if ref.text in lane_of:
                problem(f"{fname}: {ref.text} is in two lanes")
            if ref.text not in nodes:
                problem(f"{fname}: lane {name} refers to unknown node {ref.text}")
            lane_of[ref.text] = (lane.get("id"), name)

    # nodes, labels
    boxes = {}
    for nid, el in nodes.items():
        if nid not in shapes or bounds_of(shapes[nid]) is None:
            problem(f"{fname}: flow node {nid} has no shape with bounds")
            continue
        boxes[nid] = bounds_of(shapes[nid])
        if nid not in lane_of:
            problem(f"{fname}: flow node {nid} is in no lane")
        elif not inside(boxes[nid], lane_boxes[lane_of[nid][0]]):
            problem(f"{fname}: {nid} drawn outside its lane {lane_of[nid][1]}")
        if not (el.get("name") or "").strip():
            problem(f"{fname}: {nid} has no (Catalan) name")
    for a in boxes:
        for b in boxes:
            if a < b and overlap(boxes[a], boxes[b]) and \
                    b != nodes[a].get("attachedToRef") and a != nodes[b].get("attachedToRef"):
                problem(f"{fname}: shapes {a} and {b} overlap")
    for nid, el in nodes.items():
        if local(el) == "boundaryEvent":
            host = boxes.get(el.get("attachedToRef"))
            if host is None or not on_border((boxes[nid][0] + 18, boxes[nid][1] + 18), host):
                problem(f"{fname}: boundary event {nid} is not drawn on the border of its activity")
    label_boxes = []
    for eid, holder in list(shapes.items()) + list(edges.items()):
        lab = holder.find("bpmndi:BPMNLabel", NS)
        if lab is None:
            continue
        lb = bounds_of(lab)
        label_boxes.append((eid, lb))
        if not inside(lb, pool):
            problem(f"{fname}: label of {eid} outside the pool")
        for other, ob in boxes.items():
            if other != eid and overlap(lb, ob):
                problem(f"{fname}: label of {eid} covers {other}")
    for i, (a, la) in enumerate(label_boxes):
        for b, lb in label_boxes[i + 1:]:
            if overlap(la, lb):
                problem(f"{fname}: labels of {a} and {b} overlap")
    for nid, el in nodes.items():
        if local(el) in ("startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent",
                         "exclusiveGateway", "eventBasedGateway") and shapes.get(nid) is not None \
                and shapes[nid].find("bpmndi:BPMNLabel", NS) is None:
            problem(f"{fname}: {nid} has no label bounds")

    # flows / edges
    for fid, fl in flows.items():
        src, tgt = fl.get("sourceRef"), fl.get("targetRef")
        if src not in nodes or tgt not in nodes:
            problem(f"{fname}: flow {fid} refers to unknown nodes")
            continue
        if fid not in [o.text for o in nodes[src].iterfind("bpmn:outgoing", NS)] or \
                fid not in [i.text for i in nodes[tgt].iterfind("bpmn:incoming", NS)]:
            problem(f"{fname}: flow {fid} missing from incoming/outgoing of its nodes")
        edge = edges.get(fid)
        wps = [] if edge is None else [(float(w.get("x")), float(w.get("y"))) for w in edge.iterfind("di:waypoint", NS)]
        if len(wps) < 2:
            problem(f"{fname}: sequence flow {fid} has no edge with 2+ waypoints")
            continue
        if not on_border(wps[0], boxes[src]):
            problem(f"{fname}: edge {fid} does not start on {src}")
        if not on_border(wps[-1], boxes[tgt]):
            problem(f"{fname}: edge {fid} does not end on {tgt}")
        host = nodes[src].get("attachedToRef")
        for p, q in zip(wps, wps[1:]):
            if not (inside((min(p[0], q[0]), min(p[1], q[1]), abs(p[0] - q[0]), abs(p[1] - q[1])), pool)):
                problem(f"{fname}: edge {fid} leaves the pool")
            for other, ob in boxes.items():
                if other not in (src, tgt, host) and segment_hits(p, q, ob, f"{fname}:{fid}"):
                    problem(f"{fname}: edge {fid} crosses {other}")
        src_cx, tgt_cx = boxes[src][0] + boxes[src][2] / 2, boxes[tgt][0] + boxes[tgt][2] / 2
        if (tgt_cx <= src_cx) != (fid in LOOP_BACKS):
            problem(f"{fname}: flow {fid} runs {'right to left' if tgt_cx <= src_cx else 'left to right'} "
                    f"unexpectedly")
    for eid in edges:
        if eid not in flows:
            problem(f"{fname}: edge for unknown flow {eid}")

    # forms and user tasks
    form_keys: dict[str, dict] = {}
    for nid, el in nodes.items():
        if local(el) != "userTask":
            continue
        props = props_of(el)
        form = props.get("form")
        if form != f"forms/{nid}.form":
            problem(f"{fname}: user task {nid} must have form forms/{nid}.form (has {form!r})")
            continue
        form_path = BPMN_DIR / form
        if not form_path.exists():
            problem(f"{fname}: {nid}: form {form} does not exist")
            continue
        comps = check_form(form_path)
        for key, comp in comps.items():
            if key in form_keys:
                problem(f"{fname}: form key {key} used by two forms of the diagram")
            form_keys[key] = comp
        if props.get("due_in") and not ISO_DURATION.match(props["due_in"]):
            problem(f"{fname}: {nid}: due_in {props['due_in']} is not an ISO-8601 duration")
        if props.get("distinct_from") and local(nodes.get(props["distinct_from"], el)) != "userTask":
            problem(f"{fname}: {nid}: distinct_from refers to no user task")
        info["user_tasks"][nid] = dict(lane=lane_of.get(nid, (None, None))[1], keys=list(comps),
                                       props={k: v for k, v in props.items() if k != "form"})
    # clocks
    for nid, el in nodes.items():
        props = props_of(el)
        for key in ("clock_start", "clock_stop"):
            for cid in [c.strip() for c in (props.get(key) or "").split(",") if c.strip()]:
                if cid not in CLOCKS:
                    problem(f"{fname}: {nid}: {key} {cid} is not in the clock catalogue")
        if local(el) == "startEvent" and (props.get("clock_start") or props.get("clock_stop")):
            problem(f"{fname}: {nid}: no clocks on start events (they wait from the instance's creation)")
        expected = EXPECTED_CLOCKS[fname].get(nid)
        got = (props.get("clock_start"), props.get("clock_stop"))
        if expected is not None and got != expected:
            problem(f"{fname}: {nid}: clocks {got}, expected {expected}")
        if expected is None and any(got):
            problem(f"{fname}: {nid}: unexpected clocks {got}")
    for nid in EXPECTED_CLOCKS[fname]:
        if nid not in nodes:
            problem(f"{fname}: clock element {nid} missing")

    # names every expression may read: start data, message variables, form keys, script outputs,
    # service results. Conditions may only read keys that are sure to be there.
    written, message_vars, results = set(), set(), set()
    for nid, el in nodes.items():
        for s in el.iterfind("bpmn:script", NS):
            written |= names_in(s.text, f"{fname}:{nid}", "exec")[1]
        for var in el.iterfind(".//spiffworkflow:messageVariable", NS):
            message_vars.add(var.text.strip())
        for op in el.iterfind(".//spiffworkflow:serviceTaskOperator", NS):
            results.add(op.get("resultVariable"))
    known = START_DATA | set(form_keys) | written | message_vars | results
    for nid, el in nodes.items():
        for s in el.iterfind("bpmn:script", NS):
            read, _ = names_in(s.text, f"{fname}:{nid}", "exec")
            for n in read - known:
                problem(f"{fname}: script {nid} reads unknown {n}")
        for op in el.iterfind(".//spiffworkflow:serviceTaskOperator", NS):
            params = {p.get("id"): p.get("value") for p in op.iterfind(".//spiffworkflow:parameter", NS)}
            if op.get("id") != "record_communication" or set(params) != {"recipient", "subject"}:
                problem(f"{fname}: {nid}: service must be record_communication(recipient, subject)")
            for pid, value in params.items():
                names_in(value, f"{fname}:{nid}:{pid}", "eval")
            info["services"].append((nid, ast.literal_eval(params.get("recipient", "''")),
                                     ast.literal_eval(params.get("subject", "''"))))
        for med in el.iterfind("bpmn:messageEventDefinition", NS):
            name = messages.get(med.get("messageRef"))
            if name is None:
                problem(f"{fname}: {nid}: message reference {med.get('messageRef')} undefined")
            payload = med.find("bpmn:extensionElements/spiffworkflow:messagePayload", NS)
            var = med.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            throwing = local(el) in ("endEvent", "intermediateThrowEvent")
            if throwing:
                if payload is None:
                    problem(f"{fname}: {nid}: a thrown message needs a payload")
                    continue
                read, _ = names_in(payload.text, f"{fname}:{nid}:payload", "eval")
                for n in read - known:
                    problem(f"{fname}: payload of {nid} reads unknown {n}")
                if not isinstance(ast.parse(payload.text.strip(), mode="eval").body, ast.Dict):
                    problem(f"{fname}: payload of {nid} is not a dict display")
                info["throws"].append((nid, name, payload.text.strip()))
            else:
                if var is None:
                    problem(f"{fname}: {nid}: a caught message needs a messageVariable")
                    continue
                info["catches"].append((nid, name, var.text.strip()))
        if local(el) == "receiveTask":
            var = el.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            name = messages.get(el.get("messageRef"))
            if name is None or var is None:
                problem(f"{fname}: receive task {nid} needs a messageRef and a messageVariable")
            else:
                info["catches"].append((nid, name, var.text.strip()))
        for td in el.iterfind(".//bpmn:timeDuration", NS):
            names_in(td.text, f"{fname}:{nid}:timer", "eval")
            try:
                value = ast.literal_eval(td.text.strip())
            except ValueError:
                value = None
            if not isinstance(value, str) or not ISO_DURATION.match(value):
                problem(f"{fname}: timer {nid}: {td.text} is not a quoted ISO duration")
            info["timers"].append((nid, value))
    thrown = {n for _, n, _ in info["throws"]}
    caught = {n for _, n, _ in info["catches"]}
    if thrown != MESSAGES[fname]["throws"]:
        problem(f"{fname}: throws {sorted(thrown)}, expected {sorted(MESSAGES[fname]['throws'])}")
    if caught != MESSAGES[fname]["catches"]:
        problem(f"{fname}: catches {sorted(caught)}, expected {sorted(MESSAGES[fname]['catches'])}")
    for nid, _name, payload in info["throws"]:
        if _name == "revisio_programada" and payload != "{'ambit': 'imas', 'numero': 1, 'data_naixement': data_naixement}":
            problem(f"{fname}: {nid}: revisio_programada payload must be the agreed one")

    # gateways
    guaranteed_names = START_DATA | written | {k for k, c in form_keys.items() if guaranteed(c)}
    info["conditions"] = {}
    for nid, el in nodes.items():
        kind = local(el)
        outs = [flows[o.text] for o in el.iterfind("bpmn:outgoing", NS)]
        if kind == "eventBasedGateway":
            for f in outs:
                tgt = nodes[f.get("targetRef")]
                if local(tgt) != "intermediateCatchEvent":
                    problem(f"{fname}: event-based gateway {nid} leads to {tgt.get('id')}, not a catch event")
        if kind != "exclusiveGateway":
            continue
        default = el.get("default")
        if len(outs) < 2:
            problem(f"{fname}: gateway {nid} has fewer than two outgoing flows")
        if default and default not in [f.get("id") for f in outs]:
            problem(f"{fname}: default of {nid} is not one of its outgoing flows")
        for f in outs:
            cond = f.find("bpmn:conditionExpression", NS)
            if not (f.get("name") or "").strip():
                problem(f"{fname}: flow {f.get('id')} from {nid} has no label")
            if f.get("id") == default:
                if cond is not None:
                    problem(f"{fname}: default flow {f.get('id')} has a condition")
                continue
            if cond is None or not (cond.text or "").strip():
                problem(f"{fname}: flow {f.get('id')} from {nid} has no condition")
                continue
            read, _ = names_in(cond.text, f"{fname}:{f.get('id')}", "eval")
            info["conditions"][f.get("id")] = cond.text.strip()
            for n in read - guaranteed_names:
                problem(f"{fname}: condition on {f.get('id')} reads {n}, which is not sure to be set "
                        f"(not a required form key nor a computed variable)")
    return info


def check_deploy(fname: str) -> None:
    """The deploy path: the project's bundle compiler with the domain hooks."""
    from engine.bundle import BundleFile, compile_bundle
    from workflows.hooks import DomainHooks

    hooks = DomainHooks()
    root = safe_parse(BPMN_DIR / fname)
    files = [BundleFile(fname, (BPMN_DIR / fname).read_bytes())]
    for p in root.iterfind(".//spiffworkflow:property", NS):
        if p.get("name") == "form":
            files.append(BundleFile(p.get("value"), (BPMN_DIR / p.get("value")).read_bytes()))
    try:
        try:
            compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)
        except TypeError:      # older signature without the property checker
            compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form)
    except Exception as err:
        detail = "; ".join(f"{p.element_id}: {p.message}" for p in getattr(err, "problems", [])) or str(err)
        problem(f"{fname}: the deploy compiler rejects it: {detail}")
        return
    if compiled.process_key != FILES[fname]:
        problem(f"{fname}: deploys as {compiled.process_key}")
    print(f"  deploy: {fname} compiles as '{compiled.process_key}', message starts {compiled.message_starts}")


# --------------------------------------------------------------------------- dynamic
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CLOCK = engine_clock.ManualClock(T0)   # one clock for Spiff's timers and the sandbox's now()/today()
COMMUNICATIONS: list[tuple[str, str]] = []


def record_service(operation, params, context):
    assert operation == "record_communication", operation
    assert set(params) == {"recipient", "subject"}, params
    assert params["recipient"] and params["subject"], params
    COMMUNICATIONS.append((params["recipient"], params["subject"]))
    return json.dumps({"recipient": params["recipient"], "sent_at": CLOCK.now().isoformat()})


ENGINE = SandboxedScriptEngine(clock=CLOCK.now, service_handler=record_service)
SERIALIZER = StateSerializer()
FORMS: dict[str, dict] = {}


def load_spec(fname: str):
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN_DIR / fname))
    return parser.get_spec(FILES[fname]), parser.get_subprocess_specs(FILES[fname])


def birth_for_age(years: int, months: int = 0) -> str:
    """An ISO birth date for a child who is `years` (and `months`) old on the clock's day."""
    today = CLOCK.now().date()
    total = today.year * 12 + today.month - 1 - (years * 12 + months)
    return date(total // 12, total % 12 + 1, min(today.day, 28)).isoformat()


class Run:
    """One instance driven like the engine does: start data, message start, steps, round-trips."""

    def __init__(self, spec, label: str, age: int):
        CLOCK.set(T0)
        COMMUNICATIONS.clear()
        self.birth = birth = birth_for_age(age)
        self.spec, self.label = spec, label
        self.wf = BpmnWorkflow(*spec, script_engine=ENGINE)
        for task in self.wf.get_tasks(spec_name="Start"):
            task.data.update({"data_naixement": birth})
        self.wf.do_engine_steps()
        self.events: list[tuple[str, dict]] = []
        self.path: list[str] = []

    def collect(self):
        self.events += [(e.event_definition.name, e.payload) for e in self.wf.get_events()]

    def _waiting_message_defs(self):
        """(task, message definition) for every message the instance waits for, also inside an
        event-based gateway (whose task holds a MultipleEventDefinition)."""
        for task in self.wf.get_tasks(state=TaskState.WAITING):
            definition = getattr(task.task_spec, "event_definition", None)
            inner = definition.event_definitions if isinstance(definition, MultipleEventDefinition) else [definition]
            for d in inner:
                if isinstance(d, MessageEventDefinition):
                    yield task, d

    def waiting_messages(self) -> list[str]:
        return sorted(d.name for _t, d in self._waiting_message_defs())

    def waiting_timers(self) -> list[tuple[str, datetime]]:
        return [(t.task_spec.bpmn_id, datetime.fromisoformat(t.internal_data["event_value"]))
                for t in self.wf.get_tasks(state=TaskState.WAITING)
                if "event_value" in t.internal_data]

    def send(self, name: str, payload: dict):
        waiting = [d for _t, d in self._waiting_message_defs() if d.name == name]
        assert waiting, f"{self.label}: nothing waits for {name} (waiting: {self.waiting_messages()})"
        self.wf.send_event(BpmnEvent(waiting[0], payload=payload))
        self.wf.do_engine_steps()
        self.path.append(f"<{name}>")
        self.collect()

    def advance(self, delta: timedelta):
        CLOCK.advance(delta)
        self.wf.refresh_timers()
        self.wf.do_engine_steps()
        self.collect()

    def ready(self) -> list[str]:
        return sorted(t.task_spec.bpmn_id for t in self.wf.get_tasks(state=TaskState.READY) if t.task_spec.manual)

    def complete(self, task_id: str, lane: str, data: dict):
        ready = {t.task_spec.bpmn_id: t for t in self.wf.get_tasks(state=TaskState.READY) if t.task_spec.manual}
        assert task_id in ready, f"{self.label}: expected {task_id} READY, got {sorted(ready)}"
        task = ready[task_id]
        assert task.task_spec.lane == lane, (task_id, task.task_spec.lane, lane)
        form_name = task.task_spec.extensions["properties"]["form"]
        form = FORMS.setdefault(form_name, parse_form((BPMN_DIR / form_name).read_bytes(), form_name))
        cleaned = validate_submission(form, data)          # what the service would store
        for field in form_fields(form):
            if field["type"] == "checkbox":
                cleaned.setdefault(field["key"], False)
        task.data.update(cleaned)
        task.run()
        self.wf.do_engine_steps()
        self.path.append(task_id)
        self.collect()

    def roundtrip(self):
        state = SERIALIZER.dumps(self.wf)
        self.wf = SERIALIZER.loads(state, self.spec[0], self.spec[1], ENGINE)

    def data(self) -> dict:
        """Data of the open user task (or of the last task run)."""
        ready = [t for t in self.wf.get_tasks(state=TaskState.READY) if t.task_spec.manual]
        if ready:
            return ready[0].data
        return self.wf.last_task.data if self.wf.last_task is not None else {}

    def ended(self) -> list[str]:
        assert self.wf.is_completed(), f"{self.label}: not completed; ready {self.ready()}, " \
                                       f"waiting {self.waiting_messages()} {self.waiting_timers()}"
        return [name for name, _ in self.events]


PROF, PSI, JUR, CAP, COM, URG = ("Professional de referència IMAS", "Psicòleg/psicòloga IMAS", "Jurista IMAS",
                                 "Cap de secció IMAS", "Comissió de Desemparament i Tutela",
                                 "Equip de primera valoració i urgències")
DERIVACIO = {"gravetat": "greu", "puntuacio": 11, "data_decisio_imas": "2025-03-01"}
URGENT = {"reporter_kind": "police", "data_guarda": "2025-03-02", "mesura_immediata": "acolliment_urgencia",
          "fiscalia_informada": True}


# --------------------------------------------------------------------------- pathway 4
def run_proteccio(spec, label, *, urgent=False, hearing="held", declared=True, choices=(), age=8,
                  reviews=False):
    """choices: the measures chosen in order (refused ones loop back to the choice)."""
    r = Run(spec, label, age)
    assert r.waiting_messages() == ["derivacio_proteccio_imas", "proteccio_urgent"], r.waiting_messages()
    r.roundtrip()
    if urgent:
        r.send("proteccio_urgent", URGENT)
        assert r.waiting_messages() == [], f"other start not cancelled: {r.waiting_messages()}"
        assert r.data()["via"] == "urgent" and r.data()["data_guarda"] == "2025-03-02"
        r.complete("p4_diligencies_urgents", URG, {
            "data_fi_diligencies_urgents": "2025-03-14", "recurs_guarda": "acolliment_urgencia",
            "resum_diligencies_urgents": "Diligències fetes"})
    else:
        r.send("derivacio_proteccio_imas", DERIVACIO)
        assert r.waiting_messages() == [], f"other start not cancelled: {r.waiting_messages()}"
        assert r.data()["via"] == "ordinaria" and r.data()["puntuacio"] == 11
        r.complete("p4_diligencies_previes", PROF, {
            "data_fi_diligencies": "2025-03-20", "resum_diligencies": "Informació recollida"})
        r.complete("p4_instruccio", JUR, {"data_incoacio": "2025-03-21", "data_citacio_audiencia": "2025-03-28"})
        assert r.waiting_messages() == ["audiencia_celebrada"], r.waiting_messages()
        (timer, due), = r.waiting_timers()
        # the event-based gateway's task holds the race's timer
        assert timer == "gw_p4_audiencia" and due == CLOCK.now() + timedelta(days=15), (timer, due)
        r.roundtrip()
        r.advance(timedelta(days=14))
        assert r.ready() == [] and r.waiting_messages() == ["audiencia_celebrada"], "hearing timer fired early"
        if hearing == "held":
            r.send("audiencia_celebrada", {"data_audiencia": "2025-03-28", "al_legacions": True})
            assert r.waiting_timers() == [], "the hearing timer survived the message"
        else:
            r.advance(timedelta(days=2))
            assert r.waiting_messages() == [], "the hearing message still waits after the timer"
            r.path.append("<15 dies>")
            r.complete("p4_incompareixenca", JUR, {"data_constatacio": "2025-04-13"})
    r.complete("p4_proposta_comissio", CAP, {
        "sentit_proposta": "declarar_desemparament" if declared else "no_declarar",
        "fonaments_proposta": "Fonaments"})
    r.roundtrip()
    r.complete("p4_resolucio_comissio", COM, {"data_resolucio": "2025-04-20", "desemparament_declarat": declared})
    if not declared:
        assert COMMUNICATIONS == [], COMMUNICATIONS
        r.complete("p4_retorn_municipal", CAP, {"gravetat_retorn": "moderat", "motiu_retorn": "Risc moderat"})
        assert [c[0] for c in COMMUNICATIONS] == ["Fiscalia de Menors"], COMMUNICATIONS
        return r
    assert [c[0] for c in COMMUNICATIONS] == ["Família", "Família", "Fiscalia de Menors"], COMMUNICATIONS
    assert "LEC art. 780" in COMMUNICATIONS[1][1], COMMUNICATIONS[1]
    assert r.ready() == ["p4_pip"], r.ready()
    assert r.data()["comunicacio_resolucio_familia"]["recipient"] == "Família"
    r.complete("p4_pip", PROF, {"data_pip": "2025-05-10", "objectius_pip": "Objectius"})
    for mesura in choices:
        r.complete("p4_mesura", PROF, {"mesura": mesura, "motivacio_mesura": "Motivació"})
        assert r.data().get("edat") == age, r.data().get("edat")
    if reviews:
        assert [n for n, _ in r.events] == ["revisio_programada"], r.events
        assert r.events[0][1] == {"ambit": "imas", "numero": 1, "data_naixement": r.birth}, r.events[0]
        assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
        r.roundtrip()
        r.send("revisions_finalitzades", {"resultat": "objectius_assolits", "ambit": "imas"})
    return r


# --------------------------------------------------------------------------- pathway 5
def run_reunificacio(spec, label, *, limit=False, improvement=True, solution=None, age=7):
    r = Run(spec, label, age)
    assert r.waiting_messages() == ["inici_reunificacio"], r.waiting_messages()
    r.send("inici_reunificacio", {"mesura": "reunificacio"})
    r.complete("p5_programa_reunificacio", PROF, {
        "data_inici_programa": "2025-03-03", "regim_visites": "supervisades_punt_trobada",
        "intervencio_psicoterapeutica": True, "objectius_programa": "Objectius"})
    assert [n for n, _ in r.events] == ["revisio_programada"], r.events
    assert r.events[0][1] == {"ambit": "imas", "numero": 1, "data_naixement": r.birth}
    assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
    (timer, due), = r.waiting_timers()
    assert timer == "p5_limit_dos_anys" and due == datetime(2027, 3, 3, 9, 0, tzinfo=UTC), (timer, due)
    r.roundtrip()
    r.advance(timedelta(days=729))
    assert r.ready() == [] and r.waiting_messages() == ["revisions_finalitzades"], "2-year timer fired early"
    if limit:
        r.advance(timedelta(days=2))
        r.path.append("<2 anys>")
        assert r.waiting_messages() == [], f"revisions_finalitzades still awaited: {r.waiting_messages()}"
        try:
            r.send("revisions_finalitzades", {"resultat": "en_curs", "ambit": "imas"})
        except AssertionError:
            pass
        else:
            raise AssertionError("a late revisions_finalitzades was accepted after the 2-year limit")
    else:
        r.send("revisions_finalitzades", {"resultat": "objectius_assolits" if improvement else "sense_millora",
                                          "ambit": "imas"})
        assert r.waiting_timers() == [], "the 2-year timer survived the message"
        r.complete("p5_informe_millora", PSI, {"data_informe_millora": "2026-09-01", "millora_real": improvement,
                                               "fonaments_informe_millora": "Fonaments"})
    if improvement and not limit:
        r.complete("p5_retorn_llar", PROF, {"data_retorn": "2026-09-15"})
        assert [c[0] for c in COMMUNICATIONS] == ["Fiscalia de Menors"], COMMUNICATIONS
        (timer, due), = r.waiting_timers()
        returned = CLOCK.now()
        assert timer == "p5_seguiment_un_any" and due == returned.replace(year=returned.year + 1), (timer, due)
        r.roundtrip()
        r.advance(due - returned - timedelta(minutes=1))
        assert r.ready() == [], "the follow-up timer fired early"
        r.advance(timedelta(minutes=2))
        r.path.append("<1 any>")
        r.complete("p5_tancar_seguiment", PROF, {"data_tancament_seguiment": "2027-09-20",
                                                 "resultat_seguiment": "estable"})
        return r
    r.complete("p5_solucio_permanent", CAP, {"solucio_permanent": solution, "motivacio_solucio": "Motivació"})
    assert [c[0] for c in COMMUNICATIONS] == ["Fiscalia de Menors"], COMMUNICATIONS
    assert "solució permanent" in COMMUNICATIONS[0][1]
    return r


def main() -> int:
    """Runs every check; the process clock is ours while the runs last, then restored."""
    previous = engine_clock.get_clock()
    engine_clock.set_clock(CLOCK)
    try:
        return _main()
    finally:
        engine_clock.set_clock(previous)


def _main() -> int:
    print("== static checks")
    infos = {fname: check_diagram(fname) for fname in FILES}
    for fname in FILES:
        check_deploy(fname)
    ids = all_user_task_ids()
    for fname, info in infos.items():
        for nid in info["user_tasks"]:
            if len(ids.get(nid, [])) != 1:
                problem(f"user task id {nid} (form file name) is used in {ids.get(nid)}")
    for fname, info in infos.items():
        for nid, u in info["user_tasks"].items():
            print(f"  {fname}: {nid} [{u['lane']}] keys={u['keys']} {u['props'] or ''}")
        for nid, msg, payload in info["throws"]:
            print(f"  {fname}: {nid} throws {msg} payload {payload}")
        for nid, msg, var in info["catches"]:
            print(f"  {fname}: {nid} catches {msg} into {var}")
        for nid, recipient, subject in info["services"]:
            print(f"  {fname}: {nid} records a communication to {recipient}: {subject}")
        for nid, value in info["timers"]:
            print(f"  {fname}: timer {nid} {value}")

    print("== runs")
    proteccio, reunificacio = load_spec("proteccio.bpmn"), load_spec("reunificacio.bpmn")
    results = []

    def record(label, fn, expected, check=None):
        try:
            r = fn(label)
            got = r.ended()
            if check is not None:
                check(r)
        except Exception as err:    # report and continue with the other paths
            problem(f"{label}: {type(err).__name__}: {err}")
            results.append(False)
            return
        ok = got == expected
        results.append(ok)
        print(f"  {'ok ' if ok else 'BAD'} {label}\n        path: {' > '.join(r.path)}\n"
              f"        ended with: {[(n, p) for n, p in r.events]}")
        if not ok:
            problem(f"{label}: expected {expected}, got {got}")

    def payload_is(name, expected):
        def check(r):
            got = [p for n, p in r.events if n == name][-1]
            assert got == expected, (name, got, expected)
        return check

    P = proteccio
    record("proteccio: ordinària, audiència celebrada, desemparament, reunificació",
           lambda l: run_proteccio(P, l, choices=["reunificacio"]), ["inici_reunificacio"],
           payload_is("inici_reunificacio", {"mesura": "reunificacio"}))
    record("proteccio: ordinària, termini d'audiència vençut, no desemparament",
           lambda l: run_proteccio(P, l, hearing="timer", declared=False), ["derivacio_intervencio_municipal"],
           payload_is("derivacio_intervencio_municipal",
                      {"gravetat": "moderat", "puntuacio": 11, "retornat_per_imas": True}))
    record("proteccio: urgent, desemparament, acolliment familiar",
           lambda l: run_proteccio(P, l, urgent=True, choices=["acolliment_familiar"]), ["inici_acolliment"],
           payload_is("inici_acolliment", {"mesura": "acolliment_familiar"}))
    record("proteccio: urgent, no desemparament",
           lambda l: run_proteccio(P, l, urgent=True, declared=False), ["derivacio_intervencio_municipal"],
           payload_is("derivacio_intervencio_municipal",
                      {"gravetat": "moderat", "puntuacio": None, "retornat_per_imas": True}))
    record("proteccio: ordinària, termini vençut, desemparament, adopció",
           lambda l: run_proteccio(P, l, hearing="timer", choices=["adopcio"], age=1), ["inici_adopcio"])
    record("proteccio: emancipació als 17 anys",
           lambda l: run_proteccio(P, l, choices=["emancipacio"], age=17), ["inici_emancipacio"])
    record("proteccio: emancipació als 15 (rebutjada), residencial als 15 amb revisions",
           lambda l: run_proteccio(P, l, choices=["emancipacio", "acolliment_residencial"], age=15, reviews=True),
           ["revisio_programada", "inici_reunificacio"],
           payload_is("inici_reunificacio", {"mesura": "acolliment_residencial"}))
    record("proteccio: residencial als 2 anys (rebutjat), acolliment familiar",
           lambda l: run_proteccio(P, l, urgent=True, choices=["acolliment_residencial", "acolliment_familiar"], age=2),
           ["inici_acolliment"])
    record("proteccio: residencial just als 3 anys, amb revisions",
           lambda l: run_proteccio(P, l, choices=["acolliment_residencial"], age=3, reviews=True),
           ["revisio_programada", "inici_reunificacio"])
    record("proteccio: emancipació just als 16 anys",
           lambda l: run_proteccio(P, l, urgent=True, choices=["emancipacio"], age=16), ["inici_emancipacio"])

    R = reunificacio
    record("reunificacio: revisions, millora real, retorn i seguiment d'1 any",
           lambda l: run_reunificacio(R, l), ["revisio_programada", "reunificacio_tancada"],
           payload_is("reunificacio_tancada", {"data_retorn": "2026-09-15", "resultat_seguiment": "estable"}))
    record("reunificacio: revisions, sense millora, acolliment permanent",
           lambda l: run_reunificacio(R, l, improvement=False, solution="acolliment_permanent"),
           ["revisio_programada", "inici_acolliment"],
           payload_is("inici_acolliment", {"mesura": "acolliment_familiar", "tipus_acolliment": "permanent"}))
    record("reunificacio: revisions, sense millora, adopció",
           lambda l: run_reunificacio(R, l, improvement=False, solution="adopcio", age=2),
           ["revisio_programada", "inici_adopcio"], payload_is("inici_adopcio", {"mesura": "adopcio"}))
    record("reunificacio: límit de 2 anys sense revisions finalitzades, adopció",
           lambda l: run_reunificacio(R, l, limit=True, solution="adopcio"), ["revisio_programada", "inici_adopcio"])
    record("reunificacio: límit de 2 anys, acolliment permanent",
           lambda l: run_reunificacio(R, l, limit=True, solution="acolliment_permanent"),
           ["revisio_programada", "inici_acolliment"])

    print(f"== {len(results)} runs, {sum(results)} ok; {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
