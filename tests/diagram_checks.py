"""Checks of the pathway diagrams in bpmn/, run by tests/test_bundled_diagrams.py.

Also runs on its own, printing a report:  .venv/bin/python tests/diagram_checks.py

1. Static checks (lxml): no DOCTYPE, full diagram interchange (a shape with bounds for every
   participant, lane and flow node, an edge with >= 2 waypoints for every sequence flow),
   layout sanity (nodes inside their lane, no overlapping shapes, edges that start and end on
   their nodes and do not cross other nodes), lane names from the role catalogue, user task
   properties, exclusive gateway conditions, names used by expressions, form-js files.
2. Dynamic checks: parse with SpiffWorkflow's SpiffBpmnParser (XSD-validated) and run every
   path to its end with the default script engine, printing the message each run ends with.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree
from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine, TaskDataEnvironment
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.util.task import TaskState

BPMN_DIR = Path(__file__).resolve().parent.parent / "bpmn"

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core",
}
ROLE_LANES = {
    "Treballador/a social": "sscb_social_worker",
    "Educador/a social": "sscb_social_educator",
    "Treballador/a familiar": "sscb_family_worker",
    "Auxiliar administratiu/va": "sscb_admin",
    "Coordinador/a SSCB": "sscb_coordinator",
    "Referent d'infància IMAS": "imas_childhood_referent",
    "Equip de primera valoració i urgències": "imas_intake",
    "Professional de referència IMAS": "imas_case_manager",
    "Psicòleg/psicòloga IMAS": "imas_psychologist",
    "Jurista IMAS": "imas_jurist",
    "Cap de secció IMAS": "imas_section_head",
}
FLOW_NODE_TAGS = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "exclusiveGateway", "parallelGateway",
    "inclusiveGateway", "eventBasedGateway", "complexGateway",
}
FORM_TYPES = {"textfield", "textarea", "number", "checkbox", "select", "radio", "datetime"}
SAFE_BUILTINS = {"len", "min", "max", "int", "str", "bool", "abs", "round", "sum", "True", "False", "None"}
START_DATA = {"reporter_kind", "anonymous"}
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
def check_form(path: Path) -> set[str]:
    keys: set[str] = set()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        problem(f"{path.name}: not valid JSON ({err})")
        return keys
    if doc.get("type") != "default" or not doc.get("id") or doc.get("schemaVersion") != 16:
        problem(f"{path.name}: needs type 'default', an id and schemaVersion 16")
    comps = doc.get("components")
    if not isinstance(comps, list) or not comps:
        problem(f"{path.name}: components must be a non-empty list")
        return keys
    for c in comps:
        t, key, label = c.get("type"), c.get("key"), c.get("label")
        if t not in FORM_TYPES:
            problem(f"{path.name}: component type {t!r} not allowed")
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            problem(f"{path.name}: key {key!r} is not snake_case ascii")
        elif key in keys:
            problem(f"{path.name}: duplicate key {key}")
        else:
            keys.add(key)
        if not isinstance(label, str) or not label.strip():
            problem(f"{path.name}: {key}: missing label")
        if t == "datetime" and c.get("subtype") != "date":
            problem(f"{path.name}: {key}: datetime needs subtype 'date'")
        if t in ("select", "radio"):
            vals = c.get("values")
            if not isinstance(vals, list) or not vals or not all(
                    isinstance(v, dict) and set(v) == {"label", "value"} for v in vals):
                problem(f"{path.name}: {key}: values must be a list of {{label, value}}")
        v = c.get("validate", {})
        if not isinstance(v, dict) or not set(v) <= {"required", "min", "max", "minLength", "maxLength"}:
            problem(f"{path.name}: {key}: bad validate {v!r}")
        if t == "checkbox" and v.get("required"):
            problem(f"{path.name}: {key}: a required checkbox forces the box to be ticked")
    return keys


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
            if not (isinstance(node.func, ast.Name) and node.func.id in SAFE_BUILTINS):
                problem(f"{where}: call to {ast.dump(node.func)} not allowed")
    return read - SAFE_BUILTINS, written


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
def check_diagram(path: Path, known_names: set[str]) -> dict:
    print(f"static: {path.name}")
    root = safe_parse(path)
    shapes = {s.get("bpmnElement"): s for s in root.iterfind(".//bpmndi:BPMNShape", NS)}
    edges = {e.get("bpmnElement"): e for e in root.iterfind(".//bpmndi:BPMNEdge", NS)}
    info = {"user_tasks": {}, "messages": {}, "conditions": {}}

    for part in root.iterfind(".//bpmn:participant", NS):
        if part.get("id") not in shapes or bounds_of(shapes[part.get("id")]) is None:
            problem(f"{path.name}: participant {part.get('id')} has no shape")
    pool = bounds_of(shapes[root.find(".//bpmn:participant", NS).get("id")])

    for msg in root.iterfind("bpmn:message", NS):
        info["messages"][msg.get("id")] = msg.get("name")

    process = root.find("bpmn:process", NS)
    if process is None or process.get("isExecutable") != "true":
        problem(f"{path.name}: needs one executable process")
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
                pair = {nodes[a].get("attachedToRef"), nodes[b].get("attachedToRef")}
                if a not in pair and b not in pair:
                    problem(f"{path.name}: shapes {a} and {b} overlap")
    # labels of events/gateways must not cover other nodes
    for nid, shape in shapes.items():
        lab = shape.find("bpmndi:BPMNLabel", NS)
        if nid in nodes and lab is not None:
            lb = bounds_of(lab)
            for other, ob in boxes.items():
                if other != nid and overlap(lb, ob):
                    problem(f"{path.name}: label of {nid} covers {other}")

    # sequence flow labels must not cover nodes either
    for fid, edge in edges.items():
        lab = edge.find("bpmndi:BPMNLabel", NS)
        if lab is not None:
            for other, ob in boxes.items():
                if overlap(bounds_of(lab), ob):
                    problem(f"{path.name}: label of flow {fid} covers {other}")

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
        host = nodes[src].get("attachedToRef")
        for p, q in zip(wps, wps[1:]):
            for other, ob in boxes.items():
                if other not in (src, tgt, host) and segment_hits(p, q, ob):
                    problem(f"{path.name}: edge {fid} crosses {other}")

    # gateways
    for nid, el in nodes.items():
        if local(el) == "exclusiveGateway":
            outs = [flows[f.text] for f in el.iterfind("bpmn:outgoing", NS)]
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
                    for name in read - known_names:
                        problem(f"{path.name}: condition on {f.get('id')} uses unknown {name}")

    # user tasks
    user_ids = [nid for nid, el in nodes.items() if local(el) == "userTask"]
    for nid in user_ids:
        el = nodes[nid]
        props = {p.get("name"): p.get("value")
                 for p in el.iterfind("bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property", NS)}
        form = props.get("form")
        if not form:
            problem(f"{path.name}: user task {nid} has no form property")
            continue
        form_path = BPMN_DIR / form
        keys = check_form(form_path) if form_path.exists() else set()
        if not form_path.exists():
            problem(f"{path.name}: {nid}: form {form} does not exist")
        if props.get("due_in") and not ISO_DURATION.match(props["due_in"]):
            problem(f"{path.name}: {nid}: due_in {props['due_in']} is not an ISO-8601 duration")
        if props.get("distinct_from") and props["distinct_from"] not in user_ids:
            problem(f"{path.name}: {nid}: distinct_from refers to no user task")
        info["user_tasks"][nid] = dict(lane=lane_of.get(nid, (None, None))[1], form=form,
                                       keys=sorted(keys), props=props)

    # service tasks, scripts, message payloads, timers
    for nid, el in nodes.items():
        for p in el.iterfind(".//spiffworkflow:parameter", NS):
            expr_names(p.get("value"), f"{path.name}:{nid}:{p.get('id')}")
        for s in el.iterfind("bpmn:script", NS):
            read, _ = expr_names(s.text, f"{path.name}:{nid}", mode="exec")
            for name in read - known_names:
                problem(f"{path.name}: script {nid} uses unknown {name}")
        for med in el.iterfind("bpmn:messageEventDefinition", NS):
            payload = med.find("bpmn:extensionElements/spiffworkflow:messagePayload", NS)
            var = med.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            name = info["messages"].get(med.get("messageRef"))
            if payload is not None:
                read, _ = expr_names(payload.text, f"{path.name}:{nid}:payload")
                for n in read - known_names:
                    problem(f"{path.name}: payload of {nid} uses unknown {n}")
                info.setdefault("throws", []).append((nid, name, payload.text.strip()))
            if var is not None:
                info.setdefault("catches", []).append((nid, name, var.text.strip()))
        for td in el.iterfind(".//bpmn:timeDuration", NS):
            value = ast.literal_eval(td.text.strip())
            if not ISO_DURATION.match(value):
                problem(f"{path.name}: timer {nid}: {td.text} is not a quoted ISO duration")
    return info


# --------------------------------------------------------------------------- dynamic
class CheckEnvironment(TaskDataEnvironment):
    """Default environment plus a record_communication service (returns what it recorded)."""

    def call_service(self, context, operation_name=None, operation_params=None, **kwargs):
        assert operation_name == "record_communication", operation_name
        params = {k: v["value"] for k, v in operation_params.items()}
        assert set(params) == {"recipient", "subject"}, params
        return json.dumps({"recipient": params["recipient"], "subject": params["subject"], "recorded": True})


ENGINE = PythonScriptEngine(environment=CheckEnvironment())
SERIALIZER = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))


def load_spec(bpmn: str, process_id: str, dmn: list[str] = ()):
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN_DIR / bpmn))
    for d in dmn:
        parser.add_dmn_file(str(BPMN_DIR / d))
    return parser.get_spec(process_id), parser.get_subprocess_specs(process_id)


def roundtrip(wf: BpmnWorkflow) -> BpmnWorkflow:
    restored = SERIALIZER.deserialize_json(SERIALIZER.serialize_json(wf))
    restored.script_engine = ENGINE
    return restored


def ready_user_tasks(wf):
    return [t for t in wf.get_tasks(state=TaskState.READY) if t.task_spec.manual]


def complete(wf, spec_name, lane, data):
    ready = {t.task_spec.name: t for t in ready_user_tasks(wf)}
    if spec_name not in ready:
        raise AssertionError(f"expected {spec_name} READY, got {sorted(ready)}")
    task = ready[spec_name]
    assert task.task_spec.lane == lane, (spec_name, task.task_spec.lane, lane)
    task.data.update(data)
    task.run()
    wf.do_engine_steps()


def ended_with(wf):
    assert wf.is_completed(), [t.task_spec.name for t in wf.get_tasks(state=TaskState.READY | TaskState.WAITING)]
    return [(e.event_definition.name, e.payload) for e in wf.get_events()]


DETECCIO = load_spec("deteccio.bpmn", "deteccio")
INVESTIGACIO = load_spec("investigacio.bpmn", "investigacio", ["gravetat.dmn"])


def run_deteccio(urgent: bool, reporter_kind: str, anonymous: bool):
    wf = BpmnWorkflow(*DETECCIO, script_engine=ENGINE)
    start = wf.get_tasks(state=TaskState.READY)[0]
    start.data.update({"reporter_kind": reporter_kind, "anonymous": anonymous})
    wf.do_engine_steps()
    complete(wf, "registre_notificacio", "Auxiliar administratiu/va",
             {"canal": "telefon", "data_recepcio": "2025-03-03", "es_reiteracio": False})
    wf = roundtrip(wf)
    complete(wf, "valorar_urgencia", "Treballador/a social",
             {"perill_immediat": urgent, "justificacio": "Valoració de prova"})
    if urgent:
        complete(wf, "assumir_guarda_provisional", "Equip de primera valoració i urgències",
                 {"data_guarda": "2025-03-03", "mesura_immediata": "acolliment_urgencia",
                  "fiscalia_informada": True})
    last = wf.get_tasks(state=TaskState.COMPLETED)[-1]
    assert last.data["comunicacio_rumi"]["recipient"] == "RUMI", last.data.get("comunicacio_rumi")
    events = wf.get_events()
    assert wf.is_completed()
    return [(e.event_definition.name, e.payload) for e in events], events


def start_investigacio(event):
    wf = BpmnWorkflow(*INVESTIGACIO, script_engine=ENGINE)
    wf.do_engine_steps()
    waiting = [e.name for e in wf.waiting_events()]
    assert waiting == ["investigacio_iniciada"], waiting
    wf.send_event(event)
    wf.do_engine_steps()
    return wf


def assess(wf, dims, abandonament=False):
    keys = ["cura_fisica", "seguretat", "necessitats_emocionals", "educacio", "maltractament"]
    complete(wf, "valoracio_gravetat", "Treballador/a social",
             dict(zip(keys, dims), abandonament=abandonament))


def run_investigacio(event, dims, expected, abandonament=False, reject_first=None,
                     imas_accepts=None, fire_timer=False):
    wf = start_investigacio(event)
    ready = sorted(t.task_spec.name for t in ready_user_tasks(wf))
    assert ready == ["visita_domiciliaria"], ready
    assert "notificacio" in wf.get_tasks(state=TaskState.READY)[0].data
    complete(wf, "visita_domiciliaria", "Treballador/a social",
             {"data_visita": "2025-03-10", "nombre_visites": 1, "familia_present": True,
              "condicions_habitatge": "deficients"})
    ready = sorted(t.task_spec.name for t in ready_user_tasks(wf))
    assert ready == ["informe_educatiu", "informe_social"], ready
    complete(wf, "informe_educatiu", "Educador/a social",
             {"data_informe_educatiu": "2025-03-12", "escolaritzacio": "absentisme",
              "coordinacio_centre_educatiu": True})
    assert not any(t.task_spec.name == "valoracio_gravetat" for t in ready_user_tasks(wf)), "join fired early"
    complete(wf, "informe_social", "Treballador/a social",
             {"data_informe_social": "2025-03-12", "situacio_economica": "precaria",
              "xarxa_suport": "limitada"})
    if reject_first is not None:
        assess(wf, reject_first)
        complete(wf, "validar_valoracio", "Coordinador/a SSCB",
                 {"valoracio_validada": False, "observacions": "Cal revisar les puntuacions"})
    assess(wf, dims, abandonament)
    wf = roundtrip(wf)
    validar = [t for t in ready_user_tasks(wf) if t.task_spec.name == "validar_valoracio"][0]
    assert validar.task_spec.extensions["properties"]["distinct_from"] == "valoracio_gravetat"
    got = validar.data["gravetat"]
    assert got == expected, (dims, abandonament, got, expected)
    assert validar.data["puntuacio"] == sum(dims), validar.data["puntuacio"]
    complete(wf, "validar_valoracio", "Coordinador/a SSCB", {"valoracio_validada": True, "observacions": ""})

    if expected in ("greu", "desemparament"):
        decision = [t for t in ready_user_tasks(wf) if t.task_spec.name == "decisio_imas"][0]
        assert decision.data["comunicacio_imas"]["recipient"] == "IMAS"
        timers = [e for e in wf.waiting_events() if e.event_type == "DurationTimerEventDefinition"]
        assert len(timers) == 1, wf.waiting_events()
        due = datetime.fromisoformat(timers[0].value)
        assert timedelta(days=19, hours=23) < due - datetime.now(UTC) <= timedelta(days=20), due
        wf.refresh_timers()
        assert not any(t.task_spec.name == "revisar_termini_vencut" for t in ready_user_tasks(wf))
        if fire_timer:
            timer = [t for t in wf.get_tasks(state=TaskState.WAITING) if t.task_spec.name == "termini_imas"][0]
            timer.internal_data["event_value"] = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
            wf.refresh_timers()
            wf.do_engine_steps()
            wf = roundtrip(wf)
            ready = sorted(t.task_spec.name for t in ready_user_tasks(wf))
            assert ready == ["decisio_imas", "revisar_termini_vencut"], ready   # non-interrupting
            complete(wf, "revisar_termini_vencut", "Cap de secció IMAS",
                     {"accio_revisio": "reclamar_decisio", "observacions_revisio": ""})
            assert not wf.is_completed()
        complete(wf, "decisio_imas", "Equip de primera valoració i urgències",
                 {"imas_accepta": imas_accepts, "data_decisio_imas": "2025-04-01", "motiu_decisio": ""})
    return ended_with(wf)


def _used_elsewhere(form_name: str) -> bool:
    """Whether a diagram other than pathways 1 and 2 refers to the form."""
    return any(f"forms/{form_name}" in path.read_text(encoding="utf-8")
               for path in BPMN_DIR.glob("*.bpmn") if path.name not in ("deteccio.bpmn", "investigacio.bpmn"))


def main() -> int:
    print("== static checks")
    known = set(START_DATA) | {"comunicacio_rumi", "comunicacio_imas", "notificacio", "puntuacio",
                               "dimensio_maxima", "gravetat"}
    for f in sorted((BPMN_DIR / "forms").glob("*.form")):
        if not _used_elsewhere(f.name):
            known |= check_form(f)
    # Pathways 1 and 2; the other diagrams have checkers of their own (diagram_checks_p*.py).
    infos = {name: check_diagram(BPMN_DIR / name, known) for name in ("deteccio.bpmn", "investigacio.bpmn")}
    safe_parse(BPMN_DIR / "gravetat.dmn")
    used_forms = {u["form"] for i in infos.values() for u in i["user_tasks"].values()}
    for f in sorted((BPMN_DIR / "forms").glob("*.form")):
        if f"forms/{f.name}" not in used_forms and not _used_elsewhere(f.name):
            problem(f"form {f.name} is used by no user task")
    for name, info in infos.items():
        for nid, u in info["user_tasks"].items():
            extra = {k: v for k, v in u["props"].items() if k != "form"}
            print(f"  {name}: {nid} [{u['lane']}] {u['form']} keys={u['keys']} {extra or ''}")
        for nid, msg, payload in info.get("throws", []):
            print(f"  {name}: {nid} throws {msg} payload {payload}")
        for nid, msg, var in info.get("catches", []):
            print(f"  {name}: {nid} catches {msg} into {var}")

    print("== runs")
    results = []

    def record(label, got, expected_message):
        names = [n for n, _p in got]
        ok = names == [expected_message]
        results.append(ok)
        print(f"  {'ok ' if ok else 'BAD'} {label}: ended with {got}")
        if not ok:
            problem(f"{label}: expected {expected_message}, got {names}")

    got, _ = run_deteccio(True, "police", False)
    record("deteccio urgent", got, "proteccio_urgent")
    got, events = run_deteccio(False, "school", True)
    record("deteccio no urgent", got, "investigacio_iniciada")
    handoff = events[0]

    cases = [
        ("sense risc", dict(dims=[0, 0, 0, 0, 0], expected="sense_risc"), "valoracio_sense_risc"),
        ("sense risc (puntuació 2, cap dimensió > 1)", dict(dims=[1, 1, 0, 0, 0], expected="sense_risc"),
         "valoracio_sense_risc"),
        ("lleu per puntuació", dict(dims=[1, 1, 1, 0, 0], expected="lleu"), "derivacio_intervencio_municipal"),
        ("lleu per dimensió", dict(dims=[2, 0, 0, 0, 0], expected="lleu"), "derivacio_intervencio_municipal"),
        ("moderat, validació rebutjada una vegada",
         dict(dims=[2, 2, 1, 1, 0], expected="moderat", reject_first=[0, 0, 0, 0, 0]),
         "derivacio_intervencio_municipal"),
        ("greu per puntuació, IMAS accepta", dict(dims=[3, 2, 2, 2, 2], expected="greu", imas_accepts=True),
         "derivacio_proteccio_imas"),
        ("greu per dimensió, IMAS retorna", dict(dims=[3, 0, 0, 0, 0], expected="greu", imas_accepts=False),
         "derivacio_intervencio_municipal"),
        ("desemparament, termini de 20 dies vençut, IMAS accepta",
         dict(dims=[1, 0, 0, 0, 0], abandonament=True, expected="desemparament", imas_accepts=True,
              fire_timer=True), "derivacio_proteccio_imas"),
        ("desemparament, termini vençut, IMAS retorna",
         dict(dims=[3, 3, 3, 3, 3], abandonament=True, expected="desemparament", imas_accepts=False,
              fire_timer=True), "derivacio_intervencio_municipal"),
    ]
    for label, kwargs, message in cases:
        try:
            got = run_investigacio(handoff, **kwargs)
        except Exception as err:    # report and continue with the other paths
            problem(f"investigacio {label}: {type(err).__name__}: {err}")
            continue
        record(f"investigacio {label}", got, message)
        if message == "derivacio_intervencio_municipal":
            assert got[0][1]["retornat_per_imas"] is (kwargs.get("imas_accepts") is False)

    print(f"== {len(results)} runs, {sum(results)} ok; {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
