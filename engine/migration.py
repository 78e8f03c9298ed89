"""Moving running instances from one version of their process to another.

SpiffWorkflow's diff (`SpiffWorkflow.bpmn.util.diff`) aligns the task specs of two versions by
element id (then by structure) and tells which tasks of an instance were removed or changed. An
instance can move when none of its completed or started tasks changed or disappeared and it does not
wait at an element the new version removes: `migrate_workflow` then points every task at its new spec
and re-plans the ready and waiting branches on the new version.

Each instance moves in its own transaction, locked like a step (engine/runtime.py): its state, its
definition and its projections (human tasks, timers, message subscriptions, active elements) change
together, and history records `instance_migrated`. One refusal does not undo the others.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from SpiffWorkflow.bpmn.util.diff import SpecDiff, WorkflowDiff, migrate_workflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, func, select, update

from . import clock
from .durations import add_duration
from .errors import Invalid
from .models import Definition, Instance
from .runtime import (
    _HISTORY_BUFFER,
    _INSTANCES,
    _LOCK_INSTANCE,
    _TASKS,
    StepContext,
    TaskSnapshot,
    _current_step,
    _DiagramFailure,
    _failure_message,
    _flush_history,
)
from .serializer import STATE_FORMAT
from .versions import ENDED, describe_changes, version_of

MAX_INSTANCES = 500
_DONE = TaskState.COMPLETED | TaskState.STARTED
_AT = TaskState.READY | TaskState.WAITING

_SAVE_MIGRATED = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("instance_id"), _INSTANCES.c.version == bindparam("expected_version"))
    .values(definition_id=bindparam("definition_id"), state=bindparam("new_state"),
            version=bindparam("new_version"), status=bindparam("new_status"), updated_at=bindparam("now"),
            ended_at=bindparam("ended_at"), active_elements=bindparam("active"),
            completed_elements=bindparam("completed"), serializer_version=bindparam("serializer_version"))
)

# Called inside an instance's migration transaction with (session, instance row): the caller's record
# of who touched which instance (an access log, say).
Audit = Callable[[object, object], None]


@dataclass
class Outcome:
    """What happened, or would happen, to one instance."""

    instance_id: int
    business_key: str | None
    status: str | None
    version: int | None
    can_migrate: bool
    reasons: list[str] = field(default_factory=list)
    migrated: bool = False

    def as_dict(self) -> dict:
        return {"instance_id": self.instance_id, "case_reference": self.business_key, "status": self.status,
                "version": self.version, "can_migrate": self.can_migrate, "migrated": self.migrated,
                "reasons": self.reasons}


@dataclass
class _Plan:
    """The diffs of an instance's workflow and of each of its running subprocesses against the new version."""

    reasons: list[str]
    diffs: list[tuple[object, WorkflowDiff, SpecDiff, object]]  # (workflow or subworkflow, diff, spec diff, new spec)


class _Refused(Exception):
    """Undo everything an instance's migration wrote, and report why."""

    def __init__(self, reasons: list[str]):
        self.reasons = reasons
        super().__init__("; ".join(reasons))


class Migrations:
    def __init__(self, engine):
        self.engine = engine

    # --------------------------------------------------------------------- the two acts
    def preview(self, process_key: str, from_version: int, to_version: int,
                instance_ids: list[int] | None = None) -> dict:
        """Which instances can move from one version to another and, for each that cannot, why. Writes nothing."""
        with self.engine.db.read() as session:
            old, new = self._versions(session, process_key, from_version, to_version)
            rows = self._targets(session, old, instance_ids)
            old_cached, new_cached = self.engine.cached_spec(old), self.engine.cached_spec(new)
            outcomes = []
            for row in rows:
                outcome = self._refusal(row, old)
                if outcome is None:
                    workflow = self._load(row, old_cached)
                    plan = self._plan(workflow, new_cached, to_version)
                    outcome = _outcome(row, old.version,
                                       plan.reasons or self._move(workflow, plan, new_cached, to_version))
                outcomes.append(outcome)
            return self._report(session, old, to_version, outcomes)

    def migrate(self, process_key: str, from_version: int, to_version: int, instance_ids: list[int] | None,
                actor: str | None, reason: str, audit: Audit | None = None) -> dict:
        """Move each instance in a transaction of its own; report each as migrated or refused with reasons."""
        with self.engine.db.read() as session:
            old, new = self._versions(session, process_key, from_version, to_version)
            ids = [row.id for row in self._targets(session, old, instance_ids)]
            old_id, new_id = old.id, new.id
            old_cached, new_cached = self.engine.cached_spec(old), self.engine.cached_spec(new)
        outcomes = [self._migrate_one(instance_id, old_id, new_id, from_version, to_version, old_cached, new_cached,
                                      actor, reason, audit) for instance_id in ids]
        with self.engine.db.read() as session:
            return self._report(session, session.get(Definition, old_id), to_version, outcomes)

    # ------------------------------------------------------------------------ checks
    def _versions(self, session, process_key: str, from_version: int, to_version: int):
        if from_version == to_version:
            raise Invalid({"to_version": ["must differ from from_version"]})
        return version_of(session, process_key, from_version), version_of(session, process_key, to_version)

    def _targets(self, session, old: Definition, instance_ids: list[int] | None) -> list:
        """The instances asked for (each must belong to the process), or every unfinished one of the old version."""
        columns = select(Instance.id, Instance.definition_id, Instance.process_key, Instance.business_key,
                         Instance.status, Instance.state, Instance.version)
        if instance_ids is None:
            return session.execute(columns.where(Instance.definition_id == old.id, Instance.status.notin_(ENDED))
                                   .order_by(Instance.id).limit(MAX_INSTANCES)).all()
        ids = list(dict.fromkeys(instance_ids))
        if len(ids) > MAX_INSTANCES:
            raise Invalid({"instance_ids": [f"at most {MAX_INSTANCES} instances at a time"]})
        if not ids:
            raise Invalid({"instance_ids": ["give at least one instance, or leave it out for every running "
                                            "instance of from_version"]})
        rows = {row.id: row for row in session.execute(columns.where(Instance.id.in_(ids),
                                                                     Instance.process_key == old.process_key))}
        strangers = [str(i) for i in ids if i not in rows]
        if strangers:
            raise Invalid({"instance_ids": [f"not instances of process '{old.process_key}': "
                                            f"{', '.join(strangers[:20])}"]})
        return [rows[i] for i in ids]

    @staticmethod
    def _refusal(row, old: Definition) -> Outcome | None:
        """An instance that is over or on another version is refused before its state is even read."""
        if row.status in ENDED:
            return _outcome(row, None, [f"the instance is {row.status}: only unfinished instances move"])
        if row.definition_id != old.id:
            return _outcome(row, None, [f"the instance is not on version {old.version} of '{old.process_key}'"])
        return None

    def _load(self, row, cached):
        return self.engine.serializer.loads(row.state, cached.spec, cached.subprocess_specs,
                                            self.engine.script_engine)

    def _plan(self, workflow, new_cached, to_version: int) -> _Plan:
        """Spiff's diff of the workflow and of each running subprocess, and what stops the move."""
        registry = self.engine.serializer.registry
        spec_diff = SpecDiff(registry, workflow.spec, new_cached.spec)
        diffs = [(workflow, WorkflowDiff(workflow, spec_diff), spec_diff, new_cached.spec)]
        reasons = []
        for subworkflow in workflow.subprocesses.values():
            new_spec = new_cached.subprocess_specs.get(subworkflow.spec.name)
            if new_spec is None:
                reasons.append(f"the subprocess '{subworkflow.spec.name}' is running and version {to_version} "
                               f"has no such process")
                continue
            sub_diff = SpecDiff(registry, subworkflow.spec, new_spec)
            diffs.append((subworkflow, WorkflowDiff(subworkflow, sub_diff), sub_diff, new_spec))
        for _workflow, diff, sdiff, _spec in diffs:
            reasons += _blocking_changes(registry, diff, sdiff, to_version)
        return _Plan(list(dict.fromkeys(reasons)), diffs)

    def _move(self, workflow, plan: _Plan, new_cached, to_version: int) -> list[str]:
        """Point the workflow at the new version (in memory); the reasons it could not, if any."""
        registry = self.engine.serializer.registry
        # Re-planning a waiting timer would restart it from now: keep its due time unless its event changed.
        waiting = {t.id: (registry.convert(t.task_spec).get("event_definition"), dict(t.internal_data))
                   for t in _tasks(workflow) if t.state == TaskState.WAITING}
        try:
            for target, diff, _spec_diff, new_spec in plan.diffs:
                migrate_workflow(diff, target, new_spec)
            workflow.subprocess_specs = new_cached.subprocess_specs
        except Exception as err:  # a timer expression or a condition of the new version that fails on this data
            return [f"version {to_version} cannot take the instance over: {_failure_message(err)}"]
        for task in _tasks(workflow):
            if task.id in waiting and task.state == TaskState.WAITING:
                event, internal = waiting[task.id]
                if registry.convert(task.task_spec).get("event_definition") == event:
                    task.internal_data = internal
        specs = {id(s) for target, _d, _s, new_spec in plan.diffs for s in new_spec.task_specs.values()}
        stranded = sorted({_label(t.task_spec) for t in _tasks(workflow)
                           if id(t.task_spec) not in specs and t.state != TaskState.CANCELLED})
        return [f"the path planned through {label} has no place in version {to_version}" for label in stranded]

    # ------------------------------------------------------------------- one instance
    def _migrate_one(self, instance_id: int, old_id: int, new_id: int, from_version: int, to_version: int,
                     old_cached, new_cached, actor, reason: str, audit: Audit | None) -> Outcome:
        engine = self.engine
        try:
            with engine.db.write() as session:
                row = session.connection().execute(_LOCK_INSTANCE, {"instance_id": instance_id}).first()
                old = session.get(Definition, old_id)
                refusal = self._refusal(row, old)
                if refusal is not None:
                    return refusal
                workflow = self._load(row, old_cached)
                before = TaskSnapshot.of(workflow)
                plan = self._plan(workflow, new_cached, to_version)
                reasons = plan.reasons or self._move(workflow, plan, new_cached, to_version)
                if reasons:
                    return _outcome(row, from_version, reasons)
                outbox_ids = self._commit_move(session, row, workflow, before, old_cached, new_cached, new_id,
                                               from_version, to_version, actor, reason)
                if audit is not None:
                    audit(session, row)
                outcome = Outcome(row.id, row.business_key, row.status, to_version, True, [], migrated=True)
        except _Refused as refused:  # everything the move wrote is rolled back
            return _outcome(row, from_version, refused.reasons)
        for outbox_id in outbox_ids:
            engine.deliver_outbox(outbox_id)
        return outcome

    def _commit_move(self, session, row, workflow, before: TaskSnapshot, old_cached, new_cached, new_id: int,
                     from_version: int, to_version: int, actor, reason: str) -> list[int]:
        """Save the moved workflow and re-derive its projections, in the caller's transaction."""
        engine = self.engine
        session.info[_HISTORY_BUFFER] = []
        ctx = StepContext(session, row, actor, new_cached)
        token = _current_step.set(ctx)
        try:
            if row.status != "created":  # a created instance is advanced by whoever created it
                engine._run_engine(workflow, ctx)
        except _DiagramFailure as failure:
            raise _Refused([f"on version {to_version} the instance fails at {failure.element_id}: "
                            f"{_failure_message(failure.error)}"]) from None
        finally:
            _current_step.reset(token)
        now = clock.now()
        thrown = workflow.get_events()
        after = TaskSnapshot.of(workflow)
        status = "completed" if workflow.is_completed() else row.status
        saved = session.connection().execute(_SAVE_MIGRATED, {
            "instance_id": row.id, "expected_version": row.version, "definition_id": new_id,
            "new_state": engine.serializer.dumps(workflow), "new_version": row.version + 1, "new_status": status,
            "now": now, "ended_at": now if status == "completed" else None, "active": sorted(after.active_elements),
            "completed": sorted(set(row.completed_elements or []) | set(ctx.completed_elements)),
            "serializer_version": STATE_FORMAT})
        if saved.rowcount != 1:
            raise _Refused(["the instance changed meanwhile: preview again"])
        engine._history(session, row, actor, "instance_migrated",
                        detail={"from_version": from_version, "to_version": to_version, "reason": reason})
        engine._close_human_tasks(session, row, before, after, ctx, now)
        self._reroute_changed_tasks(session, row, before, after, old_cached, new_cached, actor)
        for entry in ctx.history:
            engine._history(session, row, entry.pop("actor", actor), **entry)
        # New user tasks, timers and subscriptions; a re-planned wait keeps its task id, so its row stays.
        engine._project(session, row, before, after, ctx, now, thrown)
        elements = new_cached.elements
        engine.hooks.on_elements(session, row, [elements[e] for e in ctx.entered if e in elements],
                                 [elements[e] for e in ctx.completed_elements if e in elements], now)
        if status == "completed":
            engine._history(session, row, actor, "instance_completed")
            engine.hooks.on_instance_ended(session, row)
        _flush_history(session)
        del session.info[_HISTORY_BUFFER]
        return ctx.outbox_ids

    def _reroute_changed_tasks(self, session, row, before: TaskSnapshot, after: TaskSnapshot, old_cached,
                               new_cached, actor) -> None:
        """An open user task whose element the new version changed (name, lane, form, ...) keeps its id and its
        place in the inbox lists, and takes the new version's name, role, form and properties."""
        connection = session.connection()
        for task_id, task in after.ready_manual.items():
            if task_id not in before.ready_manual:
                continue
            old_element = old_cached.elements.get(before.ready_manual[task_id].task_spec.bpmn_id)
            element = new_cached.elements.get(task.task_spec.bpmn_id)
            changes = _element_changes(old_element, element)
            if not changes:
                continue
            current = connection.execute(select(_TASKS).where(_TASKS.c.id == task_id)).first()
            if current is None or current.state != "open":
                continue
            role = self.engine.hooks.resolve_lane(element.lane) if element.lane else None
            routing = self.engine.hooks.route_task(session, row.business_key, role, element)
            same_queue = (routing.role, routing.org_unit) == (current.role, current.org_unit)
            assignee = current.assignee if same_queue and current.assignee else routing.assignee
            if assignee is not None and assignee == current.distinct_from_user:
                assignee = None
            properties = dict(element.properties)
            due_at = add_duration(current.created_at, properties["due_in"]) if properties.get("due_in") else None
            connection.execute(update(_TASKS).where(_TASKS.c.id == task_id).values(
                element_id=element.element_id, name=element.name, lane=element.lane, role=routing.role,
                org_unit=routing.org_unit, assignee=assignee,
                claimed_at=current.claimed_at if assignee == current.assignee else (clock.now() if assignee else None),
                form=properties.get("form"), properties=properties, due_at=due_at))
            self.engine._history(session, row, actor, "task_changed", element_id=element.element_id,
                                 detail={"task_id": task_id, "changes": changes, "role": routing.role,
                                         "org_unit": routing.org_unit, "assignee": assignee})

    # ------------------------------------------------------------------------ report
    @staticmethod
    def _report(session, old: Definition, to_version: int, outcomes: list[Outcome]) -> dict:
        unfinished = session.scalar(select(func.count()).select_from(Instance)
                                    .where(Instance.definition_id == old.id, Instance.status.notin_(ENDED)))
        return {"process_key": old.process_key, "from_version": old.version, "to_version": to_version,
                "instances": [o.as_dict() for o in outcomes],
                "can_migrate": sum(o.can_migrate for o in outcomes),
                "migrated": sum(o.migrated for o in outcomes),
                "refused": sum(not o.can_migrate for o in outcomes),
                "unfinished_on_from_version": unfinished}


def _outcome(row, version: int | None, reasons: list[str]) -> Outcome:
    return Outcome(row.id, row.business_key, row.status, version, not reasons, reasons)


def _tasks(workflow):
    yield from workflow.tasks.values()
    for subworkflow in workflow.subprocesses.values():
        yield from subworkflow.tasks.values()


def _label(task_spec) -> str:
    bpmn_id = getattr(task_spec, "bpmn_id", None)
    if bpmn_id:
        name = getattr(task_spec, "bpmn_name", None)
        return f"'{name}' ({bpmn_id})" if name else f"'{bpmn_id}'"
    return f"'{task_spec.name}'"


def _blocking_changes(registry, diff: WorkflowDiff, spec_diff: SpecDiff, to_version: int) -> list[str]:
    """Why Spiff's rule refuses: a completed or started task changed or removed, or a wait at a removed element."""
    reasons = []
    for task in diff.removed:
        state = TaskState.get_name(task.state).lower()
        if task.state & _DONE:
            reasons.append(f"{_label(task.task_spec)} is {state} and version {to_version} removes it")
        elif task.state & _AT:
            reasons.append(f"the instance is at {_label(task.task_spec)} ({state}), which version {to_version} "
                           f"removes")
    for task in diff.changed:
        if not task.state & _DONE:
            continue
        aligned = spec_diff.alignment[task.task_spec]
        changes = describe_changes(registry.convert(task.task_spec), registry.convert(aligned))
        if aligned.name != task.task_spec.name:
            changes.insert(0, f"id (now '{aligned.name}')")
        state = TaskState.get_name(task.state).lower()
        reasons.append(f"{_label(task.task_spec)} is {state} and version {to_version} changed its "
                       f"{', '.join(changes) or 'definition'}")
    return reasons


def _element_changes(old, new) -> list[str]:
    if old is None or new is None:
        return ["element"]
    changes = [aspect for aspect in ("element_id", "name", "lane") if getattr(old, aspect) != getattr(new, aspect)]
    changes += [f"property '{key}'" for key in sorted(set(old.properties) | set(new.properties))
                if old.properties.get(key) != new.properties.get(key)]
    return changes

