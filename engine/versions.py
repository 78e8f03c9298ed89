"""The versions of a process: list them, compare two, retire one.

A version is an immutable deployed bundle (`Definition`). Retiring one stops it from starting new
instances (`Engine.latest_definition` and message-start routing only look at active versions); its
running instances go on until they end or are migrated (engine/migration.py).
"""
from __future__ import annotations

import hashlib

from sqlalchemy import func, select

from . import clock
from .bundle import NS
from .errors import Conflict, NotFound
from .models import Definition, Instance
from .xmlsafe import parse_xml

ACTIVE = "active"
RETIRED = "retired"
# An instance in one of these states is over: it neither runs nor moves to another version.
ENDED = ("completed", "cancelled")

# Keys of SpiffWorkflow's serialized task spec, in the words an analyst uses for what changed.
_ASPECTS = {
    "typename": "type",
    "bpmn_name": "name",
    "lane": "lane",
    "documentation": "documentation",
    "inputs": "incoming flows",
    "outputs": "outgoing flows",
    "cond_task_specs": "conditions of its outgoing flows",
    "default_task_spec": "default flow",
    "event_definition": "event (timer expression, message or signal)",
    "script": "script",
    "prescript": "pre-script",
    "postscript": "post-script",
    "cancel_activity": "interrupting or not",
    "data_input_associations": "data inputs",
    "data_output_associations": "data outputs",
    "io_specification": "data inputs and outputs",
    "manual": "manual",
}
# Bookkeeping keys that never differ for elements of the same id, or that the keys above cover.
_IGNORED = {"name", "bpmn_id", "description", "lookahead"}


def describe_changes(old: dict, new: dict) -> list[str]:
    """What differs between two serialized task specs, as words ("name", "property 'form'")."""
    if old.get("typename") != new.get("typename"):
        return ["type"]
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in _IGNORED or old.get(key) == new.get(key):
            continue
        if key == "extensions":
            changes += _extension_changes(old.get(key) or {}, new.get(key) or {})
        else:
            changes.append(_ASPECTS.get(key, key))
    return changes


def _extension_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "properties":
            before, after = old.get(key) or {}, new.get(key) or {}
            changes += [f"property '{name}'" for name in sorted(set(before) | set(after))
                        if before.get(name) != after.get(name)]
        else:
            changes.append(f"extension '{key}'")
    return changes


# ----------------------------------------------------------------------- reading versions
def versions_of(session, process_key: str) -> list[Definition]:
    """Every version of a process, newest first; NotFound when none was ever deployed."""
    rows = session.scalars(select(Definition).where(Definition.process_key == process_key)
                           .order_by(Definition.version.desc())).all()
    if not rows:
        raise NotFound(f"no deployed process '{process_key}'")
    return list(rows)


def version_of(session, process_key: str, version: int) -> Definition:
    if not 0 < version < 2**31:  # beyond the column: it cannot exist, and the database must not be asked
        versions_of(session, process_key)
        raise NotFound(f"process '{process_key}' has no version {version}")
    definition = session.scalar(select(Definition).where(Definition.process_key == process_key,
                                                         Definition.version == version))
    if definition is None:
        versions_of(session, process_key)  # an unknown process is named as such
        raise NotFound(f"process '{process_key}' has no version {version}")
    return definition


def running_counts(session, definition_ids: list[int]) -> dict[int, int]:
    """Definition id → how many of its instances have not ended."""
    if not definition_ids:
        return {}
    return dict(session.execute(select(Instance.definition_id, func.count())
                                .where(Instance.definition_id.in_(definition_ids), Instance.status.notin_(ENDED))
                                .group_by(Instance.definition_id)).all())


def startable_definition(engine, session, process_key: str) -> Definition:
    """The version new instances of a process start on: its newest active one.

    NotFound when the process was never deployed; Conflict when every version of it is retired.
    """
    definition = engine.latest_definition(session, process_key)
    if definition is not None:
        return definition
    versions_of(session, process_key)  # raises NotFound
    raise Conflict(f"every version of process '{process_key}' is retired: deploy a new version to start it")


# ----------------------------------------------------------------------------- retiring
def retire(session, process_key: str, version: int, actor: str | None, reason: str) -> Definition:
    """Retire a version: it starts no new instance; its running instances go on. Twice is a Conflict."""
    version_of(session, process_key, version)  # NotFound, naming what is missing
    definition = session.scalar(select(Definition).where(Definition.process_key == process_key,
                                                         Definition.version == version).with_for_update())
    if definition.status == RETIRED:
        raise Conflict(f"version {version} of '{process_key}' was retired already, "
                       f"on {definition.retired_at.isoformat()} by {definition.retired_by}")
    definition.status = RETIRED
    definition.retired_at = clock.now()
    definition.retired_by = actor
    definition.retire_reason = reason
    session.flush()
    return definition


# ---------------------------------------------------------------------------- comparing
def diff_versions(engine, old: Definition, new: Definition) -> dict:
    """Elements, sequence flows and files added, removed and changed from one version to another.

    Elements are compared by id over every process of the bundle, from the parsed specs (type, name,
    lane, properties such as the form, scripts, conditions, timer expressions, connections); sequence
    flows from the diagram's XML (source, target, name, condition); files by content.
    """
    registry = engine.serializer.registry
    before = _elements(registry, engine.cached_spec(old))
    after = _elements(registry, engine.cached_spec(new))
    elements = _compare(before, after, lambda a, b: describe_changes(a["spec"], b["spec"]), _element_view)
    flows = _compare(_flows(old), _flows(new), _flow_changes, lambda flow_id, flow: {"id": flow_id, **flow})
    files = _compare(_file_hashes(old), _file_hashes(new), lambda a, b: ["content"] if a != b else [],
                     lambda name, _digest: {"name": name})
    return {"process_key": old.process_key, "from_version": old.version, "to_version": new.version,
            "elements": elements, "sequence_flows": flows, "files": files}


def _compare(before: dict, after: dict, changes_of, view) -> dict:
    changed = []
    for key in sorted(before.keys() & after.keys()):
        changes = changes_of(before[key], after[key])
        if changes:
            changed.append({**view(key, after[key]), "changes": changes})
    return {"added": [view(key, after[key]) for key in sorted(after.keys() - before.keys())],
            "removed": [view(key, before[key]) for key in sorted(before.keys() - after.keys())],
            "changed": changed}


def _elements(registry, cached) -> dict[str, dict]:
    """Element id → its kind, name, lane, process and serialized spec, over every process of the bundle."""
    elements = {}
    for spec in [cached.spec, *cached.subprocess_specs.values()]:
        for task_spec in spec.task_specs.values():
            bpmn_id = getattr(task_spec, "bpmn_id", None)
            if bpmn_id:
                elements[bpmn_id] = {"type": task_spec.__class__.__name__, "name": task_spec.bpmn_name,
                                     "lane": task_spec.lane, "process": spec.name,
                                     "spec": registry.convert(task_spec)}
    return elements


def _element_view(element_id: str, element: dict) -> dict:
    return {"id": element_id, "type": element["type"], "name": element["name"], "lane": element["lane"],
            "process": element["process"]}


def _flows(definition: Definition) -> dict[str, dict]:
    flows = {}
    for file in definition.files:
        if file.kind != "bpmn":
            continue
        for flow in parse_xml(file.content).iterfind(".//bpmn:sequenceFlow", NS):
            condition = flow.find("bpmn:conditionExpression", NS)
            flows[flow.get("id")] = {"source": flow.get("sourceRef"), "target": flow.get("targetRef"),
                                     "name": flow.get("name"),
                                     "condition": (condition.text or "").strip() if condition is not None else None}
    return flows


def _flow_changes(old: dict, new: dict) -> list[str]:
    return [key for key in ("source", "target", "name", "condition") if old[key] != new[key]]


def _file_hashes(definition: Definition) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.content).hexdigest() for f in definition.files}
