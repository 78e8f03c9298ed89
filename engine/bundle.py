"""Compile a deployment bundle (BPMN + DMN + forms) and check everything in it.

Nothing here touches the database: `compile_bundle` either returns a parsed,
checked bundle or raises `DeployError` listing every problem with its file,
element id and line.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.dmn.parser.BpmnDmnParser import SCHEMAS as DMN_SCHEMAS
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser

from .durations import is_duration
from .errors import DeployError, Problem
from .lint import Finding, lint
from .sandbox import ScriptRejected, check_expression, check_script
from .xmlsafe import UnsafeXml, parse_xml

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
NS = {"bpmn": BPMN_NS, "spiffworkflow": SPIFF_NS}
MAX_FILES = 100
MAX_BUNDLE_BYTES = 20 * 1024 * 1024
FORM_PROPERTY = "form"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,150}$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
DMN_NAMESPACES = frozenset(DMN_SCHEMAS)

# BPMN the engine refuses: SpiffWorkflow cannot run it, would run it wrongly (it parses a
# compensation or link event as a plain event), or nothing in this engine would ever drive it.
UNSUPPORTED_ELEMENTS = {
    "complexGateway": "use an exclusive, inclusive or parallel gateway",
    "adHocSubProcess": "draw the order of the tasks, or use parallel branches",
    "transaction": "use a subprocess with error or escalation events",
    "choreography": "the engine runs processes, not choreographies",
    "globalChoreographyTask": "the engine runs processes, not choreographies",
    "choreographyTask": "the engine runs processes, not choreographies",
    "subChoreography": "the engine runs processes, not choreographies",
    "callChoreography": "the engine runs processes, not choreographies",
}
UNSUPPORTED_EVENTS = {
    "compensateEventDefinition": ("compensation event", "undo work with explicit tasks on an error path"),
    "conditionalEventDefinition": ("conditional event", "nothing would re-evaluate its condition; use a gateway "
                                                        "or a message"),
    "linkEventDefinition": ("link event", "draw the sequence flow instead"),
    "cancelEventDefinition": ("cancel event", "transactions are not supported; use an error event"),
}
# Extensions of other engines. This engine would ignore them, so a diagram relying on them (an
# assignee, a Java delegate, a listener) would run differently from what its author drew.
FOREIGN_ENGINES = {
    "http://camunda.org/schema/1.0/bpmn": ("camunda", "Camunda"),
    "http://camunda.org/schema/zeebe/1.0": ("zeebe", "Zeebe (Camunda 8)"),
    "http://activiti.org/bpmn": ("activiti", "Activiti"),
    "http://flowable.org/bpmn": ("flowable", "Flowable"),
    "http://www.jboss.org/drools": ("drools", "jBPM"),
}
_LANE_HINT = "tasks go to the role of their lane"
_FORM_HINT = f"give the user task the spiffworkflow property '{FORM_PROPERTY}'"
_SERVICE_HINT = "a service task names its operation with spiffworkflow:serviceTaskOperator"
FOREIGN_HINTS = {
    "assignee": _LANE_HINT, "candidateUsers": _LANE_HINT, "candidateGroups": _LANE_HINT,
    "assignmentDefinition": _LANE_HINT, "formKey": _FORM_HINT, "formRef": _FORM_HINT, "formDefinition": _FORM_HINT,
    "formData": _FORM_HINT, "userTaskForm": _FORM_HINT, "class": _SERVICE_HINT, "expression": _SERVICE_HINT,
    "delegateExpression": _SERVICE_HINT, "type": _SERVICE_HINT, "topic": _SERVICE_HINT,
    "taskDefinition": _SERVICE_HINT, "connector": _SERVICE_HINT,
    "decisionRef": "a business rule task names its decision with spiffworkflow:calledDecisionId",
    "calledDecision": "a business rule task names its decision with spiffworkflow:calledDecisionId",
    "executionListener": "listeners would run code outside the sandbox; use a script task",
    "taskListener": "listeners would run code outside the sandbox; use a script task",
    "inputOutput": "map data with spiffworkflow:preScript and postScript",
    "ioMapping": "map data with spiffworkflow:preScript and postScript",
}
_JUEL = re.compile(r"^\s*[$#]\{.*\}\s*$", re.DOTALL)
# An ISO-8601 duration, date or cycle written bare: a timer expression is Python, so it must be quoted.
_ISO_TIME = re.compile(r"^(R\d*/)?(P(?:\d|T\d)[0-9YMWDTHS.,]*"
                       r"|\d{4}-\d{2}-\d{2}(T[0-9:.]+)?(Z|[+-]\d{2}:?\d{2})?)(/\S*)?$")
SUPPORTED_HIT_POLICIES = ("UNIQUE", "FIRST", "PRIORITY", "ANY", "COLLECT")

LaneResolver = Callable[[str], "str | None"]
FormChecker = Callable[[str, bytes], None]
# Element properties → problems found in them (e.g. an unknown clock id).
PropertyChecker = Callable[[dict], list]


@dataclass
class BundleFile:
    name: str
    content: bytes

    @property
    def kind(self) -> str:
        return self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""


@dataclass
class CompiledBundle:
    process_key: str
    name: str
    spec: object
    subprocess_specs: dict
    files: list[BundleFile]
    content_hash: str
    message_starts: list[str] = field(default_factory=list)
    # Modelling-rule findings (engine/lint.py): reported, never a reason to refuse the bundle here.
    lint: list[Finding] = field(default_factory=list)


def normalise_name(name: str) -> str:
    """Bundle file names: `x.bpmn`, `x.dmn`, `forms/x.form` (no directories otherwise)."""
    base = posixpath.basename(name.replace("\\", "/"))
    return f"forms/{base}" if base.lower().endswith(".form") else base


def content_hash(files: Iterable[BundleFile]) -> str:
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.name):
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(f.content).digest())
    return digest.hexdigest()


def _line(node) -> int | None:
    return getattr(node, "sourceline", None)


def _owner_id(node) -> str | None:
    """The id of the element an analyst sees: an event rather than its (invisible) event definition."""
    fallback = None
    while node is not None:
        if isinstance(node.tag, str) and node.get("id"):
            if not etree.QName(node).localname.endswith("EventDefinition"):
                return node.get("id")
            fallback = fallback or node.get("id")
        node = node.getparent()
    return fallback


class _Checker:
    def __init__(self, lane_resolver: LaneResolver, form_checker: FormChecker | None,
                 property_checker: PropertyChecker | None = None):
        self.lane_resolver = lane_resolver
        self.form_checker = form_checker
        self.property_checker = property_checker
        self.problems: list[Problem] = []

    def check_properties(self, file: str, tree) -> None:
        if self.property_checker is None:
            return
        for node in tree.iterfind(".//spiffworkflow:properties", NS):
            props = {p.get("name"): p.get("value") for p in node.iterfind("spiffworkflow:property", NS)}
            for message in self.property_checker(props):
                self.problem(file, message, node)

    def problem(self, file: str, message: str, node=None, element_id: str | None = None, line=None):
        self.problems.append(
            Problem(
                file=file,
                message=message,
                element_id=element_id or (_owner_id(node) if node is not None else None),
                line=line or (_line(node) if node is not None else None),
            )
        )

    def code(self, file: str, node, source: str | None, mode: str) -> None:
        if source is None or not source.strip():
            if mode == "expression":
                self.problem(file, "empty expression", node)
            return
        try:
            (check_script if mode == "script" else check_expression)(source.strip() if mode == "expression" else source)
        except ScriptRejected as err:
            line = _line(node)
            if line and err.lineno and mode == "script":
                line = line + err.lineno - 1
            self.problem(file, _foreign_language(source, mode) or f"{mode} rejected: {err.detail}", node, line=line)

    def check_bpmn_code(self, file: str, tree) -> None:
        for node in tree.iterfind(".//bpmn:scriptTask/bpmn:script", NS):
            if self.language(file, node.getparent(), node.getparent().get("scriptFormat"), "script format"):
                self.code(file, node, node.text, "script")
        for tag in ("preScript", "postScript"):
            for node in tree.iterfind(f".//spiffworkflow:{tag}", NS):
                self.code(file, node, node.text, "script")
        for tag in ("conditionExpression", "timeDuration", "timeDate", "timeCycle", "loopCardinality",
                    "completionCondition", "loopCondition"):
            for node in tree.iterfind(f".//bpmn:{tag}", NS):
                if not self.language(file, node, node.get("language"), "expression language"):
                    continue
                if tag.startswith("time") and _ISO_TIME.match((node.text or "").strip()):
                    text = (node.text or "").strip()
                    self.problem(file, f"timer '{text}' is not a Python expression: quote it, as in \"{text}\"", node)
                    continue
                self.code(file, node, node.text, "expression")
        for node in tree.iterfind(".//spiffworkflow:parameter", NS):
            if node.get("value") is not None:
                self.code(file, node, node.get("value"), "expression")
        for node in tree.iterfind(".//spiffworkflow:messagePayload", NS):
            self.code(file, node, node.text, "expression")
        for node in tree.iterfind(".//spiffworkflow:messageVariable", NS):
            if not _IDENTIFIER.match((node.text or "").strip()):
                self.problem(file, "message variable must be a plain identifier", node)

    def language(self, file: str, node, language: str | None, what: str) -> bool:
        """False (and a problem) when the code is declared to be in a language other than Python."""
        if language and "python" not in language.lower():
            self.problem(file, f"{what} '{language[:60]}' is not supported: scripts and expressions are Python", node)
            return False
        return True

    def check_elements(self, file: str, tree) -> None:
        """Refuse BPMN this engine cannot run, naming each element."""
        root = tree.getroot()
        for tag, hint in UNSUPPORTED_ELEMENTS.items():
            for node in root.iter(f"{{{BPMN_NS}}}{tag}"):
                self.problem(file, f"bpmn:{tag} is not supported by this engine: {hint}", node)
        for tag, (what, hint) in UNSUPPORTED_EVENTS.items():
            for node in root.iter(f"{{{BPMN_NS}}}{tag}"):
                self.problem(file, f"{what} (bpmn:{tag}) is not supported by this engine: {hint}", node)
        for node in root.iter(f"{{{BPMN_NS}}}*"):
            if node.get("isForCompensation", "false").strip().lower() == "true":
                self.problem(file, f"compensation handler (isForCompensation on bpmn:{etree.QName(node).localname}) "
                                   "is not supported by this engine", node)

    def check_foreign_extensions(self, file: str, tree) -> None:
        """Attributes and extension elements of other engines inside a process are refused."""
        for process in tree.iterfind("bpmn:process", NS):
            for node in process.iter():
                if not isinstance(node.tag, str):
                    continue
                namespace = etree.QName(node).namespace
                parent = node.getparent()
                if namespace in FOREIGN_ENGINES and etree.QName(parent).namespace not in FOREIGN_ENGINES:
                    self._foreign(file, node, namespace, etree.QName(node).localname)
                if node is process or namespace in FOREIGN_ENGINES:
                    continue
                for attribute in node.attrib:
                    if etree.QName(attribute).namespace in FOREIGN_ENGINES:
                        self._foreign(file, node, etree.QName(attribute).namespace, etree.QName(attribute).localname)

    def _foreign(self, file: str, node, namespace: str, name: str) -> None:
        prefix, engine = FOREIGN_ENGINES[namespace]
        hint = FOREIGN_HINTS.get(name, "remove it")
        self.problem(file, f"{prefix}:{name} is an extension of {engine}, which this engine does not run: {hint}",
                     node)

    def check_business_rule_tasks(self, file: str, tree, decisions: dict[str, str] | None) -> None:
        for task in tree.iterfind(".//bpmn:businessRuleTask", NS):
            ref = task.find("bpmn:extensionElements/spiffworkflow:calledDecisionId", NS)
            decision = (ref.text or "").strip() if ref is not None else ""
            if not decision:
                self.problem(file, "business rule task has no spiffworkflow:calledDecisionId, so it would not know "
                                   "which decision to take", task)
            elif decisions is not None and decision not in decisions:
                found = ", ".join(sorted(decisions)) or "none"
                self.problem(file, f"business rule task calls decision '{decision}', which no .dmn file in the bundle "
                                   f"defines (decisions in the bundle: {found})", task)

    def check_dmn_structure(self, file: str, tree, decisions: dict[str, str]) -> bool:
        """The shape SpiffWorkflow's DMN engine needs; it fails late or silently on anything else."""
        root = tree.getroot()
        qname = etree.QName(root)
        if qname.namespace == BPMN_NS:
            self.problem(file, "this is a BPMN document: send it as a .bpmn file", root)
            return False
        if qname.namespace not in DMN_NAMESPACES or qname.localname != "definitions":
            self.problem(file, "not a DMN document (root must be dmn:definitions of DMN 1.1, 1.2 or 1.3)", root)
            return False
        found = root.findall(f"{{{qname.namespace}}}decision")
        ok = True
        for decision in found:
            decision_id = decision.get("id")
            if decision_id in decisions:
                self.problem(file, f"decision '{decision_id}' is defined in {decisions[decision_id]} and in {file}",
                             decision)
                ok = False
            decisions.setdefault(decision_id, file)
        if not found:
            self.problem(file, "the DMN file has no decision", root)
            return False
        if len(found) > 1:
            ids = ", ".join(d.get("id") or "?" for d in found)
            self.problem(file, f"a .dmn file may hold only one decision (found: {ids}); put each in its own file", root)
            return False
        decision = found[0]
        table = decision.find(f"{{{qname.namespace}}}decisionTable")
        if table is None:
            self.problem(file, "decision has no decision table (literal expressions and other decision kinds "
                               "are not supported)", decision)
            return False
        policy = (table.get("hitPolicy") or "UNIQUE").strip().upper()
        if policy not in SUPPORTED_HIT_POLICIES:
            self.problem(file, f"hit policy '{policy}' is not supported (one of: {', '.join(SUPPORTED_HIT_POLICIES)})",
                         table)
            ok = False
        if table.get("aggregation"):
            self.problem(file, f"COLLECT with aggregation '{table.get('aggregation')}' is not supported: the "
                               "decision would give the list of matches, not its aggregate", table)
            ok = False
        inputs = table.findall(f"{{{qname.namespace}}}input")
        outputs = table.findall(f"{{{qname.namespace}}}output")
        for output in outputs:
            name = output.get("name")
            if not name:
                self.problem(file, "output has no name: the name is the variable the decision sets", output)
                ok = False
            elif not _IDENTIFIER.match(name):
                self.problem(file, f"output name '{name[:60]}' is not a plain identifier (the variable the decision "
                                   "sets)", output)
                ok = False
        for rule in table.findall(f"{{{qname.namespace}}}rule"):
            for tag, columns in (("input", inputs), ("output", outputs)):
                cells = rule.findall(f"{{{qname.namespace}}}{tag}Entry")
                if len(cells) != len(columns):
                    self.problem(file, f"rule has {len(cells)} {tag} cell(s) but the table has {len(columns)} "
                                       f"{tag}(s)", rule)
                    ok = False
        return ok

    def check_dmn_code(self, file: str, tree) -> None:
        for node in tree.iter("{*}inputExpression"):
            text = node.find("{*}text")
            self.code(file, node, text.text if text is not None else None, "expression")
        for tag in ("inputEntry", "outputEntry"):
            for node in tree.iter("{*}" + tag):
                text = node.find("{*}text")
                source = (text.text or "").strip() if text is not None else ""
                if tag == "inputEntry" and source in ("", "-"):
                    continue
                if tag == "outputEntry" and source == "":
                    continue
                self._dmn_cell(file, node, source, tag)

    def _dmn_cell(self, file, node, source, tag):
        # Spiff evaluates an input cell either as a value compared with ==
        # or, when it starts with an operator, appended to the input expression.
        candidate = source.replace("?", "dmninputexpr")
        try:
            check_expression(candidate)
            return
        except ScriptRejected as err:
            first = err
        if tag == "inputEntry":
            try:
                check_expression("dmninputexpr " + candidate)
                return
            except ScriptRejected:
                pass
        self.problem(file, _foreign_language(source, "DMN cell") or f"DMN cell rejected: {first.detail}", node)

    def check_lanes(self, file: str, tree) -> None:
        for lane in tree.iterfind(".//bpmn:lane", NS):
            name = (lane.get("name") or "").strip()
            if not name:
                self.problem(file, "lane has no name, so it cannot be mapped to a role", lane)
            elif self.lane_resolver(name) is None:
                self.problem(file, f"lane '{name}' does not match any role of the catalogue", lane)

    def check_user_tasks(self, file: str, tree, files: dict[str, BundleFile]) -> None:
        lane_of = {}
        for lane in tree.iterfind(".//bpmn:lane", NS):
            for ref in lane.iterfind("bpmn:flowNodeRef", NS):
                lane_of[(ref.text or "").strip()] = lane.get("name")
        for task in tree.iterfind(".//bpmn:userTask", NS):
            task_id = task.get("id")
            if task_id not in lane_of:
                self.problem(file, "user task is not in a lane, so nobody could receive it", task)
            props = {
                p.get("name"): p.get("value")
                for p in task.iterfind("bpmn:extensionElements/spiffworkflow:properties/spiffworkflow:property", NS)
            }
            form = props.get(FORM_PROPERTY)
            if not form:
                self.problem(file, f"user task has no '{FORM_PROPERTY}' property", task)
            elif normalise_name(form) not in files:
                self.problem(file, f"form '{form}' is not in the bundle", task)
            if props.get("due_in") and not is_duration(props["due_in"]):
                self.problem(file, f"due_in '{props['due_in']}' is not an ISO-8601 duration", task)


def _foreign_language(source: str, what: str) -> str | None:
    """A clearer refusal for the expression languages of other modelers (JUEL, FEEL)."""
    text = " ".join(source.split())
    short = text if len(text) <= 80 else text[:77] + "..."
    if _JUEL.match(text):
        return (f"{what} rejected: '{short}' is a JUEL/EL expression (Camunda, Activiti); expressions must be "
                "Python, e.g. `aprovat == True` rather than `${aprovat == true}`")
    if text.startswith("="):
        return f"{what} rejected: '{short}' is a FEEL expression (Zeebe); expressions must be Python, without the '='"
    if what == "DMN cell" and re.match(r"^[\[\]()].*\.\..*[\[\]()]$|^not\s*\(", text):
        return (f"{what} rejected: '{short}' is FEEL; cells are Python, e.g. `1 <= ? <= 3` for a range, where "
                "`?` is the input")
    return None


def _decision_ids(tree) -> list[str]:
    return [d.get("id") for d in tree.iter("{*}decision") if d.get("id")]


def referenced_decisions(tree) -> set[str]:
    refs = set()
    for node in tree.iterfind(".//bpmn:businessRuleTask", NS):
        ref = node.find("bpmn:extensionElements/spiffworkflow:calledDecisionId", NS)
        if ref is not None and ref.text:
            refs.add(ref.text.strip())
    return refs


def referenced_forms(tree) -> set[str]:
    return {
        normalise_name(p.get("value"))
        for p in tree.iterfind(".//spiffworkflow:property", NS)
        if p.get("name") == FORM_PROPERTY and p.get("value")
    }


def compile_bundle(
    files: list[BundleFile], lane_resolver: LaneResolver, form_checker: FormChecker | None = None,
    property_checker: PropertyChecker | None = None,
) -> CompiledBundle:
    checker = _Checker(lane_resolver, form_checker, property_checker)
    if not files:
        raise DeployError([Problem(file="(bundle)", message="the bundle is empty")])
    if len(files) > MAX_FILES:
        raise DeployError([Problem(file="(bundle)", message=f"more than {MAX_FILES} files")])
    if sum(len(f.content) for f in files) > MAX_BUNDLE_BYTES:
        raise DeployError([Problem(file="(bundle)", message="the bundle is larger than 20 MB")])

    by_name: dict[str, BundleFile] = {}
    for f in files:
        name = normalise_name(f.name)
        if not _NAME_RE.match(posixpath.basename(name)):
            checker.problem(f.name, "file name has characters that are not allowed")
            continue
        if name in by_name:
            checker.problem(name, "file appears twice in the bundle")
        by_name[name] = BundleFile(name, f.content)

    trees: dict[str, etree._ElementTree] = {}
    for name, f in by_name.items():
        if f.kind not in ("bpmn", "dmn", "form"):
            checker.problem(name, "unsupported file type (expected .bpmn, .dmn or .form)")
            continue
        if f.kind == "form":
            if form_checker is not None:
                try:
                    form_checker(name, f.content)
                except ValueError as err:
                    checker.problem(name, f"invalid form: {err}")
            continue
        try:
            trees[name] = parse_xml(f.content)
        except UnsafeXml as err:
            checker.problem(name, str(err), line=err.line)

    bpmn_names = [n for n in trees if n.endswith(".bpmn")]
    if not bpmn_names and not checker.problems:
        checker.problem("(bundle)", "the bundle has no .bpmn file")
    findings = _lint_trees({n: trees[n] for n in bpmn_names})
    if checker.problems:
        raise DeployError(checker.problems, findings)

    parser = SpiffBpmnParser(validator=VALIDATOR)
    decisions: dict[str, str] = {}
    dmn_names = [n for n in trees if n.endswith(".dmn") and checker.check_dmn_structure(n, trees[n], decisions)]
    # A decision in a DMN file that could not be read is not "missing": that file's problem says enough.
    all_dmn_read = len(dmn_names) == sum(1 for n in trees if n.endswith(".dmn"))
    executable: list[tuple[str, str, str]] = []
    non_executable: list = []
    for name in bpmn_names:
        tree = trees[name]
        root = tree.getroot()
        if etree.QName(root).namespace in DMN_NAMESPACES:
            checker.problem(name, "this is a DMN document: send it as a .dmn file", root)
            continue
        if etree.QName(root).namespace != BPMN_NS or etree.QName(root).localname != "definitions":
            checker.problem(name, "not a BPMN 2.0 document (root must be bpmn:definitions)", root)
            continue
        checker.check_elements(name, tree)
        checker.check_foreign_extensions(name, tree)
        checker.check_business_rule_tasks(name, tree, decisions if all_dmn_read else None)
        checker.check_lanes(name, tree)
        checker.check_user_tasks(name, tree, by_name)
        checker.check_bpmn_code(name, tree)
        checker.check_properties(name, tree)
        for process in tree.iterfind("bpmn:process", NS):
            if process.get("isExecutable", "false").lower() == "true":
                executable.append((process.get("id"), process.get("name") or process.get("id"), name))
            else:
                non_executable.append(process)
        try:
            parser.add_bpmn_xml(tree, name)
        except ValidationException as err:
            checker.problem(name, _readable(str(err).split("\n")[0]), element_id=err.id or None,
                            line=_int(err.line_number))
        except Exception as err:  # Spiff raises plain errors on some malformed documents
            checker.problem(name, f"cannot read the BPMN: {_first_line(err)}")
    for name in dmn_names:
        checker.check_dmn_code(name, trees[name])
        try:
            parser.add_dmn_xml(trees[name].getroot(), name)
        except Exception as err:  # ValidationException, or a plain error on a malformed table
            checker.problem(name, f"invalid DMN: {_readable(_first_line(err))}",
                            element_id=getattr(err, "id", None) or None)

    processes = {p.get("id") for n in bpmn_names for p in trees[n].iterfind("bpmn:process", NS)}
    for name in bpmn_names:
        for call in trees[name].iterfind(".//bpmn:callActivity", NS):
            if call.get("calledElement") not in processes:
                checker.problem(name, f"call activity calls process '{call.get('calledElement') or ''}', which is not "
                                      "in the bundle", call)
    if len(executable) != 1 and not checker.problems:
        found = ", ".join(p[0] for p in executable) or "none"
        message = f"a bundle needs exactly one executable process (found: {found})"
        if not executable and non_executable:
            message += "; mark the process to run with isExecutable=\"true\""
        checker.problem(bpmn_names[0], message, non_executable[0] if len(non_executable) == 1 else None)
    if checker.problems:
        raise DeployError(checker.problems, findings)

    process_key, process_name, bpmn_file = executable[0]
    try:
        spec = parser.get_spec(process_key)
        subprocess_specs = parser.get_subprocess_specs(process_key)
    except ValidationException as err:
        raise DeployError([Problem(err.file_name or bpmn_file, _first_line(err), err.id or None,
                                   _int(err.line_number))], findings) from None
    except SpiffWorkflowException as err:
        raise DeployError([Problem(bpmn_file, _first_line(err))], findings) from None
    except Exception as err:  # Spiff raises plain errors on some malformed structures
        raise DeployError([Problem(bpmn_file, f"cannot build the process: {_first_line(err)}")], findings) from None

    return CompiledBundle(
        process_key=process_key,
        name=process_name,
        spec=spec,
        subprocess_specs=subprocess_specs,
        files=sorted(by_name.values(), key=lambda f: f.name),
        content_hash=content_hash(by_name.values()),
        message_starts=_message_starts(trees[bpmn_file], process_key),
        lint=findings,
    )


def _lint_trees(trees: dict[str, etree._ElementTree]) -> list[Finding]:
    """The modelling rules on every BPMN document (a file that is not one has its own problem)."""
    findings: list[Finding] = []
    for name, tree in trees.items():
        root = tree.getroot()
        if etree.QName(root).namespace == BPMN_NS and etree.QName(root).localname == "definitions":
            findings.extend(lint(tree, name))
    return findings


def lint_bundle(files: list[BundleFile]) -> list[Finding]:
    """The modelling rules alone, on the readable BPMN files of a bundle (no other check)."""
    trees = {}
    for f in files:
        name = normalise_name(f.name)
        if name.lower().endswith(".bpmn"):
            try:
                trees[name] = parse_xml(f.content)
            except UnsafeXml:
                continue
    return _lint_trees(trees)


def _message_starts(tree, process_key: str) -> list[str]:
    names = {m.get("id"): m.get("name") or m.get("id") for m in tree.iterfind("bpmn:message", NS)}
    starts = []
    for process in tree.iterfind("bpmn:process", NS):
        if process.get("id") != process_key:
            continue
        for event in process.iterfind("bpmn:startEvent/bpmn:messageEventDefinition", NS):
            ref = event.get("messageRef")
            if ref in names:
                starts.append(names[ref])
    return sorted(set(starts))


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _readable(message: str) -> str:
    """Schema errors name elements as {namespace}tag; show them as bpmn:tag, dmn:tag."""
    message = message.replace("{" + BPMN_NS + "}", "bpmn:").replace("{" + SPIFF_NS + "}", "spiffworkflow:")
    for namespace in DMN_NAMESPACES:
        message = message.replace("{" + namespace + "}", "dmn:")
    return message


def _first_line(err: Exception) -> str:
    return (str(err) or err.__class__.__name__).split("\n")[0][:500]


def bundles_from_directory(path: Path) -> list[list[BundleFile]]:
    """One bundle per .bpmn file, with the DMN files and forms it references."""
    path = Path(path)
    bpmn_files = sorted(path.glob("*.bpmn"))
    decisions: dict[str, Path] = {}
    for dmn in sorted(path.glob("*.dmn")):
        try:
            for decision_id in _decision_ids(parse_xml(dmn.read_bytes())):
                decisions[decision_id] = dmn
        except UnsafeXml:
            decisions.setdefault(f"(unreadable {dmn.name})", dmn)
    bundles = []
    for bpmn in bpmn_files:
        content = bpmn.read_bytes()
        files = [BundleFile(bpmn.name, content)]
        try:
            tree = parse_xml(content)
        except UnsafeXml:
            bundles.append(files)
            continue
        for ref in sorted(referenced_decisions(tree)):
            if ref in decisions and all(f.name != decisions[ref].name for f in files):
                files.append(BundleFile(decisions[ref].name, decisions[ref].read_bytes()))
        for form in sorted(referenced_forms(tree)):
            form_path = path / form
            if form_path.is_file():
                files.append(BundleFile(form, form_path.read_bytes()))
        bundles.append(files)
    return bundles
