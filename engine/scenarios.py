"""Scenario files: executable examples that analysts write beside a diagram.

`x.scenarios.yaml` beside `x.bpmn` holds one or more named scenarios: where the instance starts,
the steps people and the world take (complete a task, let time pass, deliver a message), and
what must be true afterwards (the path, the end, the open tasks, ...). The README shows the
format with an example.

This module reads a file and checks it strictly, naming the scenario and the step of every
problem. It knows nothing of what a scenario's facts mean: the layer that runs scenarios passes a
`Vocabulary` naming the facts it takes before the start (a key of its choosing) and the
expectations it checks itself. `check_references` then checks the ids a file names against the diagram.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import yaml

from .durations import add_duration, is_duration
from .errors import EngineError

SCENARIO_SUFFIX = ".scenarios.yaml"
MAX_FILE_BYTES = 256 * 1024
MAX_SCENARIOS = 100
MAX_STEPS = 300
# Far enough for timers years ahead, near enough that a typo ("P200Y") is caught.
MAX_CLOCK_MOVE = timedelta(days=366 * 30)
# Scenarios start here unless they say otherwise: a fixed moment, so that what a diagram computes from
# dates in its data, and so the path, does not change with the day the scenarios run.
DEFAULT_START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
STATUSES = ("running", "completed", "cancelled")
ACTIONS = ("complete", "clock", "message")

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,199}$")
_FILE_KEYS = ("with", "defaults", "scenarios")
_START_KEYS = ("at", "message", "payload", "data")
_STEP_KEYS = ACTIONS + ("data", "by", "role", "payload", "incident", "expect")
# Which modifiers go with which action.
_STEP_MODIFIERS = {"complete": {"data", "by", "role"}, "clock": set(), "message": {"payload"}}
_ALL_MODIFIERS = {"data", "by", "role", "payload"}
_EXPECT_LISTS = ("path", "not_path", "flows", "active", "open_tasks", "thrown", "incidents")
_EXPECT_KEYS = _EXPECT_LISTS + ("end", "status")


class ScenarioFileError(EngineError):
    """A scenario file that cannot be run; every message names where in the file it is."""

    def __init__(self, file: str, messages: list[str]):
        self.file = file
        self.messages = messages
        super().__init__(f"{file}: " + "; ".join(messages[:5]))


@dataclass(frozen=True)
class Vocabulary:
    """What the layer running the scenarios adds to the format.

    `facts_key` names a mapping each scenario (or the file's defaults) may give, which the runner
    needs before the start (what the host stores outside the instance); `check_facts` returns its
    problems. `expectations` maps extra keys of an `expect` block to a function returning the
    problems of their value; the runner checks them.
    """

    facts_key: str | None = None
    check_facts: Callable[[dict], list[str]] = lambda facts: []
    expectations: dict[str, Callable[[object], list[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Expectations:
    path: tuple[str, ...] | None = None       # completed in this order; others may come between
    not_path: tuple[str, ...] | None = None   # never completed
    flows: tuple[str, ...] | None = None      # sequence flows crossed
    active: tuple[str, ...] | None = None     # active now (others may be too)
    open_tasks: tuple[str, ...] | None = None  # exactly the user tasks open now, in every instance of the run
    thrown: tuple[str, ...] | None = None     # exactly the messages the instance threw, in order
    incidents: tuple[str, ...] | None = None  # exactly the elements with an open incident
    end: str | None = None                    # the end event reached
    status: str | None = None                 # running, completed or cancelled
    extra: dict = field(default_factory=dict)  # the runner's own expectations (Vocabulary.expectations)


@dataclass(frozen=True)
class Step:
    number: int
    action: str                    # one of ACTIONS
    target: str                    # element id, message name, or the clock as written
    data: dict = field(default_factory=dict)     # form data of a completion, payload of a message
    by: str | None = None          # who completes the task
    role: str | None = None        # the role whose queue the task must be in
    duration: str | None = None    # a clock move by an ISO duration ...
    moment: datetime | None = None  # ... or to a moment
    incident: str | bool | None = None  # the element (or True: any) where this step must open an incident
    expect: Expectations | None = None

    def describe(self) -> str:
        return f"step {self.number} ({self.action} {self.target})"


@dataclass(frozen=True)
class Start:
    at: datetime = DEFAULT_START
    message: str | None = None     # start by this message (a message start event) ...
    payload: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # ... or at the none start event with this data


@dataclass(frozen=True)
class Scenario:
    file: str
    name: str
    start: Start
    facts: dict
    steps: tuple[Step, ...]
    expect: Expectations


@dataclass(frozen=True)
class ScenarioFile:
    name: str
    scenarios: tuple[Scenario, ...]
    companions: tuple[str, ...] = ()  # process keys deployed beside the diagram (`with:`)


def is_scenario_file(name: str) -> bool:
    return name.lower().endswith(SCENARIO_SUFFIX)


def diagram_of(scenario_file_name: str) -> str:
    """`x.scenarios.yaml` → `x.bpmn`, the diagram it belongs to."""
    return scenario_file_name[: -len(SCENARIO_SUFFIX)] + ".bpmn"


def scenario_file_name(diagram_name: str) -> str:
    """`x.bpmn` → `x.scenarios.yaml`."""
    stem = diagram_name[:-5] if diagram_name.lower().endswith(".bpmn") else diagram_name
    return stem + SCENARIO_SUFFIX


# ------------------------------------------------------------------------------------------ reading
def load_scenario_file(name: str, content: bytes | str, vocabulary: Vocabulary = Vocabulary()) -> ScenarioFile:
    """Read and check a scenario file; ScenarioFileError lists every problem found."""
    document = _yaml_document(name, content)
    reader = _Reader(vocabulary)
    parsed = reader.file(name, document)
    if reader.problems:
        raise ScenarioFileError(name, reader.problems)
    return parsed


def _yaml_document(name: str, content: bytes | str):
    if len(content) > MAX_FILE_BYTES:
        raise ScenarioFileError(name, [f"larger than {MAX_FILE_BYTES // 1024} KiB"])
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ScenarioFileError(name, ["not UTF-8 text"]) from None
    try:
        # Anchors and aliases are refused: a few lines of them expand to billions of nodes.
        for event in yaml.parse(content, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ScenarioFileError(name, [f"line {mark.line + 1}: YAML aliases (*name) are not allowed; "
                                               "repeat the value or use 'defaults'"])
        return yaml.safe_load(content)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err).split("\n")[0]
        raise ScenarioFileError(name, [f"{where}not valid YAML: {problem}"]) from None


class _Reader:
    """Turns the YAML document into Scenarios, collecting every problem with where it is."""

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)

    def file(self, name: str, document) -> ScenarioFile:
        if not isinstance(document, dict):
            self.problem("", "the file must be a mapping with a 'scenarios' list")
            return ScenarioFile(name, ())
        self.keys(document, "", _FILE_KEYS, required=("scenarios",))
        companions = tuple(self.ids(document.get("with", []), "with"))
        defaults = self.mapping(document.get("defaults", {}), "defaults")
        self.keys(defaults, "defaults", ("start",) + self.facts_keys())
        items = document.get("scenarios")
        if not isinstance(items, list) or not items:
            self.problem("scenarios", "must be a list of at least one scenario")
            return ScenarioFile(name, (), companions)
        if len(items) > MAX_SCENARIOS:
            self.problem("scenarios", f"at most {MAX_SCENARIOS} scenarios in a file")
        scenarios, seen = [], set()
        for index, item in enumerate(items[:MAX_SCENARIOS], start=1):
            scenario = self.scenario(name, index, item, defaults)
            if scenario is None:
                continue
            if scenario.name in seen:
                self.problem(f"scenario '{scenario.name}'", "another scenario has this name")
            seen.add(scenario.name)
            scenarios.append(scenario)
        return ScenarioFile(name, tuple(scenarios), companions)

    def facts_keys(self) -> tuple[str, ...]:
        return (self.vocabulary.facts_key,) if self.vocabulary.facts_key else ()

    def scenario(self, file: str, index: int, item, defaults: dict) -> Scenario | None:
        if not isinstance(item, dict):
            self.problem(f"scenario {index}", "must be a mapping with a name, steps and expect")
            return None
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(f"scenario {index}", "needs a name")
            name = f"#{index}"
        where = f"scenario '{name}'"
        self.keys(item, where, ("name", "start", "steps", "expect") + self.facts_keys(), required=("expect",))
        facts = self.facts(item, defaults, where)
        start = self.start(_merged_start(self.mapping(defaults.get("start", {}), "defaults.start"),
                                         self.mapping(item.get("start", {}), f"{where}, start")), f"{where}, start")
        steps = self.steps(item.get("steps", []), where)
        expect = self.expect(item.get("expect"), f"{where}, expect")
        return Scenario(file, name.strip(), start, facts, tuple(steps), expect)

    def facts(self, item: dict, defaults: dict, where: str) -> dict:
        key = self.vocabulary.facts_key
        if not key:
            return {}
        facts = {**self.mapping(defaults.get(key, {}), f"defaults.{key}"),
                 **self.mapping(item.get(key, {}), f"{where}, {key}")}
        for message in self.vocabulary.check_facts(facts):
            self.problem(f"{where}, {key}", message)
        return facts

    def start(self, raw: dict, where: str) -> Start:
        self.keys(raw, where, _START_KEYS)
        at = self.moment(raw["at"], f"{where}, at") if "at" in raw else DEFAULT_START
        message = self.id(raw["message"], f"{where}, message") if "message" in raw else None
        if message and "data" in raw:
            self.problem(where, "give either 'message' (with its 'payload') or 'data', not both")
        if "payload" in raw and not message:
            self.problem(where, "'payload' goes with 'message'")
        return Start(at=at or DEFAULT_START, message=message,
                     payload=self.data(raw.get("payload", {}), f"{where}, payload"),
                     data=self.data(raw.get("data", {}), f"{where}, data"))

    def steps(self, raw, where: str) -> list[Step]:
        if not isinstance(raw, list):
            self.problem(f"{where}, steps", "must be a list")
            return []
        if len(raw) > MAX_STEPS:
            self.problem(f"{where}, steps", f"at most {MAX_STEPS} steps")
        return [s for s in (self.step(n, item, f"{where}, step {n}") for n, item in enumerate(raw[:MAX_STEPS], 1))
                if s is not None]

    def step(self, number: int, raw, where: str) -> Step | None:
        if not isinstance(raw, dict):
            self.problem(where, f"must be a mapping with one of: {', '.join(ACTIONS)}")
            return None
        actions = [a for a in ACTIONS if a in raw]
        if len(actions) != 1:
            self.keys(raw, where, _STEP_KEYS)
            self.problem(where, f"needs exactly one of: {', '.join(ACTIONS)}"
                         + (f" (it has {', '.join(actions)})" if actions else ""))
            return None
        action = actions[0]
        where = f"{where} ({action})"
        self.keys(raw, where, _STEP_KEYS)
        for modifier in sorted(set(raw) & _ALL_MODIFIERS - _STEP_MODIFIERS[action]):
            self.problem(where, f"'{modifier}' does not go with '{action}'")
        incident = raw.get("incident")
        if incident is not None and incident is not True:
            incident = self.id(incident, f"{where}, incident")
        expect = self.expect(raw["expect"], f"{where}, expect") if "expect" in raw else None
        common = dict(number=number, action=action, incident=incident, expect=expect)
        if action == "clock":
            duration, moment = self.clock(raw["clock"], where)
            return Step(target=str(raw["clock"]), duration=duration, moment=moment, **common)
        target = self.id(raw[action], where) or "?"
        if action == "message":
            return Step(target=target, data=self.data(raw.get("payload", {}), f"{where}, payload"), **common)
        return Step(target=target, data=self.data(raw.get("data", {}), f"{where}, data"),
                    by=self.text(raw.get("by"), f"{where}, by"), role=self.text(raw.get("role"), f"{where}, role"),
                    **common)

    def clock(self, raw, where: str) -> tuple[str | None, datetime | None]:
        if isinstance(raw, str) and raw.strip().startswith("P"):
            text = raw.strip()
            if not is_duration(text):
                self.problem(where, f"'{text}' is not an ISO-8601 duration (e.g. P20D, P6M, PT1H)")
            elif add_duration(DEFAULT_START, text) - DEFAULT_START > MAX_CLOCK_MOVE:
                self.problem(where, f"'{text}' moves the clock more than 30 years")
            return text, None
        moment = self.moment(raw, where)
        return None, moment

    def moment(self, raw, where: str) -> datetime | None:
        """A date (midnight UTC) or a date and time; without an offset it is UTC."""
        if isinstance(raw, datetime):
            return raw if raw.tzinfo else raw.replace(tzinfo=UTC)
        if isinstance(raw, date):
            return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
        if isinstance(raw, str):
            try:
                return self.moment(datetime.fromisoformat(raw.strip()), where)
            except ValueError:
                pass
        self.problem(where, f"'{raw}' is neither an ISO-8601 duration (P20D) nor a date (2027-01-31) "
                            "or a date and time (2027-01-31T10:00:00+01:00)")
        return None

    def expect(self, raw, where: str) -> Expectations:
        if not isinstance(raw, dict):
            self.problem(where, "must be a mapping (path, end, status, open_tasks, ...)")
            return Expectations()
        extra_keys = tuple(self.vocabulary.expectations)
        self.keys(raw, where, _EXPECT_KEYS + extra_keys)
        lists = {key: tuple(self.ids(raw[key], f"{where}, {key}")) for key in _EXPECT_LISTS if key in raw}
        status = raw.get("status")
        if status is not None and status not in STATUSES:
            self.problem(f"{where}, status", f"'{status}' is not one of: {', '.join(STATUSES)}")
        extra = {}
        for key in extra_keys:
            if key in raw:
                for message in self.vocabulary.expectations[key](raw[key]):
                    self.problem(f"{where}, {key}", message)
                extra[key] = raw[key]
        end = self.id(raw["end"], f"{where}, end") if "end" in raw else None
        return Expectations(end=end, status=status, extra=extra, **lists)

    # ----------------------------------------------------------------------------------- values
    def keys(self, raw: dict, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> None:
        if not isinstance(raw, dict):
            return
        for key in raw:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f" (expected: {', '.join(allowed)})"
                self.problem(where, f"unknown key '{key}'{suggestion}")
        for key in required:
            if key not in raw:
                self.problem(where, f"'{key}' is missing")

    def mapping(self, raw, where: str) -> dict:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(where, "must be a mapping")
            return {}
        return raw

    def data(self, raw, where: str) -> dict:
        """Form data or a payload: a mapping of field names to JSON values (dates become ISO text)."""
        raw = self.mapping(raw, where)
        bad = [k for k in raw if not isinstance(k, str) or not k.isidentifier() or k.startswith("_")]
        for key in bad:
            self.problem(where, f"'{key}' is not a field name (letters, digits and _, not starting with _)")
        return {k: _json_value(v) for k, v in raw.items() if k not in bad}

    def id(self, raw, where: str) -> str | None:
        if not isinstance(raw, str) or not _ID.match(raw):
            self.problem(where, f"'{raw}' is not an element id or a message name")
            return None
        return raw

    def ids(self, raw, where: str) -> list[str]:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(where, "must be a list of ids")
            return []
        return [i for i in (self.id(item, where) for item in raw) if i]

    def text(self, raw, where: str) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str) or not raw.strip():
            self.problem(where, "must be a non-empty text")
            return None
        return raw.strip()


def _merged_start(defaults: dict, own: dict) -> dict:
    """A scenario that says how it starts (message or data) keeps only the default moment."""
    if "message" in own or "data" in own:
        defaults = {k: v for k, v in defaults.items() if k == "at"}
    return {**defaults, **own}


def _json_value(value):
    """YAML reads 2027-01-31 as a date; forms and payloads carry dates as ISO text, as JSON does."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


# ------------------------------------------------------------------------------- the diagram's ids
@dataclass(frozen=True)
class DiagramIds:
    """The ids a scenario may name: those of the diagram, and the tasks and messages of its companions."""

    elements: frozenset[str]
    flows: frozenset[str]
    end_events: frozenset[str]
    user_tasks: frozenset[str]      # the diagram's and its companions'
    messages: frozenset[str]        # names of every message the diagram or a companion knows
    message_starts: frozenset[str]  # messages that start the diagram's process
    none_start: bool                # the process has a plain start event


def check_references(scenario_file: ScenarioFile, ids: DiagramIds) -> list[str]:
    """Every id a file names that the diagram does not have, with a suggestion where one is close."""
    problems: list[str] = []

    def unknown(where: str, value: str | None, known, what: str) -> None:
        if value and value not in known:
            hint = difflib.get_close_matches(value, sorted(known), n=1)
            problems.append(f"{where}: '{value}' is not {what}" + (f"; did you mean '{hint[0]}'?" if hint else ""))

    for scenario in scenario_file.scenarios:
        where = f"scenario '{scenario.name}'"
        start = scenario.start
        if start.message:
            unknown(f"{where}, start", start.message, ids.message_starts, "a message that starts this process")
        elif not ids.none_start:
            problems.append(f"{where}, start: the process starts only by a message; give start.message "
                            f"(one of: {', '.join(sorted(ids.message_starts))})")
        for step in scenario.steps:
            step_where = f"{where}, {step.describe()}"
            if step.action == "complete":
                unknown(step_where, step.target, ids.user_tasks, "a user task of the diagram")
            elif step.action == "message":
                unknown(step_where, step.target, ids.messages, "a message of the diagram")
            if isinstance(step.incident, str):
                unknown(f"{step_where}, incident", step.incident, ids.elements | ids.user_tasks, "an element")
            if step.expect:
                _expectation_references(f"{step_where}, expect", step.expect, ids, unknown)
        _expectation_references(f"{where}, expect", scenario.expect, ids, unknown)
    return problems


def _expectation_references(where: str, expect: Expectations, ids: DiagramIds, unknown) -> None:
    for key in ("path", "not_path", "active"):
        for value in getattr(expect, key) or ():
            unknown(f"{where}, {key}", value, ids.elements, "an element of the diagram")
    for value in expect.flows or ():
        unknown(f"{where}, flows", value, ids.flows, "a sequence flow of the diagram")
    for value in expect.open_tasks or ():
        unknown(f"{where}, open_tasks", value, ids.user_tasks, "a user task")
    for value in expect.thrown or ():
        unknown(f"{where}, thrown", value, ids.messages, "a message of the diagram")
    for value in expect.incidents or ():
        unknown(f"{where}, incidents", value, ids.elements | ids.user_tasks, "an element")
    unknown(f"{where}, end", expect.end, ids.end_events, "an end event of the process")
