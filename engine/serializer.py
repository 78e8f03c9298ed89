"""Workflow state without its process spec.

The spec is half of SpiffWorkflow's saved JSON and most of its deserialization
time. Each definition version's spec lives once in the process cache
(`engine.specs`), so an instance stores only its tasks and data and is
restored against the cached spec.
"""
from __future__ import annotations

import json
import threading
from contextvars import ContextVar
from datetime import date
from decimal import Decimal
from uuid import UUID

from SpiffWorkflow.bpmn import BpmnWorkflow
from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, WorkflowConverter
from SpiffWorkflow.bpmn.serializer.workflow import VERSION as SPIFF_SERIALIZER_VERSION
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG

# The format of what we store: Spiff's own version plus our spec-free layout.
STATE_FORMAT = f"spiff-{SPIFF_SERIALIZER_VERSION}/specless-1"

_specs_for_restore: ContextVar[tuple] = ContextVar("_specs_for_restore")


class SpecFreeWorkflowConverter(BpmnWorkflowConverter):
    def to_dict(self, workflow):
        dct = WorkflowConverter.to_dict(self, workflow)
        dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
        return dct

    def from_dict(self, dct):
        spec, subprocess_specs = _specs_for_restore.get()
        workflow = self.target_class(spec, subprocess_specs, deserializing=True)
        workflow.tasks = self.mapping_from_dict(dct["tasks"], UUID, workflow=workflow)
        workflow.task_tree = workflow.tasks.get(UUID(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dct["subprocesses"], workflow)
        workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
        return workflow


def _build_registry():
    config = dict(SPIFF_CONFIG)
    config[BpmnWorkflow] = SpecFreeWorkflowConverter
    registry = BpmnWorkflowSerializer.configure(config)
    registry.register(date, lambda v: {"value": v.isoformat()}, lambda v: date.fromisoformat(v["value"]))
    registry.register(Decimal, lambda v: {"value": str(v)}, lambda v: Decimal(v["value"]))
    return registry


class StateSerializer:
    """Serializes workflow state (not spec) to JSON and back.

    Spiff's registry toggles a mode flag while encoding, so each thread gets
    its own registry.
    """

    def __init__(self):
        self._local = threading.local()

    @property
    def _serializer(self) -> BpmnWorkflowSerializer:
        serializer = getattr(self._local, "serializer", None)
        if serializer is None:
            serializer = self._local.serializer = BpmnWorkflowSerializer(_build_registry())
        return serializer

    @property
    def registry(self):
        """This thread's converter registry: what SpiffWorkflow's diff (bpmn.util.diff) compares specs with."""
        return self._serializer.registry

    def dumps(self, workflow: BpmnWorkflow) -> str:
        registry = self._serializer.registry
        registry._encoder_mode = True
        try:
            dct = self._serializer.to_dict(workflow)
            return json.dumps(dct, cls=self._serializer._encoder_cls, separators=(",", ":"))
        finally:
            registry._encoder_mode = False

    def loads(self, state: str, spec, subprocess_specs: dict, script_engine) -> BpmnWorkflow:
        token = _specs_for_restore.set((spec, subprocess_specs))
        try:
            workflow = self._serializer.from_dict(json.loads(state))
        finally:
            _specs_for_restore.reset(token)
        workflow.script_engine = script_engine
        return workflow
