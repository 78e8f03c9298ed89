"""The diagram checks shared by tests/diagram_checks*.py, and the static checks of every bundled diagram.

Runs on its own, printing a report:  cd /work/main && .venv/bin/python tests/diagram_static.py
(tests/test_bundled_diagrams.py runs it, and each tests/diagram_checks*.py, in an interpreter of its own.)

1. Static checks (hardened lxml), once over every bpmn/*.bpmn, every form in bpmn/forms/ and every
   DMN table:
   - no DOCTYPE/ENTITY; one participant referring to the one executable process, named after the file;
   - full diagram interchange: a shape with bounds for the participant, every lane and every flow
     node, an edge with >= 2 waypoints for every sequence flow, no shape or edge for unknown elements;
   - layout: lanes inside the pool and apart, every node in one lane and drawn inside it, no
     overlapping shapes, boundary events on the border of their activity, labels inside the pool and
     their lane, covering no shape and no other label, orthogonal edges that start and end on their
     nodes, stay inside the pool, cross no other node and run left to right but for LOOP_BACKS;
   - lane names from the role catalogue (workflows/roles.py), a name on every node, every flow in
     the incoming/outgoing lists of its nodes, no dangling nodes;
   - user tasks: a form of their own, forms/<task id>.form, ids unique across bpmn/, known
     properties only, ISO-8601 due_in, distinct_from naming a user task, legal_basis citing a law,
     case_legal_status from workflows/pathways.py (EXEMPT lists the conventions a diagram or form
     is not held to);
   - legal clocks (clock_start, clock_start_after, clock_stop) from workflows/clocks.py, each one
     started also stopped in the same diagram, none on gateways or start events, and exactly the
     ones of EXPECTED_CLOCKS where given;
   - expressions (conditions, scripts, payloads, service parameters, computed timers) accepted by
     the sandbox compiler (engine/sandbox.py), calling only sandbox helpers, reading only names the
     diagram sets (start data, form keys, message variables, script, DMN and service results);
     conditions read no form key that is not required (a checkbox is always set);
   - exclusive gateways (split or join; a label on each flow of a split, a condition on each flow
     but the default), event-based gateways (catch events after them, no conditions), service
     tasks (record_communication with a quoted recipient and subject), messages (fixed names,
     payload dict displays with the agreed keys, message variables on catches, the hand-offs of
     EXPECTED_MESSAGES), timers (quoted ISO durations or sandbox expressions);
   - forms: form-js conventions and the project's own validator (workflows/forms.py), every form
     used by a user task;
   - the deploy path: engine.bundle.compile_bundle with the domain hooks, for every diagram.
2. Shared dynamic helpers: SpiffBpmnParser(validator=VALIDATOR) specs, one manual clock for
   SpiffWorkflow's timers and the sandbox, the SandboxedScriptEngine recording communications,
   `Run` (one instance driven like the engine does: start data, form-validated submissions,
   messages, timers, spec-free state round-trips), and the problem()/attempt()/summary() report.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

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

from engine import clock as engine_clock  # noqa: E402  (makes SpiffWorkflow's timers read engine_clock)
from engine.bundle import bundles_from_directory, compile_bundle  # noqa: E402
from engine.errors import DeployError  # noqa: E402
from engine.sandbox import SandboxedScriptEngine, ScriptRejected, check_expression, check_script  # noqa: E402
from engine.serializer import StateSerializer  # noqa: E402  (what the engine stores: no spec)
from workflows import clocks as legal_clocks  # noqa: E402
from workflows.forms import FormDefinitionError, form_fields, parse_form, validate_submission  # noqa: E402
from workflows.hooks import DomainHooks  # noqa: E402
from workflows.pathways import LEGAL_STATUSES  # noqa: E402
from workflows.roles import NON_CASE_ROLES, ROLES  # noqa: E402

BPMN_DIR = ROOT / "bpmn"
FORMS_DIR = BPMN_DIR / "forms"

NS = {
    "bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
    "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
    "dc": "http://www.omg.org/spec/DD/20100524/DC",
    "di": "http://www.omg.org/spec/DD/20100524/DI",
    "spiffworkflow": "http://spiffworkflow.org/bpmn/schema/1.0/core",
    "dmn": "https://www.omg.org/spec/DMN/20191111/MODEL/",
}
PROPS = "bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property"

# --------------------------------------------------------------------------- catalogues
LANE_NAMES = {role.label for code, role in ROLES.items() if code not in NON_CASE_ROLES}
LANES = {code: role.label for code, role in ROLES.items()}      # role code → lane name
CLOCK_IDS = set(legal_clocks.CATALOGUE)
CLOCK_PROPERTIES = tuple(legal_clocks.CLOCK_PROPERTIES)     # clock_start, clock_start_after, clock_stop
USER_TASK_PROPERTIES = {"form", "due_in", "legal_basis", "distinct_from", "case_legal_status", *CLOCK_PROPERTIES}
LAWS = ("Llei 9/2019", "LO 1/1996", "CC", "Codi civil", "LEC")
FLOW_NODE_TAGS = {
    "startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent",
    "task", "userTask", "manualTask", "serviceTask", "scriptTask", "businessRuleTask", "sendTask",
    "receiveTask", "callActivity", "subProcess", "exclusiveGateway", "parallelGateway",
    "inclusiveGateway", "eventBasedGateway", "complexGateway",
}
THROW_EVENTS = {"endEvent", "intermediateThrowEvent"}
LABELLED_KINDS = {"startEvent", "endEvent", "intermediateCatchEvent", "intermediateThrowEvent", "exclusiveGateway",
                  "eventBasedGateway"}
ONE_WAY_OUT = {"userTask", "serviceTask", "scriptTask", "startEvent", "intermediateCatchEvent",
               "intermediateThrowEvent"}
FORM_TYPES = {"textfield", "textarea", "number", "checkbox", "select", "radio", "datetime"}
DISPLAY_TYPES = {"text"}        # form-js display components: no key, no value
VALIDATE_KEYS = {"required", "min", "max", "minLength", "maxLength"}
# What expressions may call: the sandbox's helpers and safe builtins.
SANDBOX_CALLS = {"len", "min", "max", "int", "float", "str", "bool", "abs", "round", "sum", "list", "dict", "set",
                 "tuple", "range", "sorted", "any", "all", "enumerate", "zip", "isinstance",
                 "today", "now", "date", "timedelta", "parse_date", "age_in_years", "add_months", "days_between",
                 "iso_duration"}
CONSTANTS = {"True", "False", "None"}
ISO_DURATION = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")
SNAKE = re.compile(r"[a-z][a-z0-9_]*")

# What an instance of a process starts with (workflows/service.py and the domain's start_data hook).
START_DATA = {
    "deteccio": {"reporter_kind", "anonymous"},
    "escalacio": {"nivell", "termini", "article", "venciment"},
}
DEFAULT_START_DATA = {"data_naixement"}

# The fixed message names (the pathways hand off to each other by them) and, where agreed, the
# keys of their payloads (None: any dict).
MESSAGE_KEYS: dict[str, set[str] | None] = {
    "investigacio_iniciada": None, "proteccio_urgent": None, "valoracio_sense_risc": None,
    "derivacio_intervencio_municipal": None,
    "derivacio_proteccio_imas": {"gravetat", "puntuacio", "origen"},
    "intervencio_tancada": None, "consentiment_familia": None, "negativa_familia": None,
    "al_legacions_presentades": None, "audiencia_celebrada": None,
    "revisio_programada": {"ambit", "numero", "data_naixement"},
    "revisions_finalitzades": {"resultat", "ambit"},
    "inici_reunificacio": None, "inici_acolliment": None, "inici_adopcio": None, "inici_emancipacio": None,
    "reunificacio_tancada": None, "acolliment_finalitzat": None, "adopcio_constituida": None,
    "adopcio_no_constituida": None, "emancipacio_finalitzada": None, "emancipacio_rebutjada": None,
    "acusament_fiscalia": None, "sentencia_judicial": None,
}

# --------------------------------------------------------------------------- per-diagram expectations
# Messages a diagram must throw and catch, exactly (the hand-offs other pathways rely on).
EXPECTED_MESSAGES = {
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
# Payloads that must be exactly these expressions.
EXPECTED_PAYLOADS = {
    "proteccio.bpmn": {"revisio_programada": "{'ambit': 'imas', 'numero': 1, 'data_naixement': data_naixement}"},
    "reunificacio.bpmn": {"revisio_programada": "{'ambit': 'imas', 'numero': 1, 'data_naixement': data_naixement}"},
}
# Clocks a diagram must carry, element by element: (clock_start, clock_stop); no other element has any.
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
LOOP_BACKS = {"Flow_p4_residencial_menor_3", "Flow_p4_emancipacio_menor_16", "Flow_validada_no",
              "Flow_urgencia_nou_acolliment"}
# Payload keys a diagram's throw agrees with its catcher, where they are not those of MESSAGE_KEYS.
DIAGRAM_MESSAGE_KEYS = {
    "investigacio.bpmn": {"derivacio_proteccio_imas": {"gravetat", "puntuacio", "data_decisio_imas"}},
}
# Conventions some diagrams or forms are not held to (every other one is):
# - "legal basis": a legal_basis on every user task (where a user task has one, it must cite a law anyway);
# - "form per task": every user task has a form of its own, forms/<task id>.form, with id Form_<task id>;
# - "label bounds": events and exclusive/event-based gateways carry label bounds;
# - "form keys unique": no key in two forms of the diagram (revisio: the municipal and the IMAS review are
#   alternatives that fill the same variables).
# escalacio.bpmn (a supervisor's review of a breached legal clock) is older than these conventions.
EXEMPT: dict[str, set[str]] = {
    "escalacio.bpmn": {"legal basis", "form per task", "label bounds"},
    "escalacio_revisar.form": {"form per task"},
    "revisio.bpmn": {"form keys unique"},
    **{name: {"legal basis"} for name in (
        "deteccio.bpmn", "investigacio.bpmn", "proteccio.bpmn", "acolliment.bpmn", "familia_acollidora.bpmn",
        "adopcio.bpmn", "sollicitants_adopcio.bpmn", "emancipacio.bpmn")},
}

PROBLEMS: list[str] = []


def problem(msg: str) -> None:
    PROBLEMS.append(msg)
    print("  PROBLEM:", msg)


def held_to(name: str, convention: str) -> bool:
    return convention not in EXEMPT.get(name, ())


def local(el) -> str:
    return etree.QName(el).localname


def safe_parse(path: Path):
    raw = path.read_bytes()
    if re.search(rb"<!\s*(DOCTYPE|ENTITY)", raw, re.IGNORECASE):
        problem(f"{path.name}: DOCTYPE/ENTITY declaration")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, remove_pis=True)
    return etree.fromstring(raw, parser)


def props_of(el) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in el.iterfind(PROPS, NS)}


def clock_ids(value: str | None) -> list[str]:
    return [c.strip() for c in (value or "").split(",") if c.strip()]


# --------------------------------------------------------------------------- forms
def check_form(path: Path) -> dict[str, dict]:
    """Component by key, after checking the project's form conventions."""
    comps_by_key: dict[str, dict] = {}
    try:
        raw = path.read_bytes()
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError) as err:
        problem(f"{path.name}: not valid JSON ({err})")
        return comps_by_key
    try:
        parse_form(raw, path.name)          # the service's own deploy-time validation
    except (FormDefinitionError, ValueError) as err:
        problem(f"{path.name}: rejected by workflows.forms: {err}")
    wanted_id = f"Form_{path.stem}" if held_to(path.name, "form per task") else doc.get("id") or "an id"
    if doc.get("type") != "default" or doc.get("id") != wanted_id or doc.get("schemaVersion") != 16:
        problem(f"{path.name}: needs type 'default', id {wanted_id!r} and schemaVersion 16")
    comps = doc.get("components")
    if not isinstance(comps, list) or not comps:
        problem(f"{path.name}: components must be a non-empty list")
        return comps_by_key
    for c in comps:
        t, key, label = c.get("type"), c.get("key"), c.get("label")
        if t in DISPLAY_TYPES:
            if key is not None or not str(c.get("text") or "").strip():
                problem(f"{path.name}: display component {c.get('id')} needs a text and no key")
            continue
        if t not in FORM_TYPES:
            problem(f"{path.name}: component type {t!r} not allowed")
        if not isinstance(key, str) or not SNAKE.fullmatch(key):
            problem(f"{path.name}: key {key!r} is not snake_case ascii")
            continue
        if key in comps_by_key:
            problem(f"{path.name}: duplicate key {key}")
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
            elif t == "radio" and [v["value"] for v in vals] != [True, False]:
                problem(f"{path.name}: {key}: a yes/no radio needs the values [true, false]")
        v = c.get("validate", {})
        if not isinstance(v, dict) or not set(v) <= VALIDATE_KEYS:
            problem(f"{path.name}: {key}: bad validate {v!r}")
        elif t == "checkbox" and v.get("required"):
            problem(f"{path.name}: {key}: a required checkbox forces the box to be ticked")
    if not comps_by_key:
        problem(f"{path.name}: no input components")
    return comps_by_key


def guaranteed(comp: dict) -> bool:
    """A key a condition may read: required, or a checkbox (arrives as false when unticked)."""
    return comp.get("type") == "checkbox" or bool(comp.get("validate", {}).get("required"))


# --------------------------------------------------------------------------- expressions
def expr_names(source: str, where: str, mode: str = "eval") -> tuple[set[str], set[str]]:
    """Names read and names assigned by an expression or script; the sandbox must accept it."""
    try:
        (check_script(source) if mode == "exec" else check_expression(source.strip()))
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
            problem(f"{where}: attribute access .{node.attr} (keep expressions plain)")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                problem(f"{where}: name {node.id} starts with underscore")
            (written if isinstance(node.ctx, ast.Store) else read).add(node.id)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in SANDBOX_CALLS):
            problem(f"{where}: call to {ast.dump(node.func)} not allowed")
    return read - SANDBOX_CALLS - CONSTANTS, written


def dict_keys(source: str) -> set | None:
    """The keys of a dict display with constant keys, else None."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.Dict) or not all(isinstance(k, ast.Constant) for k in tree.keys):
        return None
    return {k.value for k in tree.keys}


def literal(source: str | None) -> Any:
    try:
        return ast.literal_eval((source or "").strip())
    except (ValueError, SyntaxError):
        return None


def dmn_outputs() -> dict[str, set[str]]:
    """Decision id → the names its table sets, for every DMN file in bpmn/."""
    out: dict[str, set[str]] = {}
    for path in sorted(BPMN_DIR.glob("*.dmn")):
        root = safe_parse(path)
        for decision in root.iter("{*}decision"):
            out[decision.get("id")] = {o.get("name") for o in decision.iter("{*}output")}
    return out


# --------------------------------------------------------------------------- geometry
Box = tuple[float, float, float, float]


def bounds_of(shape) -> Box | None:
    b = shape.find("dc:Bounds", NS)
    return None if b is None else tuple(float(b.get(k)) for k in ("x", "y", "width", "height"))


def overlap(a: Box, b: Box) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def inside(inner: Box, outer: Box) -> bool:
    return (inner[0] >= outer[0] and inner[1] >= outer[1]
            and inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3])


def on_border(pt, r: Box, tol: float = 2.0) -> bool:
    x, y = pt
    within = r[0] - tol <= x <= r[0] + r[2] + tol and r[1] - tol <= y <= r[1] + r[3] + tol
    near_v = abs(x - r[0]) <= tol or abs(x - r[0] - r[2]) <= tol
    near_h = abs(y - r[1]) <= tol or abs(y - r[1] - r[3]) <= tol
    return within and (near_v or near_h)


def segment_hits(p, q, r: Box, where: str) -> bool:
    """Axis-aligned segment p-q crosses the interior of rectangle r (shrunk by 1px)."""
    x0, y0, x1, y1 = r[0] + 1, r[1] + 1, r[0] + r[2] - 1, r[1] + r[3] - 1
    if abs(p[0] - q[0]) < 0.01:     # vertical
        return x0 < p[0] < x1 and max(p[1], q[1]) > y0 and min(p[1], q[1]) < y1
    if abs(p[1] - q[1]) < 0.01:     # horizontal
        return y0 < p[1] < y1 and max(p[0], q[0]) > x0 and min(p[0], q[0]) < x1
    problem(f"{where}: diagonal edge segment {p}->{q}")
    return False


def segment_box(p, q) -> Box:
    return min(p[0], q[0]), min(p[1], q[1]), abs(p[0] - q[0]), abs(p[1] - q[1])


# --------------------------------------------------------------------------- static check of one diagram
@dataclass
class Diagram:
    """One parsed .bpmn file and what its checks found out along the way."""

    path: Path
    root: Any
    process: Any = None
    pool: Box | None = None
    participant_id: str | None = None
    shapes: dict = field(default_factory=dict)
    edges: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)
    flows: dict = field(default_factory=dict)
    messages: dict = field(default_factory=dict)
    lane_of: dict = field(default_factory=dict)
    lane_boxes: dict = field(default_factory=dict)
    boxes: dict = field(default_factory=dict)
    forms: dict = field(default_factory=dict)           # user task id → {key: component}
    known: set = field(default_factory=set)              # names expressions may read
    sure: set = field(default_factory=set)               # names conditions may read
    info: dict = field(default_factory=lambda: {"user_tasks": {}, "throws": [], "catches": [], "services": [],
                                                "timers": [], "clocks": {}, "conditions": {}})

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def process_id(self) -> str:
        return self.path.stem

    def say(self, msg: str) -> None:
        problem(f"{self.name}: {msg}")

    def outgoing(self, nid: str) -> list:
        return [self.flows[f.text] for f in self.nodes[nid].iterfind("bpmn:outgoing", NS) if f.text in self.flows]


def check_structure(d: Diagram) -> bool:
    d.shapes = {s.get("bpmnElement"): s for s in d.root.iterfind(".//bpmndi:BPMNShape", NS)}
    d.edges = {e.get("bpmnElement"): e for e in d.root.iterfind(".//bpmndi:BPMNEdge", NS)}
    parts = d.root.findall(".//bpmn:participant", NS)
    if len(parts) != 1 or parts[0].get("processRef") != d.process_id:
        d.say(f"needs one participant referring to process {d.process_id}")
    for part in parts:
        if part.get("id") not in d.shapes or bounds_of(d.shapes[part.get("id")]) is None:
            d.say(f"participant {part.get('id')} has no shape")
    d.process = d.root.find("bpmn:process", NS)
    if d.process is None or d.process.get("id") != d.process_id or d.process.get("isExecutable") != "true":
        d.say(f"needs the executable process {d.process_id}")
        return False
    d.participant_id = parts[0].get("id") if parts else None
    if d.participant_id not in d.shapes or bounds_of(d.shapes[d.participant_id]) is None:
        return False            # nothing to lay out in
    d.pool = bounds_of(d.shapes[d.participant_id])
    for msg in d.root.iterfind("bpmn:message", NS):
        d.messages[msg.get("id")] = msg.get("name")
        if msg.get("name") not in MESSAGE_KEYS:
            d.say(f"message {msg.get('name')!r} is not one of the fixed names")
    d.nodes = {el.get("id"): el for el in d.process if local(el) in FLOW_NODE_TAGS}
    d.flows = {el.get("id"): el for el in d.process if local(el) == "sequenceFlow"}
    if any(local(el) in ("subProcess", "callActivity") for el in d.process):
        d.say("unexpected subprocess/call activity")
    return True


def check_lanes(d: Diagram) -> None:
    for lane in d.process.iterfind(".//bpmn:lane", NS):
        lid, name = lane.get("id"), lane.get("name")
        if name not in LANE_NAMES:
            d.say(f"lane name {name!r} is not a role label")
        if lid not in d.shapes or bounds_of(d.shapes[lid]) is None:
            d.say(f"lane {lid} has no shape")
            continue
        box = bounds_of(d.shapes[lid])
        if not inside(box, d.pool):
            d.say(f"lane {name} outside its pool")
        for other_id, other in d.lane_boxes.items():
            if overlap(box, other):
                d.say(f"lanes {lid} and {other_id} overlap")
        d.lane_boxes[lid] = box
        for ref in lane.iterfind("bpmn:flowNodeRef", NS):
            if ref.text in d.lane_of:
                d.say(f"{ref.text} is in two lanes")
            if ref.text not in d.nodes:
                d.say(f"lane {name} refers to unknown node {ref.text}")
            d.lane_of[ref.text] = (lid, name)


def check_nodes(d: Diagram) -> None:
    for nid, el in d.nodes.items():
        if nid not in d.shapes or bounds_of(d.shapes[nid]) is None:
            d.say(f"flow node {nid} has no shape with bounds")
            continue
        d.boxes[nid] = bounds_of(d.shapes[nid])
        if nid not in d.lane_of:
            d.say(f"flow node {nid} is in no lane")
        elif not inside(d.boxes[nid], d.lane_boxes.get(d.lane_of[nid][0], d.pool)):
            d.say(f"{nid} drawn outside its lane {d.lane_of[nid][1]}")
        if local(el) != "parallelGateway" and not (el.get("name") or "").strip():
            d.say(f"{nid} has no (Catalan) name")
        if local(el) in LABELLED_KINDS and d.shapes[nid].find("bpmndi:BPMNLabel", NS) is None \
                and held_to(d.name, "label bounds"):
            d.say(f"{nid} has no label bounds")
    ids = sorted(d.boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            attached = b == d.nodes[a].get("attachedToRef") or a == d.nodes[b].get("attachedToRef")
            if overlap(d.boxes[a], d.boxes[b]) and not attached:
                d.say(f"shapes {a} and {b} overlap")
    for nid, el in d.nodes.items():
        if local(el) == "boundaryEvent" and nid in d.boxes:
            host = d.boxes.get(el.get("attachedToRef"))
            centre = (d.boxes[nid][0] + d.boxes[nid][2] / 2, d.boxes[nid][1] + d.boxes[nid][3] / 2)
            if host is None or not on_border(centre, host):
                d.say(f"boundary event {nid} is not drawn on the border of its activity")
    for sid in d.shapes:
        if sid not in d.nodes and sid not in d.lane_boxes and sid != d.participant_id:
            d.say(f"shape for unknown element {sid}")


def check_labels(d: Diagram) -> None:
    labels: dict[str, Box] = {}
    for eid, holder in list(d.shapes.items()) + list(d.edges.items()):
        lab = holder.find("bpmndi:BPMNLabel", NS)
        if lab is None or bounds_of(lab) is None:
            continue
        labels[eid] = lb = bounds_of(lab)
        if not inside(lb, d.pool):
            d.say(f"label of {eid} outside the pool")
        if eid in d.nodes and eid in d.lane_of and not inside(lb, d.lane_boxes.get(d.lane_of[eid][0], d.pool)):
            d.say(f"label of {eid} sticks out of its lane")
        for other, ob in d.boxes.items():
            if other != eid and overlap(lb, ob):
                d.say(f"label of {eid} covers {other}")
    ids = sorted(labels)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if overlap(labels[a], labels[b]):
                d.say(f"labels of {a} and {b} overlap")


def check_flows(d: Diagram) -> None:
    for fid, fl in d.flows.items():
        src, tgt = fl.get("sourceRef"), fl.get("targetRef")
        if src not in d.nodes or tgt not in d.nodes:
            d.say(f"flow {fid} refers to unknown nodes")
            continue
        if fid not in [o.text for o in d.nodes[src].iterfind("bpmn:outgoing", NS)] or \
                fid not in [i.text for i in d.nodes[tgt].iterfind("bpmn:incoming", NS)]:
            d.say(f"flow {fid} missing from incoming/outgoing of its nodes")
        edge = d.edges.get(fid)
        wps = [] if edge is None else [(float(w.get("x")), float(w.get("y")))
                                       for w in edge.iterfind("di:waypoint", NS)]
        if len(wps) < 2:
            d.say(f"sequence flow {fid} has no edge with 2+ waypoints")
            continue
        if src in d.boxes and not on_border(wps[0], d.boxes[src]):
            d.say(f"edge {fid} does not start on {src}")
        if tgt in d.boxes and not on_border(wps[-1], d.boxes[tgt]):
            d.say(f"edge {fid} does not end on {tgt}")
        for p, q in zip(wps, wps[1:], strict=False):
            if not inside(segment_box(p, q), d.pool):
                d.say(f"edge {fid} leaves the pool")
            for other, ob in d.boxes.items():
                if other not in (src, tgt) and segment_hits(p, q, ob, f"{d.name}:{fid}"):
                    d.say(f"edge {fid} crosses {other}")
        backwards = wps[-1][0] < wps[0][0] - 1
        if src in d.boxes and tgt in d.boxes:
            backwards = backwards or d.boxes[tgt][0] + d.boxes[tgt][2] / 2 <= d.boxes[src][0] + d.boxes[src][2] / 2
        if backwards != (fid in LOOP_BACKS):
            d.say(f"flow {fid} runs {'right to left' if backwards else 'left to right'} unexpectedly")
    for eid in d.edges:
        if eid not in d.flows:
            d.say(f"edge for unknown flow {eid}")
    for nid, el in d.nodes.items():
        kind = local(el)
        ins = [f for f in d.flows.values() if f.get("targetRef") == nid]
        outs = [f for f in d.flows.values() if f.get("sourceRef") == nid]
        if kind not in ("startEvent", "boundaryEvent") and not ins:
            d.say(f"{nid} has no incoming flow")
        if kind != "endEvent" and not outs:
            d.say(f"{nid} has no outgoing flow")
        if kind in ONE_WAY_OUT and len(outs) != 1:
            d.say(f"{nid} must have exactly one outgoing flow")
        if kind == "endEvent" and outs:
            d.say(f"end event {nid} has outgoing flows")


def collect_names(d: Diagram, decisions: dict[str, set[str]]) -> None:
    """Names expressions may read: start data, form keys, message variables, script, DMN and service
    results. Conditions may not read a form key that can be left out."""
    start = START_DATA.get(d.process_id, DEFAULT_START_DATA)
    computed, received = set(), set()
    checked: dict[str, dict] = {}
    for nid, el in d.nodes.items():
        if local(el) == "userTask":
            form = props_of(el).get("form")
            if form and (BPMN_DIR / form).is_file():
                if form not in checked:
                    checked[form] = check_form(BPMN_DIR / form)
                d.forms[nid] = checked[form]
        for s in el.iterfind("bpmn:script", NS):
            computed |= expr_names(s.text or "", f"{d.name}:{nid}", mode="exec")[1]
        for ref in el.iterfind(".//spiffworkflow:calledDecisionId", NS):
            if ref.text.strip() not in decisions:
                d.say(f"{nid} calls the unknown decision {ref.text.strip()}")
            computed |= decisions.get(ref.text.strip(), set())
        for var in el.iterfind(".//spiffworkflow:messageVariable", NS):
            received.add(var.text.strip())
        for op in el.iterfind(".//spiffworkflow:serviceTaskOperator", NS):
            if op.get("resultVariable"):
                received.add(op.get("resultVariable"))
    form_keys: dict[str, dict] = {}
    for comps in {id(c): c for c in d.forms.values()}.values():      # a form shared by two tasks: once
        for key, comp in comps.items():
            if key in form_keys and held_to(d.name, "form keys unique"):
                d.say(f"form key {key} used by two forms of the diagram")
            form_keys[key] = comp
    d.known = start | computed | received | set(form_keys)
    d.sure = d.known - {k for k, c in form_keys.items() if not guaranteed(c)}


def check_user_tasks(d: Diagram, user_task_files: dict[str, list[str]]) -> None:
    user_ids = [nid for nid, el in d.nodes.items() if local(el) == "userTask"]
    for nid in user_ids:
        props = props_of(d.nodes[nid])
        form = props.get("form")
        if not form:
            d.say(f"user task {nid} has no form property")
        elif form != f"forms/{nid}.form" and held_to(d.name, "form per task"):
            d.say(f"user task {nid} must use form forms/{nid}.form (has {form!r})")
        if not form or not (BPMN_DIR / form).is_file():
            d.say(f"{nid}: form {form} does not exist")
        if len(user_task_files.get(nid, [])) != 1:
            d.say(f"user task id {nid} (form file name) is used in {user_task_files.get(nid)}")
        if props.get("due_in") and not ISO_DURATION.match(props["due_in"]):
            d.say(f"{nid}: due_in {props['due_in']} is not an ISO-8601 duration")
        if props.get("distinct_from") and props["distinct_from"] not in user_ids:
            d.say(f"{nid}: distinct_from refers to no user task")
        if "legal_basis" in props or held_to(d.name, "legal basis"):
            if not (props.get("legal_basis") or "").startswith(LAWS):
                d.say(f"{nid}: legal_basis missing or not citing a law")
        unknown = set(props) - USER_TASK_PROPERTIES
        if unknown:
            d.say(f"{nid}: unknown properties {sorted(unknown)}")
        d.info["user_tasks"][nid] = dict(lane=d.lane_of.get(nid, (None, None))[1], form=form,
                                         keys=sorted(d.forms.get(nid, {})), props=props)
    for nid, el in d.nodes.items():
        status = props_of(el).get("case_legal_status")
        if status is not None and status not in LEGAL_STATUSES:
            d.say(f"{nid}: case_legal_status {status!r} is not one of {LEGAL_STATUSES}")


def check_clocks(d: Diagram) -> None:
    starts: dict[str, list[str]] = {}
    stops: dict[str, list[str]] = {}
    expected = EXPECTED_CLOCKS.get(d.name)
    for nid, el in d.nodes.items():
        props = props_of(el)
        for key in CLOCK_PROPERTIES:
            for cid in clock_ids(props.get(key)):
                if cid not in CLOCK_IDS:
                    d.say(f"{nid}: {key} {cid!r} is not in the clock catalogue")
                if local(el).endswith("Gateway"):
                    d.say(f"{nid}: clocks on gateways are ignored by SpiffWorkflow")
                (stops if key == "clock_stop" else starts).setdefault(cid, []).append(nid)
        if local(el) == "startEvent" and any(props.get(k) for k in CLOCK_PROPERTIES):
            d.say(f"{nid}: no clocks on start events (they wait from the instance's creation)")
        if expected is not None:
            got = (props.get("clock_start"), props.get("clock_stop"))
            if nid in expected and got != expected[nid]:
                d.say(f"{nid}: clocks {got}, expected {expected[nid]}")
            if nid not in expected and any(props.get(k) for k in CLOCK_PROPERTIES):
                d.say(f"{nid}: unexpected clocks {got}")
    for nid in expected or {}:
        if nid not in d.nodes:
            d.say(f"clock element {nid} missing")
    for cid in sorted(set(starts) | set(stops)):
        if cid not in starts or cid not in stops:
            d.say(f"clock {cid} is started or stopped but not both")
        d.info["clocks"][cid] = (starts.get(cid, []), stops.get(cid, []))


def check_gateways(d: Diagram) -> None:
    for nid, el in d.nodes.items():
        kind, outs = local(el), d.outgoing(nid)
        if kind == "eventBasedGateway":
            for f in outs:
                target = d.nodes[f.get("targetRef")]
                if local(target) != "intermediateCatchEvent":
                    d.say(f"event-based gateway {nid} leads to {local(target)} {target.get('id')}")
                if f.find("bpmn:conditionExpression", NS) is not None:
                    d.say(f"flow {f.get('id')} after an event-based gateway has a condition")
        if kind != "exclusiveGateway":
            continue
        default = el.get("default")
        ins = [f for f in d.flows.values() if f.get("targetRef") == nid]
        if len(outs) < 2 and len(ins) < 2:
            d.say(f"gateway {nid} neither splits nor joins")
        if default and default not in [f.get("id") for f in outs]:
            d.say(f"default of {nid} is not one of its outgoing flows")
        for f in outs:
            fid, cond = f.get("id"), f.find("bpmn:conditionExpression", NS)
            if len(outs) > 1 and not (f.get("name") or "").strip():
                d.say(f"flow {fid} from {nid} has no label")
            if fid == default:
                if cond is not None:
                    d.say(f"default flow {fid} has a condition")
                continue
            if cond is None or not (cond.text or "").strip():
                d.say(f"flow {fid} from {nid} has no condition")
                continue
            read, _ = expr_names(cond.text, f"{d.name}:{fid}")
            d.info["conditions"][fid] = cond.text.strip()
            for n in sorted(read - d.known):
                d.say(f"condition on {fid} uses unknown {n}")
            for n in sorted((read & d.known) - d.sure):
                d.say(f"condition on {fid} reads {n}, a form key that is not required")


def check_services(d: Diagram) -> None:
    for nid, el in d.nodes.items():
        ops = el.findall(".//spiffworkflow:serviceTaskOperator", NS)
        if local(el) == "serviceTask" and not ops:
            d.say(f"service task {nid} must call record_communication(recipient, subject)")
        for op in ops:
            params = {p.get("id"): p.get("value") for p in op.iterfind(".//spiffworkflow:parameter", NS)}
            if op.get("id") != "record_communication" or set(params) != {"recipient", "subject"}:
                d.say(f"{nid}: service must be record_communication(recipient, subject)")
            for pid, value in params.items():
                read, _ = expr_names(value or "", f"{d.name}:{nid}:{pid}")
                for n in sorted(read - d.known):
                    d.say(f"parameter {pid} of {nid} uses unknown {n}")
                if not isinstance(literal(value), str) or not literal(value).strip():
                    d.say(f"{nid}: {pid} must be a non-empty quoted text")
            d.info["services"].append((nid, literal(params.get("recipient")), literal(params.get("subject"))))
        for s in el.iterfind("bpmn:script", NS):
            read, _ = expr_names(s.text or "", f"{d.name}:{nid}", mode="exec")
            for n in sorted(read - d.known):
                d.say(f"script {nid} uses unknown {n}")


def check_messages(d: Diagram) -> None:
    for nid, el in d.nodes.items():
        defs = [(med, med.get("messageRef")) for med in el.iterfind("bpmn:messageEventDefinition", NS)]
        if local(el) == "receiveTask":
            defs.append((el, el.get("messageRef")))
        for holder, ref in defs:
            name = d.messages.get(ref)
            if name is None:
                d.say(f"{nid}: message reference {ref} is not a declared message")
            payload = holder.find("bpmn:extensionElements/spiffworkflow:messagePayload", NS)
            var = holder.find("bpmn:extensionElements/spiffworkflow:messageVariable", NS)
            if local(el) in THROW_EVENTS:
                if payload is None or not (payload.text or "").strip():
                    d.say(f"{nid} throws {name} without a payload")
                    continue
                read, _ = expr_names(payload.text, f"{d.name}:{nid}:payload")
                for n in sorted(read - d.known):
                    d.say(f"payload of {nid} uses unknown {n}")
                keys = dict_keys(payload.text)
                agreed = DIAGRAM_MESSAGE_KEYS.get(d.name, {}).get(name, MESSAGE_KEYS.get(name))
                if keys is None:
                    d.say(f"payload of {nid} is not a dict display")
                elif agreed is not None and keys != agreed:
                    d.say(f"payload of {nid} ({name}) has keys {sorted(keys)}, expected {sorted(agreed)}")
                wanted = EXPECTED_PAYLOADS.get(d.name, {}).get(name)
                if wanted is not None and payload.text.strip() != wanted:
                    d.say(f"{nid}: {name} payload must be the agreed one: {wanted}")
                d.info["throws"].append((nid, name, payload.text.strip()))
            elif var is None or not SNAKE.fullmatch((var.text or "").strip()):
                d.say(f"{nid} catches {name} without a messageVariable")
            else:
                d.info["catches"].append((nid, name, var.text.strip()))
    expected = EXPECTED_MESSAGES.get(d.name)
    if expected is not None:
        for what, found in (("throws", d.info["throws"]), ("catches", d.info["catches"])):
            got = {n for _, n, _ in found}
            if got != expected[what]:
                d.say(f"{what} {sorted(got)}, expected {sorted(expected[what])}")


def check_timers(d: Diagram) -> None:
    for nid, el in d.nodes.items():
        for td in el.iterfind(".//bpmn:timeDuration", NS):
            text = (td.text or "").strip()
            read, _ = expr_names(text, f"{d.name}:{nid}:timer")
            value = literal(text)
            if value is None:           # computed: an expression over names the diagram sets
                for n in sorted(read - d.known):
                    d.say(f"timer {nid} uses unknown {n}")
            elif not isinstance(value, str) or not ISO_DURATION.match(value):
                d.say(f"timer {nid}: {text} is not a quoted ISO duration")
            d.info["timers"].append((nid, "timeDuration", text))
        for tag in ("timeDate", "timeCycle"):
            for td in el.iterfind(f".//bpmn:{tag}", NS):
                read, _ = expr_names(td.text or "", f"{d.name}:{nid}:{tag}")
                for n in sorted(read - d.known):
                    d.say(f"timer {nid} uses unknown {n}")
                d.info["timers"].append((nid, tag, (td.text or "").strip()))


def check_diagram(path: Path, decisions: dict[str, set[str]], user_task_files: dict[str, list[str]]) -> dict:
    """Every static check of one .bpmn file; returns what it found (user tasks, messages, timers...)."""
    print(f"static: {path.name}")
    d = Diagram(path, safe_parse(path))
    if not check_structure(d):
        return d.info
    check_lanes(d)
    check_nodes(d)
    check_labels(d)
    check_flows(d)
    collect_names(d, decisions)
    check_user_tasks(d, user_task_files)
    check_clocks(d)
    check_gateways(d)
    check_services(d)
    check_messages(d)
    check_timers(d)
    return d.info


def user_task_files() -> dict[str, list[str]]:
    """User task id → the diagrams that have it (ids name the form files: unique across bpmn/)."""
    ids: dict[str, list[str]] = {}
    for path in sorted(BPMN_DIR.glob("*.bpmn")):
        try:
            root = safe_parse(path)
        except etree.XMLSyntaxError as err:
            problem(f"{path.name}: does not parse: {err}")
            continue
        for ut in root.iterfind(".//bpmn:userTask", NS):
            ids.setdefault(ut.get("id"), []).append(path.name)
    return ids


def check_deploy() -> None:
    """What `camins deploy` does with each diagram: the bundle compiler with the domain hooks."""
    hooks = DomainHooks()
    deployed = set()
    for files in bundles_from_directory(BPMN_DIR):
        name = files[0].name
        try:
            compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)
        except DeployError as err:
            problem(f"{name}: rejected by the engine's deploy checks: {err}")
            continue
        deployed.add(name)
        if compiled.process_key != Path(name).stem:
            problem(f"{name}: deploys as {compiled.process_key}")
        print(f"  deploy: {name} compiles as '{compiled.process_key}' ({len(files) - 1} form/DMN file(s)), "
              f"message starts {compiled.message_starts}")
    for path in sorted(BPMN_DIR.glob("*.bpmn")):
        if path.name not in deployed:
            problem(f"{path.name}: not deployed")


def print_info(name: str, info: dict) -> None:
    print(f"  -- {name}")
    for nid, u in info["user_tasks"].items():
        extra = {k: v for k, v in u["props"].items() if k != "form"}
        print(f"     {nid} [{u['lane']}] {u['form']} keys={u['keys']} {extra or ''}")
    for nid, msg, payload in info["throws"]:
        print(f"     {nid} throws {msg} payload {payload}")
    for nid, msg, var in info["catches"]:
        print(f"     {nid} catches {msg} into {var}")
    for nid, recipient, subject in info["services"]:
        print(f"     {nid} records a communication to {recipient}: {subject}")
    for nid, kind, expr in info["timers"]:
        print(f"     timer {nid}: {kind} {expr}")
    for cid, (started, stopped) in info["clocks"].items():
        print(f"     clock {cid}: start {started} stop {stopped}")


def check_all() -> dict[str, dict]:
    """The static checks of every diagram, form and DMN table in bpmn/."""
    print("== static checks")
    decisions = dmn_outputs()
    owners = user_task_files()
    infos = {path.name: check_diagram(path, decisions, owners) for path in sorted(BPMN_DIR.glob("*.bpmn"))}
    used = {u["form"] for info in infos.values() for u in info["user_tasks"].values()}
    for form in sorted(FORMS_DIR.glob("*.form")):
        if f"forms/{form.name}" not in used:
            check_form(form)
            problem(f"form {form.name} is used by no user task")
    check_deploy()
    for name, info in infos.items():
        print_info(name, info)
    return infos


# --------------------------------------------------------------------------- dynamic: engine and clock
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CLOCK = engine_clock.ManualClock(T0)     # one clock for SpiffWorkflow's timers and the sandbox's now()/today()


class Communication(NamedTuple):
    recipient: str
    subject: str


COMMUNICATIONS: list[Communication] = []


def record_communication(operation, params, context):
    """The service task handler: records what the domain's record_communication would store."""
    assert operation == "record_communication", operation
    assert set(params) == {"recipient", "subject"}, params
    assert params["recipient"] and params["subject"], params
    COMMUNICATIONS.append(Communication(params["recipient"], params["subject"]))
    return {"recipient": params["recipient"], "sent_at": CLOCK.now().isoformat()}


ENGINE = SandboxedScriptEngine(clock=CLOCK.now, service_handler=record_communication)
STATE = StateSerializer()
SERIALIZER = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))   # SpiffWorkflow's, with spec
FORMS: dict[str, dict] = {}


@contextmanager
def manual_clock() -> Iterator[engine_clock.ManualClock]:
    """The process clock is CLOCK while the runs last, then restored."""
    previous = engine_clock.get_clock()
    engine_clock.set_clock(CLOCK)
    try:
        yield CLOCK
    finally:
        engine_clock.set_clock(previous)


def reset(at: datetime = T0) -> None:
    """Before a run: the clock back to `at`, no communications."""
    CLOCK.set(at)
    COMMUNICATIONS.clear()


def load_spec(bpmn: str, process_id: str | None = None) -> tuple:
    """(spec, subprocess specs) of a diagram, XSD-validated, with every DMN table of bpmn/."""
    parser = SpiffBpmnParser(validator=VALIDATOR)
    parser.add_bpmn_file(str(BPMN_DIR / bpmn))
    for dmn in sorted(BPMN_DIR.glob("*.dmn")):
        parser.add_dmn_file(str(dmn))
    process_id = process_id or Path(bpmn).stem
    return parser.get_spec(process_id), parser.get_subprocess_specs(process_id)


def form_for(task) -> dict:
    name = task.task_spec.extensions["properties"]["form"]
    if name not in FORMS:
        FORMS[name] = parse_form((BPMN_DIR / name).read_bytes(), name)
    return FORMS[name]


def fill(form: dict, values: dict) -> dict:
    """A complete submission: the given values plus a plausible value for every other field."""
    data = {}
    for c in form["components"]:
        key, t = c.get("key"), c.get("type")
        if t in DISPLAY_TYPES:
            continue
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


def definitions_of(task) -> list:
    """The event definitions a waiting task waits on: an event-based gateway is ONE waiting task
    whose MultipleEventDefinition holds those of the catch events after it."""
    definition = getattr(task.task_spec, "event_definition", None)
    if isinstance(definition, MultipleEventDefinition):
        return list(definition.event_definitions)
    return [] if definition is None else [definition]


class Run:
    """One workflow instance driven like the engine does: start data, steps, form-validated submissions,
    messages, timers on CLOCK, and a round-trip through the engine's spec-free serializer after every
    step (roundtrip() adds one through SpiffWorkflow's own serializer). `thrown` keeps the events it
    threw (get_events() empties SpiffWorkflow's list)."""

    def __init__(self, spec: tuple, start_data: dict | None = None, label: str = "", *, fill: bool = False):
        self.spec, self.subs = spec
        self.label, self.fill, self.start_data = label, fill, dict(start_data or {})
        self.thrown: list[BpmnEvent] = []
        self.path: list[str] = []
        self.wf = BpmnWorkflow(self.spec, self.subs, script_engine=ENGINE)
        for task in self.wf.get_tasks(spec_name="Start"):
            task.data.update(self.start_data)       # as the engine's start_data hook does
        self.step()

    # ---- stepping and state
    def step(self) -> None:
        self.wf.do_engine_steps()
        self.thrown += self.wf.get_events()
        self.wf = STATE.loads(STATE.dumps(self.wf), self.spec, self.subs, ENGINE)

    def roundtrip(self) -> None:
        self.wf = SERIALIZER.deserialize_json(SERIALIZER.serialize_json(self.wf))
        self.wf.script_engine = ENGINE
        self.wf = STATE.loads(STATE.dumps(self.wf), self.spec, self.subs, ENGINE)

    @property
    def events(self) -> list[tuple[str, dict]]:
        return [(e.event_definition.name, e.payload) for e in self.thrown]

    def ended(self) -> list[tuple[str, dict]]:
        assert self.wf.is_completed(), f"{self.label}: not completed; ready {self.ready()}, " \
                                       f"waiting {self.waiting_for()}"
        return self.events

    def clocks(self) -> tuple[list[str], list[str]]:
        """Legal clocks started / stopped by the elements this instance went through."""
        started, stopped = [], []
        for task in self.wf.get_tasks(state=TaskState.COMPLETED):
            props = (getattr(task.task_spec, "extensions", None) or {}).get("properties") or {}
            started += clock_ids(props.get("clock_start")) + clock_ids(props.get("clock_start_after"))
            stopped += clock_ids(props.get("clock_stop"))
        return started, stopped

    # ---- user tasks
    def ready_tasks(self) -> list:
        return self.wf.get_tasks(state=TaskState.READY, manual=True)

    def ready(self) -> list[str]:
        return sorted(t.task_spec.name for t in self.ready_tasks())

    def ready_task(self, name: str):
        found = [t for t in self.ready_tasks() if t.task_spec.name == name]
        assert found, f"{self.label}: expected {name} READY, got {self.ready()}"
        return found[0]

    def data(self) -> dict:
        """Data of the open user task (or of the last task run)."""
        ready = self.ready_tasks()
        if ready:
            return ready[0].data
        return self.wf.last_task.data if self.wf.last_task is not None else {}

    def complete(self, name: str, lane: str, data: dict | None = None, **values):
        """Submit a user task as the service does: validated against its form (unticked boxes false)."""
        task = self.ready_task(name)
        assert task.task_spec.lane == lane, (name, task.task_spec.lane, lane)
        form = form_for(task)
        submitted = {**(data or {}), **values}
        cleaned = validate_submission(form, fill(form, submitted) if self.fill else submitted)
        for f in form_fields(form):
            if f["type"] == "checkbox":
                cleaned.setdefault(f["key"], False)
        task.data.update(cleaned)
        task.run()
        self.path.append(name)
        self.step()
        return task

    # ---- messages
    def waiting_message_definitions(self) -> Iterator[MessageEventDefinition]:
        for task in self.wf.get_tasks(state=TaskState.WAITING):
            yield from (d for d in definitions_of(task) if isinstance(d, MessageEventDefinition))

    def waiting_messages(self) -> list[str]:
        return sorted(d.name for d in self.waiting_message_definitions())

    def waiting_for(self) -> list[str]:
        """What the instance waits for: message names and timer expressions."""
        out = []
        for task in self.wf.get_tasks(state=TaskState.WAITING):
            for d in definitions_of(task):
                if isinstance(d, MessageEventDefinition):
                    out.append(d.name)
                elif isinstance(d, TimerEventDefinition):
                    out.append(f"timer {d.expression}")
        return sorted(out)

    def send(self, event: BpmnEvent | str, payload: dict | None = None) -> None:
        """Deliver an event thrown by another instance, or an external act by message name."""
        if not isinstance(event, BpmnEvent):
            found = [d for d in self.waiting_message_definitions() if d.name == event]
            assert found, f"{self.label}: nothing waits for {event} (waiting: {self.waiting_messages()})"
            event = BpmnEvent(found[0], payload=payload or {})
        self.wf.send_event(event)
        self.path.append(f"<{event.event_definition.name}>")
        self.step()

    # ---- timers
    def waiting_task(self, name: str):
        tasks = [t for t in self.wf.get_tasks(state=TaskState.WAITING) if t.task_spec.name == name]
        assert len(tasks) == 1, (name, [t.task_spec.name for t in self.wf.get_tasks(state=TaskState.WAITING)])
        return tasks[0]

    def waiting_timers(self) -> list[tuple[str, datetime]]:
        """(element, due) of every timer the instance waits on (also inside an event-based gateway)."""
        return [(t.task_spec.bpmn_id, datetime.fromisoformat(t.internal_data["event_value"]))
                for t in self.wf.get_tasks(state=TaskState.WAITING) if "event_value" in t.internal_data]

    def timers(self) -> list[tuple[str, str, str]]:
        """(timer name, kind, due) as SpiffWorkflow reports its waiting timer events."""
        return [(e.name, e.event_type, e.value) for e in self.wf.waiting_events()
                if e.event_type in ("TimeDateEventDefinition", "DurationTimerEventDefinition",
                                    "CycleTimerEventDefinition")]

    def fire_timers(self) -> None:
        self.wf.refresh_timers()
        self.step()

    def advance(self, delta: timedelta) -> None:
        CLOCK.advance(delta)
        self.fire_timers()

    def fire_timer(self, name: str) -> datetime:
        """Move the clock just past the due time of the timer `name` (a timer event, or the event-based
        gateway that holds it) and let it fire; returns the due time."""
        due = datetime.fromisoformat(self.waiting_task(name).internal_data["event_value"])
        if CLOCK.now() < due + timedelta(minutes=1):
            CLOCK.set(due + timedelta(minutes=1))
        self.path.append(f"<{name}>")
        self.fire_timers()
        return due


# --------------------------------------------------------------------------- report of the runs
RESULTS: list[bool] = []


def attempt(label: str, fn: Callable[[], Any], expected: list[str], check: Callable[[Any], None] | None = None):
    """Run one path: `fn()` returns a Run (compared by the messages it ended with) or the list of
    (message, payload) it ended with. `check(result)` may assert more. Returns the result, or None
    when the path failed (reported as a PROBLEM)."""
    try:
        result = fn()
        got = result.ended() if isinstance(result, Run) else result
        if check is not None:
            check(result)
    except Exception as err:    # report and continue with the other paths
        problem(f"{label}: {type(err).__name__}: {err}")
        RESULTS.append(False)
        return None
    names = [n for n, _p in got]
    ok = names == expected
    RESULTS.append(ok)
    print(f"  {'ok ' if ok else 'BAD'} {label}: ended with {got}")
    if isinstance(result, Run) and result.path:
        print(f"        path: {' > '.join(result.path)}")
    if not ok:
        problem(f"{label}: expected {expected}, got {names}")
    return result


def summary() -> int:
    print(f"== {len(RESULTS)} runs, {sum(RESULTS)} ok; {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


def main() -> int:
    infos = check_all()
    forms = len(list(FORMS_DIR.glob("*.form")))
    print(f"  {'ok ' if not PROBLEMS else 'BAD'} static checks of {len(infos)} diagrams and {forms} forms")
    print(f"== {len(PROBLEMS)} problem(s)")
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main())
