"""Running scenarios (engine/scenarios.py) against a draft: the generic mechanics.

Each scenario runs on a throwaway SQLite database of its own, copied from a template, with a clock
of its own (`clock.local_clock`: only the thread running the scenario sees it, so a deploy that
runs scenarios does not move the time of the requests its process serves). `EngineRun` drives an
Engine through the steps and observes the instance through its projections and a recorder of the
elements each step completed; `compare` tells what differs from the expectations.

The layer that owns the data subclasses `EngineRun`: what exists before the start, who
completes a task and through which checks, and expectations of its own.
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from lxml import etree
from sqlalchemy import select

from . import clock
from .bundle import NS, CompiledBundle
from .clock import ManualClock
from .durations import add_duration
from .errors import EngineError, IncidentOpened, NotFound
from .models import HistoryEvent, HumanTask, Incident, Instance
from .scenarios import DiagramIds, Expectations, Scenario, Step
from .xmlsafe import parse_xml

log = logging.getLogger(__name__)
# Timers fire once their moment has passed; a clock move goes this much further, so that moving the
# clock by a timer's own duration ("P20D" for a 20-day timer) fires it, as an analyst expects.
_PAST_DUE = timedelta(seconds=1)
_TIMER_OWNER = "scenario"


class StepFailed(Exception):
    """A step could not be done as written; the message says what the run found instead."""


@dataclass
class Observation:
    """The instance under test (and the open work of its business key) as the run sees it after a step."""

    path: list[str]           # elements completed, in order (an element in a loop appears each time)
    flows: set[str]
    active: set[str]
    open_tasks: list[str]     # user tasks open in every instance of the run
    status: str
    end: str | None           # the last end event of the process that was reached
    thrown: list[str]
    incidents: list[tuple[str | None, str]]  # (element id, message) of each open incident


@dataclass
class ScenarioResult:
    file: str
    name: str
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures


# ------------------------------------------------------------------------------- diagram ids
def diagram_ids(compiled: CompiledBundle, companions: list[CompiledBundle] = ()) -> DiagramIds:
    """The ids a scenario of `compiled` may name (tasks and messages of the companions too)."""
    own = _ids_of(compiled)
    others = [_ids_of(c) for c in companions]
    return DiagramIds(
        elements=frozenset(own["elements"]), flows=frozenset(own["flows"]), end_events=frozenset(own["ends"]),
        user_tasks=frozenset(own["tasks"].union(*(o["tasks"] for o in others))),
        messages=frozenset(own["messages"].union(*(o["messages"] for o in others))),
        message_starts=frozenset(compiled.message_starts), none_start=bool(own["none_start"]))


def _ids_of(compiled: CompiledBundle) -> dict[str, set]:
    found: dict[str, set] = {key: set() for key in ("elements", "flows", "ends", "tasks", "messages", "none_start")}
    for file in compiled.files:
        if file.kind != "bpmn":
            continue
        tree = parse_xml(file.content)
        found["messages"] |= {m.get("name") or m.get("id") for m in tree.iterfind("bpmn:message", NS)}
        for process in tree.iterfind("bpmn:process", NS):
            if process.get("id") != compiled.process_key:
                continue
            found["elements"] |= {e.get("id") for e in process.iter() if isinstance(e.tag, str) and e.get("id")}
            found["flows"] |= {f.get("id") for f in process.iterfind(".//bpmn:sequenceFlow", NS)}
            found["ends"] |= {e.get("id") for e in process.iterfind("bpmn:endEvent", NS)}
            found["tasks"] |= {t.get("id") for t in process.iterfind(".//bpmn:userTask", NS)}
            found["none_start"] |= {s.get("id") for s in process.iterfind("bpmn:startEvent", NS) if _is_plain(s)}
    return found


def _is_plain(event) -> bool:
    """A start event without an event definition: the one an instance created by hand starts at."""
    return not any(isinstance(child.tag, str) and etree.QName(child).localname.endswith("EventDefinition")
                   for child in event)


# ---------------------------------------------------------------------------- recording hooks
class PathRecorder:
    """The host's hooks, noting per instance the elements each step completed, in order.

    The engine stores completed elements as a set; a scenario's path is a sequence.
    """

    def __init__(self, inner):
        self._inner = inner
        self.paths: dict[int, list[str]] = defaultdict(list)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def on_elements(self, session, instance, entered: list, completed: list, now) -> None:
        self.paths[instance.id].extend(e.element_id for e in completed)
        self._inner.on_elements(session, instance, entered, completed, now)


# --------------------------------------------------------------------------- scratch databases
class ScratchDatabases:
    """Throwaway SQLite files: migrate and seed a template once, copy it for every scenario."""

    def __init__(self):
        self.directory = Path(tempfile.mkdtemp(prefix="camins-scenarios-"))
        self._lock = threading.Lock()
        self._count = 0
        self._templates: dict[str, Path] = {}

    def _new_path(self, stem: str) -> Path:
        with self._lock:
            self._count += 1
            return self.directory / f"{stem}-{self._count}.db"

    def template(self, key: str, prepare: Callable[[str], None]) -> Path:
        """The template called `key`, made once by `prepare(url)` (which must close what it opened)."""
        with self._lock:
            if key in self._templates:
                return self._templates[key]
            path = self.directory / f"template-{key}.db"
            prepare(url_of(path))
            _checkpoint(path)
            self._templates[key] = path
            return path

    def copy(self, source: Path, prepare: Callable[[str], None] | None = None) -> Path:
        """A new database with the content of `source`, then `prepare(url)` if given."""
        path = self._new_path("run")
        shutil.copyfile(source, path)
        if prepare is not None:
            prepare(url_of(path))
            _checkpoint(path)
        return path

    @staticmethod
    def discard(path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def _checkpoint(path: Path) -> None:
    """Fold the write-ahead log into the file, so that copying the file copies everything."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


# -------------------------------------------------------------------------------------- the run
class EngineRun:
    """One scenario driven through an Engine on its own database and clock."""

    actor = "scenario"

    def __init__(self, engine, process_key: str, ids: DiagramIds, recorder: PathRecorder):
        self.engine = engine
        self.process_key = process_key
        self.ids = ids
        self.recorder = recorder
        self.clock: ManualClock | None = None
        self.business_key: str | None = None
        self.instance_id: int | None = None

    # -- what the host may change
    def start(self, scenario: Scenario) -> None:
        """Start the instance; a host whose business keys stand for records of its own overrides this."""
        self.begin("SCENARIO-1", scenario)

    def complete(self, step: Step) -> None:
        task = self.task_for(step)
        self.engine.complete_task(task.id, step.data, step.by or self.actor, claim=True)

    def after_clock_moved(self) -> None:
        """What a worker does when time passes: fire the due timers, deliver pending messages."""
        self.fire_due_timers()

    def extra_failures(self, extra: dict) -> list[str]:
        """The host's own expectations (Vocabulary.expectations); none here."""
        return []

    # -- the mechanics
    def begin(self, business_key: str, scenario: Scenario) -> None:
        self.business_key = business_key
        start = scenario.start
        if start.message:
            try:
                self.engine.deliver_message(start.message, business_key, start.payload, self.actor)
            except NotFound as err:
                raise StepFailed(str(err)) from None
        else:
            with self.engine.db.write() as session:
                definition = self.engine.latest_definition(session, self.process_key)
                instance_id = self.engine.create_instance(session, definition, business_key, start.data,
                                                          self.actor).id
            self.engine.advance(instance_id, self.actor)
        self.instance_id = self._main_instance()
        if self.instance_id is None:
            raise StepFailed(f"no instance of '{self.process_key}' was started")

    def do(self, step: Step) -> None:
        """One step; StepFailed says what went otherwise than written (an incident included)."""
        before = self._open_incidents()
        try:
            if step.action == "complete":
                self.complete(step)
            elif step.action == "clock":
                self.move_clock(step)
            else:
                self.send(step)
        except IncidentOpened:
            pass  # the incidents table tells what was opened, checked below
        except EngineError as err:
            raise StepFailed(str(err)) from None
        opened = [incident for key, incident in self._open_incidents().items() if key not in before]
        _check_incident(step, opened)

    def move_clock(self, step: Step) -> None:
        now = self.clock.now()
        target = step.moment or add_duration(now, step.duration)
        if target < now:
            raise StepFailed(f"the clock is at {now.isoformat()}; it cannot go back to {target.isoformat()}")
        self.clock.set(target + _PAST_DUE)
        self.after_clock_moved()

    def fire_due_timers(self) -> None:
        while True:
            ids = self.engine.acquire_due_timers(_TIMER_OWNER, 100, lease=timedelta(days=1))
            if not ids:
                break
            for timer_id in ids:
                try:
                    self.engine.fire_timer(timer_id, _TIMER_OWNER)
                except IncidentOpened:
                    continue  # the step's incident check sees it
        self.engine.deliver_pending_outbox()

    def send(self, step: Step) -> None:
        try:
            self.engine.deliver_message(step.target, self.business_key, step.data, self.actor)
        except NotFound:
            raise StepFailed(f"nothing waits for message '{step.target}'; active: "
                             f"{_listed(sorted(self.observe().active))}") from None

    def task_for(self, step: Step) -> HumanTask:
        """The open task a completion step is for, in the queue the step names, if it names one."""
        task = self.open_task(step.target)
        if step.role and task.role != step.role:
            raise StepFailed(f"the task is in the queue of {task.role} ({task.org_unit}), not of {step.role}")
        return task

    def open_task(self, element_id: str) -> HumanTask:
        with self.engine.db.read() as session:
            tasks = session.scalars(select(HumanTask).where(HumanTask.business_key == self.business_key,
                                                            HumanTask.element_id == element_id,
                                                            HumanTask.state == "open")
                                    .order_by(HumanTask.created_at, HumanTask.id)).all()
        if not tasks:
            raise StepFailed(f"the task is not open (it never became ready, or is done); open tasks: "
                             f"{_listed(self.observe().open_tasks)}")
        own = [t for t in tasks if t.instance_id == self.instance_id]
        if len(tasks) > 1 and len(own) != 1:
            raise StepFailed(f"{len(tasks)} tasks '{element_id}' are open at once; the scenario cannot tell which")
        return own[0] if own else tasks[0]

    def observe(self) -> Observation:
        with self.engine.db.read() as session:
            instance = session.get(Instance, self.instance_id)
            open_tasks = sorted(session.scalars(select(HumanTask.element_id).where(
                HumanTask.business_key == self.business_key, HumanTask.state == "open")))
            thrown = [h.detail.get("name") for h in session.scalars(
                select(HistoryEvent).where(HistoryEvent.instance_id == self.instance_id,
                                           HistoryEvent.event == "message_thrown").order_by(HistoryEvent.id))]
        path = list(self.recorder.paths.get(self.instance_id, []))
        ends = [element for element in path if element in self.ids.end_events]
        return Observation(path=path, flows=set(instance.taken_flows or []), active=set(instance.active_elements or []),
                           open_tasks=open_tasks, status=instance.status, end=ends[-1] if ends else None,
                           thrown=thrown, incidents=list(self._open_incidents().values()))

    def _main_instance(self) -> int | None:
        with self.engine.db.read() as session:
            return session.scalar(select(Instance.id).where(Instance.business_key == self.business_key,
                                                            Instance.process_key == self.process_key)
                                  .order_by(Instance.id).limit(1))

    def _open_incidents(self) -> dict[int, tuple[str | None, str]]:
        with self.engine.db.read() as session:
            rows = session.execute(select(Incident.id, Incident.element_id, Incident.message)
                                   .join(Instance, Instance.id == Incident.instance_id)
                                   .where(Instance.business_key == self.business_key, Incident.status == "open")
                                   .order_by(Incident.id)).all()
        return {row.id: (row.element_id, row.message) for row in rows}


def _check_incident(step: Step, opened: list[tuple[str | None, str]]) -> None:
    if step.incident is None:
        if opened:
            element, message = opened[0]
            raise StepFailed(f"opened an incident at {element or 'an unknown element'}: {message}")
        return
    if not opened:
        where = "" if step.incident is True else f" at {step.incident}"
        raise StepFailed(f"expected an incident{where}; none was opened")
    if step.incident is not True and step.incident not in [element for element, _message in opened]:
        raise StepFailed(f"expected an incident at {step.incident}; it was opened at "
                         f"{_listed([element for element, _message in opened])}")


# ----------------------------------------------------------------------------------- comparing
def compare(expect: Expectations, seen: Observation) -> list[str]:
    """What differs between the expectations and what the run saw, one message each."""
    failures = []
    if expect.path is not None:
        failures += _path_failures(expect.path, seen.path)
    for element in expect.not_path or ():
        if element in seen.path:
            failures.append(f"not_path: '{element}' was reached; path: {_arrows(seen.path)}")
    for flow in expect.flows or ():
        if flow not in seen.flows:
            failures.append(f"flows: '{flow}' was not crossed")
    for element in expect.active or ():
        if element not in seen.active:
            failures.append(f"active: '{element}' is not active; active: {_listed(sorted(seen.active))}")
    if expect.open_tasks is not None and sorted(expect.open_tasks) != seen.open_tasks:
        failures.append(f"open_tasks: expected {_listed(sorted(expect.open_tasks))}, open: {_listed(seen.open_tasks)}")
    if expect.thrown is not None and list(expect.thrown) != seen.thrown:
        failures.append(f"thrown: expected {_listed(expect.thrown)}, thrown: {_listed(seen.thrown)}")
    failures += _incident_failures(expect.incidents, seen.incidents)
    if expect.end is not None and expect.end != seen.end:
        reached = f"reached {seen.end}" if seen.end else \
            f"no end was reached (status {seen.status}; active: {_listed(sorted(seen.active))})"
        failures.append(f"end: expected {expect.end}, {reached}")
    if expect.status is not None and expect.status != seen.status:
        failures.append(f"status: expected {expect.status}, is {seen.status}")
    return failures


def _path_failures(expected: tuple[str, ...], path: list[str]) -> list[str]:
    """The expected elements must appear in this order; others may come between them."""
    position = 0
    for index, element in enumerate(expected):
        try:
            position = path.index(element, position) + 1
        except ValueError:
            after = f" after '{expected[index - 1]}'" if index else ""
            how = "not reached" if element not in path else "reached, but not in this order"
            return [f"path: '{element}' {how}{after}; path taken: {_arrows(path)}"]
    return []


def _incident_failures(expected: tuple[str, ...] | None, open_incidents: list) -> list[str]:
    elements = sorted(element or "?" for element, _message in open_incidents)
    if expected is None:
        # An incident nobody expected fails the scenario even when no step saw it open (say, on a
        # message delivered to another instance of the run).
        return [f"incident at {element or '?'}: {message}" for element, message in open_incidents]
    if sorted(expected) != elements:
        return [f"incidents: expected {_listed(sorted(expected))}, open: {_listed(elements)}"]
    return []


def _listed(items) -> str:
    return "[" + ", ".join(items) + "]"


def _arrows(path: list[str]) -> str:
    return " → ".join(path) if path else "(nothing completed)"


# ------------------------------------------------------------------------------------ a scenario
def run_scenario(scenario: Scenario, run: EngineRun) -> ScenarioResult:
    """Start, do each step (checking its own expectations), then check the scenario's; stop at the first
    step that fails, since the steps after it assumed it."""
    result = ScenarioResult(scenario.file, scenario.name)
    started = time.monotonic()
    run.clock = ManualClock(scenario.start.at)
    with clock.local_clock(run.clock):
        result.failures = _failures(scenario, run)
    result.seconds = time.monotonic() - started
    return result


def _failures(scenario: Scenario, run: EngineRun) -> list[str]:
    where = "start"
    try:
        run.start(scenario)
        for step in scenario.steps:
            where = step.describe()
            run.do(step)
            if step.expect is not None:
                failures = _expectation_failures(step.expect, run)
                if failures:
                    return [f"after {where}: {failure}" for failure in failures]
        where = "at the end"
        return [f"{where}: {failure}" for failure in _expectation_failures(scenario.expect, run)]
    except (StepFailed, EngineError) as err:  # an incident at the start included ("incident 1 at x: ...")
        return [f"{where}: {err}"]
    except Exception as err:
        # A fault of the run itself (a database error, a bug): the analyst gets a line, the log the traceback.
        log.exception("scenario '%s' of %s failed unexpectedly at %s", scenario.name, scenario.file, where)
        return [f"{where}: the run failed unexpectedly ({err.__class__.__name__}: {str(err)[:300]})"]


def _expectation_failures(expect: Expectations, run: EngineRun) -> list[str]:
    return compare(expect, run.observe()) + run.extra_failures(expect.extra)
