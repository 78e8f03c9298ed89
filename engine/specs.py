"""Parsed process specs, cached per definition version in process memory."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from .bundle import NS, BundleFile, compile_bundle
from .models import Definition
from .xmlsafe import parse_xml


@dataclass(frozen=True)
class ElementInfo:
    element_id: str
    name: str
    lane: str | None
    properties: dict


@dataclass
class CachedSpec:
    spec: object
    subprocess_specs: dict
    elements: dict[str, ElementInfo]
    forms: dict[str, bytes]
    # (source element id, target element id) → [(sequence flow id, condition or None)], for flow
    # coverage; several flows may join the same two elements under different conditions.
    flows: dict[tuple[str, str], list[tuple[str, str | None]]]


class SpecCache:
    """Definition id → parsed spec. Definitions are immutable, so entries never go stale."""

    def __init__(self, lane_resolver):
        self._lane_resolver = lane_resolver
        self._cache: dict[int, CachedSpec] = {}
        self._lock = threading.Lock()

    def get(self, definition: Definition) -> CachedSpec:
        cached = self._cache.get(definition.id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._cache.get(definition.id)
            if cached is None:
                cached = self._cache[definition.id] = self._build(definition)
        return cached

    def cached(self, definition_id: int) -> CachedSpec | None:
        """The spec if it is cached already, without touching the database."""
        return self._cache.get(definition_id)

    def put(self, definition_id: int, compiled) -> None:
        with self._lock:
            self._cache[definition_id] = _cached_from(compiled)

    def _build(self, definition: Definition) -> CachedSpec:
        files = [BundleFile(f.name, f.content) for f in definition.files]
        # Stored bundles passed these checks when deployed; the lane resolver is
        # still needed because the compile step is shared with deploy.
        return _cached_from(compile_bundle(files, self._lane_resolver))


def _cached_from(compiled) -> CachedSpec:
    elements: dict[str, ElementInfo] = {}
    for spec in [compiled.spec, *compiled.subprocess_specs.values()]:
        for task_spec in spec.task_specs.values():
            bpmn_id = getattr(task_spec, "bpmn_id", None)
            if not bpmn_id:
                continue
            extensions = getattr(task_spec, "extensions", None) or {}
            elements[bpmn_id] = ElementInfo(
                element_id=bpmn_id,
                name=getattr(task_spec, "bpmn_name", None) or bpmn_id,
                lane=getattr(task_spec, "lane", None),
                properties=dict(extensions.get("properties") or {}),
            )
    forms = {f.name: f.content for f in compiled.files if f.kind == "form"}
    flows = {}
    for f in compiled.files:
        if f.kind == "bpmn":
            for flow in parse_xml(f.content).iterfind(".//bpmn:sequenceFlow", NS):
                condition = flow.find("bpmn:conditionExpression", NS)
                flows.setdefault((flow.get("sourceRef"), flow.get("targetRef")), []).append(
                    (flow.get("id"), condition.text.strip() if condition is not None and condition.text else None))
    return CachedSpec(compiled.spec, compiled.subprocess_specs, elements, forms, flows)
