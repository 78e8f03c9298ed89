"""The engine: deploy definitions, run instances one step at a time.

A step is one database transaction: load (the instance row locked) → deserialize → act → run engine
steps → serialize → `UPDATE … WHERE id = ? AND version = ?` → projections →
history. A lost race raises `Conflict`; a failure inside the diagram rolls the
step back and opens an incident that keeps the failed action for a retry.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid5

from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.exclusive_gateway import ExclusiveGateway
from SpiffWorkflow.exceptions import TaskNotFoundException
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import clock
from .bundle import BundleFile, CompiledBundle, compile_bundle
from .durations import add_duration
from .errors import Conflict, IncidentOpened, InstanceSuspended, NotFound, Rejected
from .hooks import EngineHooks
from .models import (
    Definition,
    DefinitionFile,
    HistoryEvent,
    HumanTask,
    Incident,
    Instance,
    MessageSubscription,
    Outbox,
    Timer,
)
from .sandbox import SandboxedScriptEngine
from .serializer import STATE_FORMAT, StateSerializer
from .specs import CachedSpec, SpecCache

log = logging.getLogger(__name__)

_OPEN = "open"


@dataclass
class StepContext:
    session: object
    instance: Instance
    actor: str | None
    cached: CachedSpec
    completed_human: list[str] = field(default_factory=list)
    completed_elements: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    outbox_ids: list[int] = field(default_factory=list)
    submitted_fields: dict[str, list[str]] = field(default_factory=dict)
    entered: list[str] = field(default_factory=list)
    task_row: object = None  # the human task a completion completes, read at the start of the step
    claims: set[str] = field(default_factory=set)  # tasks the completion claims for the actor


@dataclass
class StepResult:
    instance_id: int
    version: int
    status: str
    outbox_ids: list[int]


class _DiagramFailure(Exception):
    def __init__(self, error: Exception, element_id: str | None):
        self.error = error
        self.element_id = element_id
        super().__init__(str(error))


class _StaleVersion(Conflict):
    """The instance's version moved on between the load and the write of a step."""


# A step that loses the race for its instance's version is run again this many times in all.
_STEP_ATTEMPTS = 5

# Acts that leave the instance in a status of their own; the engine does not run after them.
_STATUS_AFTER_ACT = {"cancel": "cancelled", "suspend": "suspended"}
# All that a suspended instance accepts: nothing else moves it until it is resumed.
_WHILE_SUSPENDED = ("resume", "cancel")
# A person's acts on an instance: on one not yet advanced they do not advance it first (they are refused,
# or cancel it where it is), so an act never opens an incident of the start.
_ACTS = ("cancel", "suspend", "resume", "skip", "return")

_current_step: ContextVar[StepContext] = ContextVar("_current_step")

# A caller's checks on a completion, run inside its step: (session, task row) → the data to complete with.
CompletionCheck = Callable[[object, object], dict]
# A caller's checks on an act (suspend, move a token, reassign, ...), run inside its transaction before
# anything is told about the state: (session, the locked instance row or the task) → None, or raises.
ActCheck = Callable[[object, object], None]


def _failure_message(err: Exception) -> str:
    # Spiff wraps the original error; keep the first line, never task data.
    text = str(err).split("\n")[0]
    return text[:1000] or err.__class__.__name__


def _failed_element(err: Exception) -> str | None:
    task = getattr(err, "task", None)
    spec = getattr(task, "task_spec", None)
    return getattr(spec, "bpmn_id", None) or getattr(err, "task_id", None)


def _event_definitions(task) -> list:
    """The event definitions a waiting task waits for (an event-based gateway waits for several)."""
    definition = getattr(task.task_spec, "event_definition", None)
    if isinstance(definition, MultipleEventDefinition):
        return list(definition.event_definitions)
    return [definition] if definition is not None else []


def _waits_for_timer(task) -> bool:
    return any(isinstance(d, TimerEventDefinition) for d in _event_definitions(task))


def _message_definitions(task) -> list[MessageEventDefinition]:
    return [d for d in _event_definitions(task) if isinstance(d, MessageEventDefinition)]


def _reset_to(workflow: BpmnWorkflow, target) -> None:
    """Make `target` ready again and drop every task after it."""
    removed = workflow.reset_from_task_id(target.id)
    # SpiffWorkflow 3.2 leaves the dropped tasks that waited for an event in the event manager, where the
    # next refresh of timers finds them without a parent.
    for task in removed:
        workflow.event_manager.remove_task(task)


def _is_user_task(cached: CachedSpec, element_id: str) -> bool:
    specs = [cached.spec, *cached.subprocess_specs.values()]
    return any(getattr(t, "bpmn_id", None) == element_id and t.manual for spec in specs
               for t in spec.task_specs.values())


_REACHED = TaskState.COMPLETED | TaskState.READY | TaskState.WAITING | TaskState.STARTED
_ACTIVE = TaskState.READY | TaskState.WAITING | TaskState.STARTED


def _all_tasks(workflow: BpmnWorkflow):
    """Every task of the instance, its subprocesses' included, without walking the task tree.

    Spiff's `get_tasks` walks the tree from the root on every call; a step needs the tasks' states
    before and after it, and asking ten filtered walks cost more than the projections themselves.
    """
    yield from workflow.tasks.values()
    for subprocess in workflow.subprocesses.values():
        yield from subprocess.tasks.values()


@dataclass
class TaskSnapshot:
    """What a step needs to know about the tasks of an instance at one moment, from one pass."""

    reached: dict[UUID, object]      # completed, ready, waiting or started
    ready_manual: dict[str, object]  # user tasks a person can complete, by id, in creation order
    waiting: list                    # tasks waiting for an event (timers, messages)
    active_elements: set[str]

    @classmethod
    def of(cls, workflow: BpmnWorkflow) -> TaskSnapshot:
        reached, ready_manual, waiting, active = {}, {}, [], set()
        for task in _all_tasks(workflow):
            state = task.state
            if not state & _REACHED:
                continue
            reached[task.id] = task
            if state & _ACTIVE:
                bpmn_id = getattr(task.task_spec, "bpmn_id", None)
                if bpmn_id:
                    active.add(bpmn_id)
                if state == TaskState.READY and task.task_spec.manual:
                    ready_manual[str(task.id)] = task
                elif state == TaskState.WAITING:
                    waiting.append(task)
        return cls(reached, ready_manual, waiting, active)

    def waits_for_events(self) -> bool:
        return any(_waits_for_timer(t) or _message_definitions(t) for t in self.waiting)


def _crossed_flows(new_tasks, flows: dict, script_engine) -> set[str]:
    """Sequence flows between each newly reached element and the nearest diagram element above it.

    When several flows join the same two elements, the ones whose condition holds on the
    source's data were crossed. Tasks reached in earlier steps were counted then.
    """
    crossed = set()
    for task in new_tasks:
        target = getattr(task.task_spec, "bpmn_id", None)
        if not target:
            continue
        parent = task.parent
        while parent is not None and not getattr(parent.task_spec, "bpmn_id", None):
            parent = parent.parent
        if parent is None:
            continue
        candidates = flows.get((parent.task_spec.bpmn_id, target), [])
        if len(candidates) == 1:
            crossed.add(candidates[0][0])
            continue
        for flow_id, condition in candidates:
            try:
                if condition is None or script_engine.evaluate(parent, condition):
                    crossed.add(flow_id)
            except Exception:  # a condition that cannot be evaluated was not the one taken
                continue
    return crossed


# The step's statements, built once: building an UPDATE of a dozen values costs about as much as
# running it. They go to the connection, past the ORM's unit of work, which a step does not need.
_INSTANCES = Instance.__table__
_TASKS = HumanTask.__table__
# What a step reads of its instance.
_STEP_COLUMNS = ("id", "definition_id", "process_key", "business_key", "status", "state", "version",
                 "completed_elements", "taken_flows")
_LOCK_INSTANCE = (
    select(*[_INSTANCES.c[name] for name in _STEP_COLUMNS])
    .where(_INSTANCES.c.id == bindparam("instance_id"))
    .with_for_update(of=_INSTANCES)
)
_SAVE_INSTANCE = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("instance_id"), _INSTANCES.c.version == bindparam("expected_version"))
    .values(state=bindparam("new_state"), version=bindparam("new_version"), status=bindparam("new_status"),
            updated_at=bindparam("now"), ended_at=bindparam("ended_at"), active_elements=bindparam("active"),
            completed_elements=bindparam("completed"), taken_flows=bindparam("taken"),
            serializer_version=bindparam("serializer_version"))
)
# A completion reads its task and locks its instance in one statement (one round trip less per step).
# The instance's columns come prefixed with locked_, the task's keep their names (and the instance's definition_id).
_TASK_TO_COMPLETE = (
    select(_TASKS.c.id, _TASKS.c.instance_id, _TASKS.c.process_key, _TASKS.c.business_key, _TASKS.c.element_id,
           _TASKS.c.state, _TASKS.c.role, _TASKS.c.org_unit, _TASKS.c.assignee, _TASKS.c.form,
           _TASKS.c.distinct_from_user, _INSTANCES.c.definition_id,
           *[_INSTANCES.c[name].label(f"locked_{name}") for name in _STEP_COLUMNS])
    .select_from(_TASKS.join(_INSTANCES, _INSTANCES.c.id == _TASKS.c.instance_id))
    .where(_TASKS.c.id == bindparam("task_id"))
    .with_for_update(of=_INSTANCES)
)


@dataclass(frozen=True)
class _LockedInstance:
    """The columns of `_STEP_COLUMNS` of an instance locked by `_TASK_TO_COMPLETE`."""

    id: int
    definition_id: int
    process_key: str
    business_key: str
    status: str
    state: str
    version: int
    completed_elements: list
    taken_flows: list

    @classmethod
    def of_task_row(cls, row) -> _LockedInstance:
        return cls(*[getattr(row, f"locked_{name}") for name in _STEP_COLUMNS])
_TASK_COMPLETED = (
    update(_TASKS)
    .where(_TASKS.c.id == bindparam("task_id"), _TASKS.c.state == _OPEN)
    .values(state="completed", completed_at=bindparam("now"), completed_by=bindparam("actor"))
    .returning(_TASKS.c.id, _TASKS.c.business_key, _TASKS.c.element_id, _TASKS.c.role)
)
# A completion that claims: the task becomes the actor's unless a colleague took it since it was read.
_TASK_CLAIMED_AND_COMPLETED = (
    update(_TASKS)
    .where(_TASKS.c.id == bindparam("task_id"), _TASKS.c.state == _OPEN,
           (_TASKS.c.assignee.is_(None)) | (_TASKS.c.assignee == bindparam("actor")))
    .values(state="completed", completed_at=bindparam("now"), completed_by=bindparam("actor"),
            assignee=bindparam("actor"), claimed_at=bindparam("now"))
    .returning(_TASKS.c.id, _TASKS.c.business_key, _TASKS.c.element_id, _TASKS.c.role)
)


def _task_to_complete(session, action: dict, actor: str | None, check: CompletionCheck | None):
    """The human task a completion is for, with its instance locked, checked before the state is loaded.

    `check`, the caller's own checks (who may complete it, is the data valid), runs first, in this
    transaction: whoever may not see the task must not learn whether it is still open.
    """
    row = session.connection().execute(_TASK_TO_COMPLETE, {"task_id": action["task_id"]}).first()
    if row is None:
        raise NotFound("task not found")
    if check is not None:
        action["data"] = check(session, row)
    if row.state != _OPEN:
        raise Conflict(f"the task is already {row.state}")
    if row.distinct_from_user and row.distinct_from_user == actor:
        raise Rejected("four eyes: this task must be completed by someone other than "
                       "whoever completed the earlier task")
    return row


_HISTORY_BUFFER = "camins_history_buffer"


def _flush_history(session) -> None:
    """Insert the history rows a step collected, in the order they happened, in one statement."""
    rows = session.info.get(_HISTORY_BUFFER)
    if rows:
        session.connection().execute(insert(HistoryEvent.__table__), list(rows))
        rows.clear()


def _plain_json(value):
    """Task data as JSON shows it: dates and other values the serializer registers become text."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _timer_due(task) -> datetime | None:
    value = task.internal_data.get("event_value")
    if isinstance(value, dict):
        value = value.get("next")
    if not value:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):  # a plain date: midnight
        moment = datetime(moment.year, moment.month, moment.day)
    # Spiff compares naive values as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Engine:
    def __init__(self, db, hooks: EngineHooks | None = None, script_time_limit: float = 1.0):
        self.db = db
        self.hooks = hooks or EngineHooks()
        self.specs = SpecCache(self.hooks.resolve_lane)
        self.serializer = StateSerializer()
        self.script_engine = SandboxedScriptEngine(
            clock=clock.now, time_limit=script_time_limit, service_handler=self._call_service
        )

    # ------------------------------------------------------------------ deploy
    def validate(self, files: list[BundleFile]) -> CompiledBundle:
        return compile_bundle(files, self.hooks.resolve_lane, self.hooks.check_form, self.hooks.property_problems)

    def deploy(self, files: list[BundleFile], actor: str | None = None) -> tuple[Definition, bool]:
        """Deploy a bundle; identical content returns the existing version (created=False)."""
        compiled = self.validate(files)
        try:
            with self.db.write() as session:
                existing = session.scalar(
                    select(Definition).where(
                        Definition.process_key == compiled.process_key,
                        Definition.content_hash == compiled.content_hash,
                    )
                )
                if existing is not None:
                    return existing, False
                last = session.scalar(
                    select(func.max(Definition.version)).where(Definition.process_key == compiled.process_key)
                )
                definition = Definition(
                    process_key=compiled.process_key,
                    version=(last or 0) + 1,
                    name=compiled.name,
                    content_hash=compiled.content_hash,
                    status="active",
                    deployed_at=clock.now(),
                    deployed_by=actor,
                    message_starts=compiled.message_starts,
                    files=[DefinitionFile(name=f.name, kind=f.kind, content=f.content) for f in compiled.files],
                )
                session.add(definition)
                session.flush()
        except IntegrityError:
            raise Conflict(f"another deploy of '{compiled.process_key}' happened at the same time; retry") from None
        self.specs.put(definition.id, compiled)
        return definition, True

    def latest_definition(self, session, process_key: str) -> Definition | None:
        return session.scalar(
            select(Definition)
            .where(Definition.process_key == process_key, Definition.status == "active")
            .order_by(Definition.version.desc())
            .limit(1)
        )

    def cached_spec(self, definition: Definition) -> CachedSpec:
        return self.specs.get(definition)

    # --------------------------------------------------------------- instances
    def create_instance(self, session, definition: Definition, business_key: str, data: dict | None,
                        actor: str | None, parent_instance_id: int | None = None) -> Instance:
        """Write a new instance at its start, not yet advanced (call `advance`)."""
        cached = self.specs.get(definition)
        workflow = BpmnWorkflow(cached.spec, cached.subprocess_specs, script_engine=self.script_engine)
        start_data = {**(data or {}), **self.hooks.start_data(session, business_key)}
        if start_data:
            for task in workflow.get_tasks(spec_name="Start"):
                task.data.update(start_data)
        now = clock.now()
        instance = Instance(
            definition_id=definition.id,
            process_key=definition.process_key,
            business_key=business_key,
            status="created",
            state=self.serializer.dumps(workflow),
            serializer_version=STATE_FORMAT,
            version=1,
            started_at=now,
            updated_at=now,
            started_by=actor,
            parent_instance_id=parent_instance_id,
            active_elements=[],
            completed_elements=[],
            taken_flows=[],
        )
        session.add(instance)
        session.flush()
        self._history(session, instance, actor, "instance_started",
                      detail={"process_key": definition.process_key, "version": definition.version})
        return instance

    def advance(self, instance_id: int, actor: str | None = None) -> StepResult:
        return self._step(instance_id, {"kind": "advance"}, actor)

    def complete_task(self, task_id: str, data: dict, actor: str | None, claim: bool = False,
                      check: CompletionCheck | None = None) -> StepResult:
        """Complete a user task in one step. With `claim`, an unassigned task is claimed for `actor` in
        that same step, so nobody ever sees it claimed by someone whose completion then loses a race.

        `check(session, task)` runs inside the step's transaction before anything is locked: it raises
        to refuse the completion and returns the data to complete the task with (the caller's
        authorization and form validation, atomic with the completion and without a transaction of
        their own). `task` has the task row's columns and its instance's `definition_id`.
        """
        action = {"kind": "complete", "task_id": task_id, "data": data}
        if claim:
            action["claim"] = True
        return self._step(None, action, actor, check)

    def spec_of(self, session, definition_id: int) -> CachedSpec:
        """The parsed definition, from the cache when it is there (found by id: no query)."""
        return self.specs.cached(definition_id) or self.specs.get(session.get(Definition, definition_id))

    def instance_data(self, session, instance: Instance) -> dict:
        """The process data of an instance as a person would read it: the data of the tasks its tokens
        are at (merged in the order the tasks were created), or, once it has ended, the data it ended
        with; over the workflow's data objects. Values are plain JSON (dates as ISO strings).

        Deserializes the state: for one instance on request, never for a list."""
        cached = self.spec_of(session, instance.definition_id)
        workflow = self.serializer.loads(instance.state, cached.spec, cached.subprocess_specs, self.script_engine)
        data = dict(workflow.data)
        current = [t for t in _all_tasks(workflow) if t.state & _ACTIVE and getattr(t.task_spec, "bpmn_id", None)]
        if current:
            for task in current:
                data.update(task.data)
        elif workflow.last_task is not None:
            data.update(workflow.last_task.data)
        return _plain_json(data)

    def deliver_message(self, name: str, business_key: str, payload: dict | None, actor: str | None,
                        outbox_id: int | None = None, source_instance_id: int | None = None) -> list[int]:
        """Deliver to every instance of the business key waiting for it, or start one.

        Returns the ids of the instances that received the message; raises
        NotFound when nothing waits for it (nothing is written).
        """
        payload = payload or {}
        with self.db.read() as session:
            waiting = session.scalars(
                select(MessageSubscription.instance_id)
                .where(MessageSubscription.name == name, MessageSubscription.business_key == business_key)
                .distinct()
            ).all()
            if waiting and source_instance_id is not None:
                owner = self._nearest_ancestor(session, source_instance_id, waiting)
                if owner or self._is_owned(session, source_instance_id):
                    # An owned process answers only the chain that started it.
                    waiting = owner
            if waiting and session.scalar(select(Instance.id).where(Instance.id.in_(waiting),
                                                                    Instance.status == "suspended").limit(1)):
                raise InstanceSuspended(f"the pathway waiting for message '{name}' is suspended; "
                                        "send it again once it is resumed")
            starters = [] if waiting else self._message_start_definitions(session, name)
        action = {"kind": "message", "name": name, "payload": payload}
        if outbox_id is not None:
            action["outbox_id"] = outbox_id
        if waiting:
            for instance_id in waiting:
                self._step(instance_id, action, actor)
            return list(waiting)
        if not starters:
            raise NotFound(f"no process of case {business_key} waits for message '{name}'")
        return [self._start_by_message(d, business_key, action, actor, source_instance_id) for d in starters]

    def _start_by_message(self, definition_id: int, business_key: str, action: dict, actor,
                          parent_instance_id: int | None) -> int:
        """Create the instance and let it catch the message in one transaction.

        Were they two, a crash in between would leave an instance that never got its message
        and the outbox would start a second one.
        """
        def create(session) -> Instance:
            definition = session.get(Definition, definition_id)
            return self.create_instance(session, definition, business_key, None, actor,
                                        parent_instance_id=parent_instance_id)

        try:
            with self.db.write() as session:
                result = self._step_in(session, create(session), action, actor)
        except _DiagramFailure as failure:
            # The instance is kept at its start so that the incident (and its retry) has a home.
            with self.db.write() as session:
                instance_id = create(session).id
            incident_id = self._record_incident(instance_id, action, failure, actor)
            raise IncidentOpened(incident_id, instance_id, failure.element_id,
                                 _failure_message(failure.error)) from None
        for outbox_id in result.outbox_ids:
            self.deliver_outbox(outbox_id)
        return result.instance_id

    def _is_owned(self, session, instance_id: int) -> bool:
        key = session.scalar(select(Instance.process_key).where(Instance.id == instance_id))
        return key in self.hooks.owned_processes()

    @staticmethod
    def _nearest_ancestor(session, instance_id: int, candidates, max_depth: int = 10000) -> list[int]:
        """A reply goes back up the chain that started its sender, not to every waiting instance.

        When two pathways of a case wait for the same message (say, two measures each waiting for
        the end of their reviews), the one that started the sender's chain receives it.
        """
        wanted = set(candidates)
        current = instance_id
        for _ in range(max_depth):
            current = session.scalar(select(Instance.parent_instance_id).where(Instance.id == current))
            if current is None:
                return []
            if current in wanted:
                return [current]
        return []

    def _message_start_definitions(self, session, name: str) -> list[int]:
        latest: dict[str, Definition] = {}
        for definition in session.scalars(select(Definition).where(Definition.status == "active")):
            if name in (definition.message_starts or []):
                current = latest.get(definition.process_key)
                if current is None or definition.version > current.version:
                    latest[definition.process_key] = definition
        return [d.id for d in latest.values()]

    # ------------------------------------------------------------------ timers
    def acquire_due_timers(self, owner: str, limit: int = 100, lease: timedelta = timedelta(minutes=5)) -> list[str]:
        """Lease up to `limit` due timers for `owner`; other workers skip them."""
        now = clock.now()
        with self.db.write() as session:
            query = (
                select(Timer.id)
                .where(Timer.status == "waiting", Timer.due_at < now)  # Spiff fires strictly after due
                .where((Timer.lease_until.is_(None)) | (Timer.lease_until < now))
                # Deferred while their instance is suspended: its resume fires what fell due meanwhile.
                .where(Timer.instance_id.not_in(select(Instance.id).where(Instance.status == "suspended")))
                .order_by(Timer.due_at)
                .limit(limit)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            ids = list(session.scalars(query))
            if ids:
                session.execute(
                    update(Timer).where(Timer.id.in_(ids)).values(lease_owner=owner, lease_until=now + lease)
                )
        return ids

    def fire_timer(self, timer_id: str, owner: str) -> bool:
        """Fire a leased timer in one step; False if it is gone or no longer ours."""
        with self.db.read() as session:
            timer = session.get(Timer, timer_id)
            if timer is None or timer.lease_owner != owner or timer.status != "waiting":
                return False
            instance_id = timer.instance_id
        try:
            self._step(instance_id, {"kind": "timer", "timer_id": timer_id, "owner": owner}, "timer")
        except (Conflict, NotFound):
            return False
        return True

    def advance_stalled_instances(self, older_than: timedelta = timedelta(minutes=1), limit: int = 100) -> int:
        """Advance instances created but never advanced: their creator died between the two transactions.

        Starting an instance is two steps (write it, then advance it) so that a failure on the first
        advance can open an incident on a stored instance. A crash in between leaves the instance
        `created` with nothing open; this picks it up. Instances with an open incident wait for a retry.
        """
        cutoff = clock.now() - older_than
        with self.db.read() as session:
            ids = list(session.scalars(
                select(Instance.id).where(Instance.status == "created", Instance.started_at < cutoff)
                .where(~select(Incident.id).where(Incident.instance_id == Instance.id, Incident.status == _OPEN)
                       .exists())
                .order_by(Instance.id).limit(limit)))
        advanced = 0
        for instance_id in ids:
            try:
                self._step(instance_id, {"kind": "advance", "expect_status": "created"}, None)
                advanced += 1
            except (Conflict, NotFound):
                continue  # advanced meanwhile by its creator or another worker
            except IncidentOpened:
                continue  # the incident is where a person looks now
        return advanced

    def next_timer_due(self) -> datetime | None:
        with self.db.read() as session:
            return session.scalar(select(func.min(Timer.due_at)).where(Timer.status == "waiting"))

    # ---------------------------------------------------------------- incidents
    def retry_incident(self, incident_id: int, actor: str | None, reason: str | None = None,
                       check: ActCheck | None = None) -> StepResult:
        """Replay the failed action of an open incident; `reason` goes to the history with the resolution."""
        with self.db.read() as session:
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise NotFound("incident not found")
            if incident.status != _OPEN:
                raise Conflict("the incident is already resolved")
            action = dict(incident.action)
            instance_id = incident.instance_id
        action["incident_id"] = incident_id
        action["retried_by"] = actor
        if reason is not None:
            action["retry_reason"] = reason
        # The step acts for whoever made the original request; history records the retry.
        return self._step(instance_id, action, action.pop("actor", None) or actor, check)

    # -------------------------------------------------------------------- acts
    # A person's decisions about an instance, each one step with its reason in the history. `check`
    # (see ActCheck) runs on the locked instance before anything else.
    def suspend(self, instance_id: int, actor: str, reason: str, check: ActCheck | None = None) -> StepResult:
        """Stop a running instance where it is: until it is resumed, its tasks cannot be claimed or
        completed, its timers wait and messages for it are refused (or held, when another pathway threw them)."""
        return self._step(instance_id, {"kind": "suspend", "reason": reason}, actor, check)

    def resume(self, instance_id: int, actor: str, reason: str, check: ActCheck | None = None) -> StepResult:
        """Run a suspended instance again: the timers that fell due meanwhile fire in this step, and the
        messages held for its case are delivered after it."""
        result = self._step(instance_id, {"kind": "resume", "reason": reason}, actor, check)
        self._deliver_held_messages(instance_id)
        return result

    def cancel(self, instance_id: int, actor: str, reason: str, check: ActCheck | None = None) -> StepResult:
        """End an instance where it is, with the instances of owned processes its chain started."""
        return self._step(instance_id, {"kind": "cancel", "reason": reason}, actor, check)

    def skip_task(self, instance_id: int, task_id: str, actor: str, reason: str,
                  check: ActCheck | None = None) -> StepResult:
        """Pass a ready user task without its form; the instance goes on from there."""
        return self._step(instance_id, {"kind": "skip", "task_id": task_id, "reason": reason}, actor, check)

    def return_to(self, instance_id: int, element_id: str, actor: str, reason: str,
                  check: ActCheck | None = None) -> StepResult:
        """Take the token back to the latest completed task of a user-task element, which opens again;
        whatever came after it is abandoned."""
        return self._step(instance_id, {"kind": "return", "element_id": element_id, "reason": reason}, actor,
                          check)

    def _deliver_held_messages(self, instance_id: int) -> None:
        with self.db.read() as session:
            business_key = session.scalar(select(Instance.business_key).where(Instance.id == instance_id))
            held = list(session.scalars(select(Outbox.id).where(Outbox.status == "pending",
                                                                Outbox.business_key == business_key)
                                        .order_by(Outbox.id)))
        for outbox_id in held:
            self.deliver_outbox(outbox_id)

    # ---------------------------------------------------------- task ownership
    def claim(self, task_id: str, user: str, actor: str | None = None) -> None:
        self._set_assignee(task_id, user, actor or user, expect_unassigned=True, event="task_claimed")

    def unclaim(self, task_id: str, user: str) -> None:
        with self.db.write() as session:
            task = self._open_task(session, task_id)
            if task.assignee != user:
                raise Conflict("the task is not claimed by you")
            session.execute(update(HumanTask).where(HumanTask.id == task_id, HumanTask.assignee == user)
                            .values(assignee=None, claimed_at=None))
            self._history(session, None, user, "task_unclaimed", element_id=task.element_id,
                          detail={"task_id": task_id}, instance_id=task.instance_id,
                          business_key=task.business_key)

    def reassign(self, task_id: str, user: str | None, actor: str, reason: str | None = None,
                 check: ActCheck | None = None) -> None:
        """Give an open task to `user` (None: back to its queue). `check(session, task)` runs first, in
        the same transaction: the caller's authorization, before anything about the task's state is told."""
        self._set_assignee(task_id, user, actor, expect_unassigned=False, event="task_reassigned", reason=reason,
                           check=check)

    def _open_task(self, session, task_id: str, check: ActCheck | None = None) -> HumanTask:
        task = session.get(HumanTask, task_id)
        if task is None:
            raise NotFound("task not found")
        if check is not None:
            check(session, task)
        if task.state != _OPEN:
            raise Conflict(f"the task is already {task.state}")
        return task

    @staticmethod
    def _refuse_if_suspended(session, instance_id: int) -> None:
        # FOR SHARE on PostgreSQL: a suspension cannot commit between this read and the caller's write.
        status = session.scalar(select(Instance.status).where(Instance.id == instance_id)
                                .with_for_update(read=True))
        if status == "suspended":
            raise InstanceSuspended("the instance is suspended")

    def _set_assignee(self, task_id, user, actor, expect_unassigned: bool, event: str, reason: str | None = None,
                      check: ActCheck | None = None) -> None:
        with self.db.write() as session:
            task = self._open_task(session, task_id, check)
            if expect_unassigned:
                self._refuse_if_suspended(session, task.instance_id)
            if user is not None and task.distinct_from_user == user:
                raise Rejected("four eyes: this task must go to someone other than whoever completed "
                               "the earlier task")
            condition = [HumanTask.id == task_id, HumanTask.state == _OPEN]
            if expect_unassigned:
                if task.assignee == user:
                    return
                if task.assignee is not None:
                    raise Conflict("the task is already claimed by someone else")
                condition.append(HumanTask.assignee.is_(None))
            result = session.execute(update(HumanTask).where(*condition)
                                     .values(assignee=user, claimed_at=clock.now() if user else None))
            if result.rowcount != 1:
                raise Conflict("the task changed meanwhile; reload it")
            detail = {"task_id": task_id, "assignee": user}
            if reason is not None:
                detail["reason"] = reason
            self._history(session, None, actor, event, element_id=task.element_id, detail=detail,
                          instance_id=task.instance_id, business_key=task.business_key)

    # --------------------------------------------------------------- the step
    def _step(self, instance_id: int | None, action: dict, actor: str | None,
              check: CompletionCheck | None = None) -> StepResult:
        """Run `action` on an instance in one transaction (on a task's instance when `instance_id` is None)."""
        try:
            for attempt in range(1, _STEP_ATTEMPTS + 1):
                try:
                    with self.db.write() as session:
                        # Lock the instance row before anything else is locked: every step then takes
                        # its locks in the same order (instance, then its tasks and timers). Without it a
                        # completion (claims its task row first) and a timer firing (updates the instance
                        # first, then cancels that task row) deadlock on PostgreSQL.
                        task_row = None
                        if action["kind"] == "complete":
                            task_row = _task_to_complete(session, action, actor, check)
                            instance_id = task_row.instance_id
                            instance = _LockedInstance.of_task_row(task_row)
                        else:
                            instance = session.connection().execute(_LOCK_INSTANCE,
                                                                    {"instance_id": instance_id}).first()
                        if instance is None:
                            raise NotFound("instance not found")
                        if check is not None and task_row is None:
                            check(session, instance)  # an act's authorization, before its state is told
                        if instance.status in ("completed", "cancelled"):
                            raise Conflict(f"the instance is {instance.status}")
                        if instance.status == "suspended" and action["kind"] not in _WHILE_SUSPENDED:
                            raise InstanceSuspended("the instance is suspended")
                        result = self._step_in(session, instance, action, actor, task_row)
                    break
                except _StaleVersion:
                    # Another step of this instance committed first (say, the other branch of a
                    # parallel split). Everything is rolled back: run the action again on the newer
                    # state, where it raises a real Conflict if it no longer applies.
                    if attempt == _STEP_ATTEMPTS:
                        raise
        except _DiagramFailure as failure:
            incident_id = self._record_incident(instance_id, action, failure, actor)
            raise IncidentOpened(incident_id, instance_id, failure.element_id, _failure_message(failure.error)) \
                from None
        for outbox_id in result.outbox_ids:
            self.deliver_outbox(outbox_id)
        return result

    def _step_in(self, session, instance, action: dict, actor: str | None, task_row=None) -> StepResult:
        """The step on a locked instance (an ORM `Instance` or a row of `_LOCK_INSTANCE`)."""
        # Found by id: loading the definition row on every step would cost a query.
        cached = self.spec_of(session, instance.definition_id)
        workflow = self.serializer.loads(instance.state, cached.spec, cached.subprocess_specs, self.script_engine)
        owns_history_buffer = _HISTORY_BUFFER not in session.info  # a cancelled descendant's step shares it
        if owns_history_buffer:
            session.info[_HISTORY_BUFFER] = []
        before = TaskSnapshot.of(workflow)
        ctx = StepContext(session, instance, actor, cached, task_row=task_row)
        token = _current_step.set(ctx)
        try:
            if instance.status == "created" and action["kind"] not in ("advance", *_ACTS):
                # A new instance has not reached its first wait state (e.g. a message start) yet.
                self._run_engine(workflow, ctx)
            self._apply(workflow, action, ctx)
            if action["kind"] not in _STATUS_AFTER_ACT:
                self._run_engine(workflow, ctx)
        finally:
            _current_step.reset(token)

        now = clock.now()
        # Take the thrown messages out before serializing, or the saved state would throw them again.
        thrown = workflow.get_events()
        after = TaskSnapshot.of(workflow)
        status = _STATUS_AFTER_ACT.get(action["kind"]) or ("completed" if workflow.is_completed() else "running")
        new_tasks = [t for task_id, t in after.reached.items() if task_id not in before.reached]
        new_version = instance.version + 1
        result = session.connection().execute(_SAVE_INSTANCE, {
            "instance_id": instance.id, "expected_version": instance.version,
            "new_state": self.serializer.dumps(workflow), "new_version": new_version, "new_status": status,
            "now": now, "ended_at": now if status in ("completed", "cancelled") else None,
            "active": sorted(after.active_elements),
            "completed": sorted(set(instance.completed_elements or []) | set(ctx.completed_elements)),
            "taken": sorted(set(instance.taken_flows or [])
                            | _crossed_flows(new_tasks, cached.flows, self.script_engine)),
            "serializer_version": STATE_FORMAT})
        if result.rowcount != 1:
            raise _StaleVersion("the instance was changed by someone else at the same time; reload and retry")

        # History in the order things happened: the completion, what the engine did, what it opened.
        self._close_human_tasks(session, instance, before, after, ctx, now)
        for entry in ctx.history:
            self._history(session, instance, entry.pop("actor", actor), **entry)
        self._project(session, instance, before, after, ctx, now, thrown)
        elements = ctx.cached.elements
        self.hooks.on_elements(session, instance, [elements[e] for e in ctx.entered if e in elements],
                               [elements[e] for e in ctx.completed_elements if e in elements], now)
        if "incident_id" in action:
            session.execute(update(Incident).where(Incident.id == action["incident_id"])
                            .values(status="resolved", resolved_at=now, resolved_by=action.get("retried_by", actor)))
            self._history(session, instance, action.get("retried_by", actor), "incident_resolved",
                          detail={"incident_id": action["incident_id"], "reason": action.get("retry_reason")})
        if "outbox_id" in action:
            session.execute(update(Outbox).where(Outbox.id == action["outbox_id"])
                            .values(status="delivered", delivered_at=now, target_instance_id=instance.id))
        if status == "completed":
            self._history(session, instance, actor, "instance_completed")
            self.hooks.on_instance_ended(session, instance)
            self._cancel_owned_descendants(session, instance, actor)
        elif status == "cancelled" and owns_history_buffer:
            # Cancelled by a person, not as a descendant of another instance (whose step walks the whole chain).
            self._cancel_owned_descendants(session, instance, actor)
        _flush_history(session)
        if owns_history_buffer:
            del session.info[_HISTORY_BUFFER]
        return StepResult(instance.id, new_version, status, ctx.outbox_ids)

    def _run_engine(self, workflow: BpmnWorkflow, ctx: StepContext) -> None:
        try:
            workflow.do_engine_steps(did_complete_task=lambda t: self._element_done(t, ctx))
        except Exception as err:  # anything raised by a script, condition or service task
            raise _DiagramFailure(err, _failed_element(err)) from err

    def _cancel_owned_descendants(self, session, instance: Instance, actor) -> None:
        """Cancel the running instances of owned processes in the chains this instance started."""
        owned = self.hooks.owned_processes()
        frontier = [instance.id]
        while frontier:
            children = session.scalars(select(Instance).where(Instance.parent_instance_id.in_(frontier),
                                                              Instance.process_key.in_(owned))).all()
            for child in children:
                if child.status in ("created", "running", "suspended"):
                    self._step_in(session, child, {"kind": "cancel", "reason": f"instance {instance.id} ended"},
                                  actor)
            frontier = [c.id for c in children]

    def _apply(self, workflow: BpmnWorkflow, action: dict, ctx: StepContext) -> None:
        kind = action["kind"]
        if kind == "advance":
            if action.get("expect_status") not in (None, ctx.instance.status):
                raise Conflict(f"the instance is {ctx.instance.status}")
            return
        if kind == "cancel":
            workflow.cancel()
            ctx.history.append({"event": "instance_cancelled", "detail": {"reason": action.get("reason")}})
            return
        if kind == "suspend":
            if ctx.instance.status != "running":
                raise Conflict(f"only a running instance can be suspended; this one is {ctx.instance.status}")
            ctx.history.append({"event": "instance_suspended", "detail": {"reason": action["reason"]}})
            return
        if kind == "resume":
            if ctx.instance.status != "suspended":
                raise Conflict("the instance is not suspended")
            ctx.history.append({"event": "instance_resumed", "detail": {"reason": action["reason"]}})
            self._fire_due_timers(workflow, ctx)
            return
        if kind == "skip":
            self._skip(workflow, action, ctx)
            return
        if kind == "return":
            self._return(workflow, action, ctx)
            return
        if kind == "complete":
            task = workflow.get_task_from_id(UUID(action["task_id"]))
            if task is None or task.state != TaskState.READY or not task.task_spec.manual:
                raise Conflict("the task is no longer open")
            if action.get("claim"):
                self._check_claim(ctx, action["task_id"])
            task.data.update(action.get("data") or {})
            try:
                task.run()
            except Exception as err:
                raise _DiagramFailure(err, task.task_spec.bpmn_id) from err
            ctx.completed_human.append(action["task_id"])
            ctx.submitted_fields[action["task_id"]] = sorted(action.get("data") or {})
            ctx.completed_elements.append(task.task_spec.bpmn_id)
            return
        if kind == "message":
            name = action["name"]
            waiting = [(t, d) for t in TaskSnapshot.of(workflow).waiting
                       for d in _message_definitions(t) if d.name == name]
            if not waiting:
                raise Conflict(f"the instance no longer waits for message '{name}'")
            event = BpmnEvent(waiting[0][1], payload=action.get("payload") or {})
            waiting = [t for t, _d in waiting]
            try:
                workflow.send_event(event)
            except Exception as err:
                raise _DiagramFailure(err, waiting[0].task_spec.bpmn_id) from err
            ctx.history.append({"event": "message_received", "element_id": waiting[0].task_spec.bpmn_id,
                                "detail": {"name": name}})
            self.hooks.on_message_received(ctx.session, ctx.instance, name, action.get("payload") or {})
            return
        if kind == "timer":
            timer = ctx.session.get(Timer, action["timer_id"])
            if timer is None or timer.lease_owner != action["owner"]:
                raise Conflict("the timer was fired or taken by another worker")
            try:
                workflow.refresh_timers()
            except Exception as err:
                raise _DiagramFailure(err, timer.element_id) from err
            task = workflow.get_task_from_id(UUID(action["timer_id"]))
            if task is not None and task.state == TaskState.WAITING:
                raise Conflict("the timer is not due yet")
            ctx.history.append({"event": "timer_fired", "element_id": timer.element_id,
                                "detail": {"timer_id": timer.id, "due_at": timer.due_at.isoformat(),
                                           "worker": action["owner"]}})
            return
        raise ValueError(f"unknown action {kind}")

    def _fire_due_timers(self, workflow: BpmnWorkflow, ctx: StepContext) -> None:
        """Fire every timer of the instance that is due (those deferred while it was suspended)."""
        waiting = [t for t in TaskSnapshot.of(workflow).waiting if _waits_for_timer(t)]
        if not waiting:
            return
        try:
            workflow.refresh_timers()
        except Exception as err:
            raise _DiagramFailure(err, None) from err
        for task in waiting:
            if task.state != TaskState.WAITING:
                ctx.history.append({"event": "timer_fired", "element_id": task.task_spec.bpmn_id,
                                    "detail": {"timer_id": str(task.id), "on": "resume"}})

    def _skip(self, workflow: BpmnWorkflow, action: dict, ctx: StepContext) -> None:
        try:
            task = workflow.get_task_from_id(UUID(action["task_id"]))
        except TaskNotFoundException:
            task = None
        if task is None or task.state != TaskState.READY or not task.task_spec.manual:
            raise Conflict("only an open user task of this instance can be skipped")
        skipped = ctx.session.connection().execute(
            update(_TASKS).where(_TASKS.c.id == action["task_id"], _TASKS.c.state == _OPEN)
            .values(state="skipped", completed_at=clock.now(), completed_by=ctx.actor))
        if skipped.rowcount != 1:
            raise Conflict("the task is no longer open")
        bpmn_id = task.task_spec.bpmn_id
        self._move_on(workflow, ctx, f"skipping '{bpmn_id}'", task.run)
        # The token left the element: what the diagram ties to its end (legal clocks) happens as on completion.
        ctx.completed_elements.append(bpmn_id)
        ctx.history.append({"event": "task_skipped", "element_id": bpmn_id,
                            "detail": {"task_id": action["task_id"], "reason": action["reason"]}})

    def _return(self, workflow: BpmnWorkflow, action: dict, ctx: StepContext) -> None:
        element_id = action["element_id"]
        if element_id not in ctx.cached.elements:
            raise Rejected(f"the pathway has no element '{element_id}'")
        if not _is_user_task(ctx.cached, element_id):
            raise Rejected(f"'{element_id}' is not a user task: a token returns only to a user task")
        done = [t for t in _all_tasks(workflow)
                if t.state == TaskState.COMPLETED and getattr(t.task_spec, "bpmn_id", None) == element_id]
        if not done:
            raise Conflict(f"'{element_id}' has not been completed in this instance: there is nothing to return to")
        target = max(done, key=lambda t: t.last_state_change)
        left = sorted(TaskSnapshot.of(workflow).active_elements)
        # The task opens again under its own id, so the row of its completion is kept under another.
        ctx.session.connection().execute(
            update(_TASKS).where(_TASKS.c.id == str(target.id))
            .values(id=str(uuid5(target.id, f"returned at version {ctx.instance.version}"))))
        self._move_on(workflow, ctx, f"returning to '{element_id}'", lambda: _reset_to(workflow, target))
        ctx.history.append({"event": "token_moved", "element_id": element_id,
                            "detail": {"from": left, "task_id": str(target.id), "reason": action["reason"]}})

    def _move_on(self, workflow: BpmnWorkflow, ctx: StepContext, what: str, move: Callable[[], object]) -> None:
        """Move the token and run the engine from there. A failure refuses the act (nothing is written)
        rather than opening an incident: a retry would replay the same move into the same failure."""
        try:
            move()
            self._run_engine(workflow, ctx)
        except _DiagramFailure as failure:
            raise Rejected(f"{what} leaves the pathway unable to go on: {_failure_message(failure.error)}") \
                from None
        except Exception as err:
            raise Rejected(f"{what} leaves the pathway unable to go on: {_failure_message(err)}") from None

    def _check_claim(self, ctx: StepContext, task_id: str) -> None:
        """A completion that claims: the task must be unassigned or the actor's already.

        The claim itself is written by the completion's UPDATE (`_close_human_tasks`), whose condition
        repeats this check, so a colleague's claim in between turns this step into a Conflict.
        """
        row = ctx.task_row
        if row is None or row.state != _OPEN:
            raise Conflict("the task is no longer open")
        if row.assignee == ctx.actor:
            return
        if row.assignee is not None:
            raise Conflict("someone else took the task meanwhile")
        ctx.claims.add(task_id)
        ctx.history.append({"event": "task_claimed", "element_id": row.element_id,
                            "detail": {"task_id": task_id, "assignee": ctx.actor}})

    def _element_done(self, task, ctx: StepContext) -> None:
        bpmn_id = getattr(task.task_spec, "bpmn_id", None)
        if not bpmn_id:
            return
        ctx.entered.append(bpmn_id)
        ctx.completed_elements.append(bpmn_id)
        if isinstance(task.task_spec, ExclusiveGateway):
            taken = [c.task_spec.bpmn_id for c in task.children
                     if c.state not in (TaskState.MAYBE, TaskState.LIKELY, TaskState.CANCELLED)
                     and getattr(c.task_spec, "bpmn_id", None)]
            ctx.history.append({"event": "gateway_taken", "element_id": bpmn_id, "detail": {"taken": taken}})

    def _call_service(self, operation: str, params: dict, context: dict) -> str:
        ctx = _current_step.get()
        # Spiff hands over evaluated parameters as {"value": ..., "type": ...}
        # and expects the result as a JSON string.
        values = {k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
                  for k, v in (params or {}).items()}
        result = self.hooks.call_service(ctx.session, ctx.instance, operation, values)
        return json.dumps(result)

    # ------------------------------------------------------------ projections
    def _project(self, session, instance, before: TaskSnapshot, after: TaskSnapshot, ctx: StepContext, now,
                 thrown: list) -> None:
        self._open_human_tasks(session, instance, before, after, ctx, now)
        if before.waits_for_events() or after.waits_for_events():
            # Rows exist only for tasks waiting on a timer or a message: with none before or after
            # this step there is nothing to add or remove.
            ctx.entered += self._project_timers(session, instance, after.waiting)
            ctx.entered += self._project_subscriptions(session, instance, after.waiting)
        for event in thrown:
            if isinstance(event.event_definition, MessageEventDefinition):
                payload = event.payload if isinstance(event.payload, dict) else {"value": event.payload}
                outbox = Outbox(source_instance_id=instance.id, name=event.event_definition.name,
                                business_key=instance.business_key, payload=payload, status="pending",
                                created_at=now)
                session.add(outbox)
                session.flush()
                ctx.outbox_ids.append(outbox.id)
                self._history(session, instance, ctx.actor, "message_thrown",
                              detail={"name": event.event_definition.name, "outbox_id": outbox.id})
                self.hooks.on_message_thrown(session, instance, event.event_definition.name, payload)

    def _close_human_tasks(self, session, instance, before: TaskSnapshot, after: TaskSnapshot,
                           ctx: StepContext, now) -> None:
        """Close the rows of user tasks ready before this step and not after: completed here, or cancelled.

        Every ready user task has its open row, written in the step that made it ready, so the two
        snapshots tell which rows to close without reading them.
        """
        closed = [task_id for task_id in before.ready_manual if task_id not in after.ready_manual]
        if not closed:
            return
        connection = session.connection()
        cancelled = [task_id for task_id in closed if task_id not in ctx.completed_human]
        for task_id in ctx.completed_human:
            statement = _TASK_CLAIMED_AND_COMPLETED if task_id in ctx.claims else _TASK_COMPLETED
            row = connection.execute(statement, {"task_id": task_id, "now": now, "actor": ctx.actor}).first()
            if row is None:
                raise Conflict("someone else took or completed the task meanwhile")
            self._history(session, instance, ctx.actor, "task_completed", element_id=row.element_id,
                          detail={"task_id": row.id, "role": row.role,
                                  "fields": ctx.submitted_fields.get(row.id, [])})
            self.hooks.on_task_completed(session, row, ctx.actor)
        if cancelled:
            rows = connection.execute(update(_TASKS).where(_TASKS.c.id.in_(cancelled), _TASKS.c.state == _OPEN)
                                      .values(state="cancelled", completed_at=now)
                                      .returning(_TASKS.c.id, _TASKS.c.element_id)).all()
            element_of = {row.id: row.element_id for row in rows}
            for task_id in cancelled:
                if task_id in element_of:
                    self._history(session, instance, ctx.actor, "task_cancelled", element_id=element_of[task_id],
                                  detail={"task_id": task_id})

    def _open_human_tasks(self, session, instance, before: TaskSnapshot, after: TaskSnapshot,
                          ctx: StepContext, now) -> None:
        """A row, routed to a role queue or a person, for every user task that became ready in this step."""
        rows = []
        for task_id, task in after.ready_manual.items():
            if task_id in before.ready_manual:
                continue
            element = ctx.cached.elements.get(task.task_spec.bpmn_id)
            properties = dict(element.properties) if element else {}
            role = self.hooks.resolve_lane(task.task_spec.lane) if task.task_spec.lane else None
            routing = self.hooks.route_task(session, instance.business_key, role, element)
            due_at = add_duration(now, properties["due_in"]) if properties.get("due_in") else None
            distinct_from_user = None
            if properties.get("distinct_from"):
                distinct_from_user = self._last_completed_by(session, instance, ctx, properties["distinct_from"])
            if routing.assignee and routing.assignee == distinct_from_user:
                routing.assignee = None
            element_id = task.task_spec.bpmn_id
            rows.append(dict(
                id=task_id, instance_id=instance.id, process_key=instance.process_key,
                business_key=instance.business_key, element_id=element_id,
                name=task.task_spec.bpmn_name or element_id, lane=task.task_spec.lane,
                role=routing.role, org_unit=routing.org_unit, assignee=routing.assignee, state=_OPEN,
                form=properties.get("form"), distinct_from_user=distinct_from_user, due_at=due_at,
                created_at=now, claimed_at=now if routing.assignee else None, completed_at=None,
                completed_by=None, properties=properties,
            ))
            ctx.entered.append(element_id)
            self._history(session, instance, ctx.actor, "task_ready", element_id=element_id,
                          detail={"task_id": task_id, "role": routing.role, "org_unit": routing.org_unit,
                                  "assignee": routing.assignee})
        if rows:
            session.connection().execute(insert(_TASKS), rows)

    @staticmethod
    def _last_completed_by(session, instance, ctx: StepContext, element_id: str) -> str | None:
        """Who completed the latest task of `element_id` in the instance (four eyes)."""
        row = ctx.task_row
        if row is not None and row.element_id == element_id and row.id in ctx.completed_human:
            return ctx.actor  # completed in this very step: no need to ask the database
        return session.connection().scalar(
            select(_TASKS.c.completed_by)
            .where(_TASKS.c.instance_id == instance.id, _TASKS.c.element_id == element_id,
                   _TASKS.c.state == "completed")
            .order_by(_TASKS.c.completed_at.desc()).limit(1))

    def _project_timers(self, session, instance, waiting) -> list[str]:
        wanted = {}
        for task in waiting:
            if _waits_for_timer(task):
                due = _timer_due(task)
                if due is not None:
                    wanted[str(task.id)] = (task, due)
        rows = {row.id: row for row in session.scalars(select(Timer).where(Timer.instance_id == instance.id))}
        for timer_id in rows.keys() - wanted.keys():
            session.execute(delete(Timer).where(Timer.id == timer_id))
        entered = []
        for timer_id, (task, due) in wanted.items():
            row = rows.get(timer_id)
            if row is None:
                session.add(Timer(id=timer_id, instance_id=instance.id, element_id=task.task_spec.bpmn_id,
                                  due_at=due, status="waiting"))
                entered.append(task.task_spec.bpmn_id)
            elif row.due_at != due:
                row.due_at, row.lease_owner, row.lease_until, row.status = due, None, None, "waiting"
        return entered

    def _project_subscriptions(self, session, instance, waiting) -> list[str]:
        wanted = {}
        for task in waiting:
            for definition in _message_definitions(task):
                # One row per message; an event-based gateway waits for several on one task.
                wanted[str(uuid5(task.id, definition.name))] = (task, definition.name)
        rows = set(session.scalars(select(MessageSubscription.id)
                                   .where(MessageSubscription.instance_id == instance.id)))
        for sub_id in rows - wanted.keys():
            session.execute(delete(MessageSubscription).where(MessageSubscription.id == sub_id))
        entered = []
        for sub_id, (task, name) in wanted.items():
            if sub_id not in rows:
                session.add(MessageSubscription(id=sub_id, instance_id=instance.id, name=name,
                                                business_key=instance.business_key,
                                                element_id=task.task_spec.bpmn_id))
                entered.append(task.task_spec.bpmn_id)
        return entered

    # ------------------------------------------------------------------ outbox
    def deliver_outbox(self, outbox_id: int) -> None:
        """Route a thrown message; record it as unrouted when nothing receives it."""
        with self.db.read() as session:
            outbox = session.get(Outbox, outbox_id)
            if outbox is None or outbox.status != "pending":
                return
            name, business_key, payload = outbox.name, outbox.business_key, dict(outbox.payload or {})
            source = outbox.source_instance_id
        try:
            self.deliver_message(name, business_key, payload, actor=None, outbox_id=outbox_id,
                                 source_instance_id=source)
        except NotFound:
            with self.db.write() as session:
                done = session.execute(update(Outbox).where(Outbox.id == outbox_id, Outbox.status == "pending")
                                       .values(status="unrouted", delivered_at=clock.now()))
                if done.rowcount:
                    self._history(session, None, None, "message_unrouted", instance_id=source,
                                  business_key=business_key, detail={"name": name, "outbox_id": outbox_id})
        except IncidentOpened:
            log.warning("message %s (outbox %s) opened an incident on delivery", name, outbox_id)
        except InstanceSuspended:
            # Stays pending: the receiver's resume delivers it (and the worker keeps trying meanwhile).
            log.info("message %s (outbox %s) waits for a suspended instance", name, outbox_id)

    def deliver_pending_outbox(self, limit: int = 100) -> int:
        """Deliver messages whose sender crashed before delivering them."""
        with self.db.read() as session:
            ids = list(session.scalars(select(Outbox.id).where(Outbox.status == "pending")
                                       .order_by(Outbox.id).limit(limit)))
        for outbox_id in ids:
            self.deliver_outbox(outbox_id)
        return len(ids)

    # --------------------------------------------------------------- incidents
    def _record_incident(self, instance_id: int, action: dict, failure: _DiagramFailure, actor) -> int:
        message = _failure_message(failure.error)
        stored_action = {k: v for k, v in action.items() if k not in ("incident_id", "retried_by", "retry_reason")}
        stored_action["actor"] = actor
        with self.db.write() as session:
            instance = session.get(Instance, instance_id)
            if "incident_id" in action:
                incident = session.get(Incident, action["incident_id"])
                incident.attempts += 1
                incident.message = message
                incident_id = incident.id
            else:
                incident = Incident(instance_id=instance_id, element_id=failure.element_id,
                                    error_type=failure.error.__class__.__name__, message=message,
                                    action=stored_action, status=_OPEN, attempts=1, created_at=clock.now())
                session.add(incident)
                session.flush()
                incident_id = incident.id
            task = session.get(HumanTask, action["task_id"]) if action.get("claim") else None
            if task is not None and task.state == _OPEN and task.assignee is None:
                # The submitter keeps the task while their submission waits in the incident.
                task.assignee, task.claimed_at = actor, clock.now()
                self._history(session, instance, actor, "task_claimed", element_id=task.element_id,
                              detail={"task_id": task.id, "assignee": actor})
            if action["kind"] == "timer":
                # A failing timer must not be fired again and again by the workers.
                session.execute(update(Timer).where(Timer.id == action["timer_id"]).values(status="incident"))
            if "outbox_id" in action:
                session.execute(update(Outbox).where(Outbox.id == action["outbox_id"])
                                .values(status="incident", target_instance_id=instance_id))
            self._history(session, instance, actor, "incident_opened", element_id=failure.element_id,
                          detail={"incident_id": incident_id, "error": message[:300]})
        log.warning("incident %s on instance %s at %s: %s", incident_id, instance_id, failure.element_id,
                    failure.error.__class__.__name__)
        return incident_id

    # ----------------------------------------------------------------- history
    def record_history(self, session, business_key: str, event: str, actor: str | None = None,
                       instance_id: int | None = None, element_id: str | None = None,
                       detail: dict | None = None) -> None:
        """Append a history row for something the domain did (inside the caller's transaction)."""
        self._history(session, None, actor, event, element_id=element_id, detail=detail,
                      instance_id=instance_id, business_key=business_key)

    def _history(self, session, instance: Instance | None, actor, event: str, element_id: str | None = None,
                 detail: dict | None = None, instance_id: int | None = None, business_key: str | None = None):
        row = dict(instance_id=instance.id if instance is not None else instance_id,
                   business_key=instance.business_key if instance is not None else business_key,
                   at=clock.now(), actor=actor, event=event, element_id=element_id, detail=detail or {})
        buffer = session.info.get(_HISTORY_BUFFER)
        if buffer is not None:
            buffer.append(row)  # a step writes its history in one statement at its end
        else:
            session.add(HistoryEvent(**row))
