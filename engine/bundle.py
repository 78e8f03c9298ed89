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
from SpiffWorkflow.exceptions import SpiffWorkflowException
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser

from .durations import is_duration
from .errors import DeployError, Problem
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
    while node is not None:
        if node.get("id"):
            return node.get("id")
        node = node.getparent()
    return None


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
            self.problem(file, f"{mode} rejected: {err.detail}", node, line=line)

    def check_bpmn_code(self, file: str, tree) -> None:
        for node in tree.iterfind(".//bpmn:scriptTask/bpmn:script", NS):
            self.code(file, node, node.text, "script")
        for tag in ("preScript", "postScript"):
            for node in tree.iterfind(f".//spiffworkflow:{tag}", NS):
                self.code(file, node, node.text, "script")
        for tag in ("conditionExpression", "timeDuration", "timeDate", "timeCycle", "loopCardinality",
                    "completionCondition"):
            for node in tree.iterfind(f".//bpmn:{tag}", NS):
                self.code(file, node, node.text, "expression")
        for node in tree.iterfind(".//spiffworkflow:parameter", NS):
            if node.get("value") is not None:
                self.code(file, node, node.get("value"), "expression")
        for node in tree.iterfind(".//spiffworkflow:messagePayload", NS):
            self.code(file, node, node.text, "expression")
        for node in tree.iterfind(".//spiffworkflow:messageVariable", NS):
            if not _IDENTIFIER.match((node.text or "").strip()):
                self.problem(file, "message variable must be a plain identifier", node)

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
        self.problem(file, f"DMN cell rejected: {first.detail}", node)

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
    if checker.problems:
        raise DeployError(checker.problems)

    parser = SpiffBpmnParser(validator=VALIDATOR)
    executable: list[tuple[str, str, str]] = []
    for name in bpmn_names:
        tree = trees[name]
        root = tree.getroot()
        if etree.QName(root).namespace != BPMN_NS or etree.QName(root).localname != "definitions":
            checker.problem(name, "not a BPMN 2.0 document (root must be bpmn:definitions)", root)
            continue
        checker.check_lanes(name, tree)
        checker.check_user_tasks(name, tree, by_name)
        checker.check_bpmn_code(name, tree)
        checker.check_properties(name, tree)
        for process in tree.iterfind("bpmn:process", NS):
            if process.get("isExecutable", "false").lower() == "true":
                executable.append((process.get("id"), process.get("name") or process.get("id"), name))
        try:
            parser.add_bpmn_xml(tree, name)
        except ValidationException as err:
            checker.problem(name, str(err).split("\n")[0], element_id=err.id or None, line=_int(err.line_number))
    for name in (n for n in trees if n.endswith(".dmn")):
        checker.check_dmn_code(name, trees[name])
        try:
            parser.add_dmn_xml(trees[name].getroot(), name)
        except (ValidationException, SpiffWorkflowException, KeyError, ValueError, AttributeError) as err:
            checker.problem(name, f"invalid DMN: {_first_line(err)}", element_id=getattr(err, "id", None) or None)

    if len(executable) != 1 and not checker.problems:
        found = ", ".join(p[0] for p in executable) or "none"
        checker.problem(bpmn_names[0], f"a bundle needs exactly one executable process (found: {found})")
    if checker.problems:
        raise DeployError(checker.problems)

    process_key, process_name, bpmn_file = executable[0]
    try:
        spec = parser.get_spec(process_key)
        subprocess_specs = parser.get_subprocess_specs(process_key)
    except ValidationException as err:
        raise DeployError([Problem(err.file_name or bpmn_file, _first_line(err), err.id or None,
                                   _int(err.line_number))]) from None
    except SpiffWorkflowException as err:
        raise DeployError([Problem(bpmn_file, _first_line(err))]) from None
    except Exception as err:  # Spiff raises plain errors on some malformed structures
        raise DeployError([Problem(bpmn_file, f"cannot build the process: {_first_line(err)}")]) from None

    return CompiledBundle(
        process_key=process_key,
        name=process_name,
        spec=spec,
        subprocess_specs=subprocess_specs,
        files=sorted(by_name.values(), key=lambda f: f.name),
        content_hash=content_hash(by_name.values()),
        message_starts=_message_starts(trees[bpmn_file], process_key),
    )


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
