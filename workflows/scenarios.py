"""Scenario tests of the pathways: scenario files (engine/scenarios.py) run against a draft, with the
domain's real rules.

Every scenario gets a throwaway SQLite database of its own, copied from a template that holds the
schema, the demo professionals (with unusable passwords: nobody logs in to it), the draft and the
pathways it talks to (`with:`). The scenario opens a case there in the municipality and with the
birth date it gives, and completes each task through the service as a professional of the task's
queue would: the form checks the data, four eyes and the referents apply, and routing, service
tasks, legal clocks and hand-offs behave as in production. Nothing touches the real database.
"""
from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import select

from engine import clock
from engine.bundle import BundleFile, CompiledBundle, bundles_from_directory, compile_bundle
from engine.errors import Conflict, DeployError, Forbidden, Invalid, NotFound, Rejected
from engine.scenario_run import (
    EngineRun,
    PathRecorder,
    ScenarioResult,
    ScratchDatabases,
    StepFailed,
    diagram_ids,
    run_scenario,
    url_of,
)
from engine.scenarios import (
    SCENARIO_SUFFIX,
    Scenario,
    ScenarioFile,
    ScenarioFileError,
    Step,
    Vocabulary,
    check_references,
    diagram_of,
    is_scenario_file,
    load_scenario_file,
    scenario_file_name,
)

from . import clocks
from .demo import DEMO_USERS
from .forms import sample_submission
from .hooks import DomainHooks
from .models import Case, ClockRun, Communication, User
from .orgunits import find_unit
from .pathways import HANDOFFS, LEGAL_STATUSES, SEVERITIES
from .security import candidates, membership_for, principal_for_user

DEFAULT_MUNICIPALITY = "Manacor"
DEFAULT_BIRTH_DATE = date(2015, 4, 1)
CLOCK_STATUSES = ("on_time", "at_risk", "breached", "met", "late")
CASE_STATUSES = frozenset({"notified"} | {status for status, _legal in HANDOFFS.values()})
_CASE_EXPECTATIONS = {"status": CASE_STATUSES, "legal_status": LEGAL_STATUSES, "severity": SEVERITIES}
# Companions resolve a process key (`with:`) to the files of its bundle, or None.
Companions = Callable[[str], "list[BundleFile] | None"]


# ------------------------------------------------------------------------------ the vocabulary
def _case_facts_problems(facts: dict) -> list[str]:
    problems = [f"unknown key '{key}' (expected: municipality, birth_date)"
                for key in facts if key not in ("municipality", "birth_date")]
    municipality = facts.get("municipality", DEFAULT_MUNICIPALITY)
    unit = find_unit(municipality) if isinstance(municipality, str) else None
    if unit is None or unit.kind != "municipality":
        problems.append(f"'{municipality}' is not one of the 53 municipalities of Mallorca")
    if "birth_date" in facts and _birth_date(facts["birth_date"]) is None:
        problems.append(f"birth_date '{facts['birth_date']}' is not a date (2015-04-01)")
    return problems


def _birth_date(value) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def _case_expectation_problems(value) -> list[str]:
    if not isinstance(value, dict):
        return ["must be a mapping: status, legal_status, severity"]
    problems = []
    for key, expected in value.items():
        allowed = _CASE_EXPECTATIONS.get(key)
        if allowed is None:
            problems.append(f"unknown key '{key}' (expected: {', '.join(_CASE_EXPECTATIONS)})")
        elif not isinstance(expected, str) or expected not in allowed:
            problems.append(f"{key} '{expected}' is not one of: {', '.join(sorted(allowed))}")
    return problems


def _clock_expectation_problems(value) -> list[str]:
    if not isinstance(value, dict):
        return ["must map legal clock ids to a status"]
    problems = [f"unknown legal clock '{c}' (see workflows/clocks.py)" for c in value if c not in clocks.CATALOGUE]
    problems += [f"'{c}': status '{s}' is not one of: {', '.join(CLOCK_STATUSES)}"
                 for c, s in value.items() if s not in CLOCK_STATUSES]
    return problems


def _communication_expectation_problems(value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return ["must be the list of recipients, in the order written (e.g. [Família, Fiscalia de Menors])"]
    return []


VOCABULARY = Vocabulary(
    facts_key="case", check_facts=_case_facts_problems,
    expectations={"case": _case_expectation_problems, "clocks": _clock_expectation_problems,
                  "communications": _communication_expectation_problems})


# ------------------------------------------------------------------------------------ the run
class PathwayRun(EngineRun):
    """A scenario on one case, worked by the demo professionals through the service."""

    def __init__(self, camins, process_key: str, ids, recorder: PathRecorder):
        super().__init__(camins.engine, process_key, ids, recorder)
        self.camins = camins

    def start(self, scenario: Scenario) -> None:
        facts = scenario.facts
        child = {"given_name": "Infant", "family_name": "d'escenari",
                 "birth_date": _birth_date(facts.get("birth_date", DEFAULT_BIRTH_DATE))}
        try:
            reference = self.camins.open_case(facts.get("municipality", DEFAULT_MUNICIPALITY), child, self.actor)
        except Invalid as err:
            raise StepFailed(f"the case cannot be opened: {_field_errors(err)}") from None
        self.begin(reference, scenario)

    def complete(self, step: Step) -> None:
        task = self.task_for(step)
        principal = self._professional(task, step.by)
        try:
            form = self.camins.get_task(principal, task.id)["form"]
            data = sample_submission(form, step.data, clock.now().date()) if form else step.data
            self.camins.complete(principal, task.id, data)
        except Invalid as err:
            raise StepFailed(f"the form refused the data: {_field_errors(err)}") from None
        except (NotFound, Forbidden, Rejected, Conflict) as err:
            raise StepFailed(f"{principal.username} cannot complete it: {err}") from None

    def _professional(self, task, username: str | None):
        """`username`, or whoever a colleague would expect to do it: the assignee, else a candidate."""
        with self.camins.db.read() as session:
            if username is None:
                queue = [u for u in candidates(session, task.role, task.org_unit) if u != task.distinct_from_user]
                username = task.assignee or (queue[0] if queue else None)
                if username is None:
                    raise StepFailed(f"nobody holds {task.role} in {task.org_unit} among the demo professionals")
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise StepFailed(f"'{username}' is not one of the professionals scenarios run with "
                                 "(the demo users of workflows/demo.py)")
            return principal_for_user(user)

    def after_clock_moved(self) -> None:
        # As the worker does on every poll: timers, then the legal clocks that the move breached.
        self.fire_due_timers()
        self.camins.escalate_breached_clocks()

    def extra_failures(self, extra: dict) -> list[str]:
        with self.camins.db.read() as session:
            case = session.scalar(select(Case).where(Case.reference == self.business_key))
            failures = _case_failures(case, extra.get("case") or {})
            if "clocks" in extra:
                failures += _clock_failures(session, case.reference, extra["clocks"])
            if "communications" in extra:
                sent = list(session.scalars(select(Communication.recipient)
                                            .where(Communication.case_reference == case.reference)
                                            .order_by(Communication.id)))
                expected = list(extra["communications"])
                if sent != expected:
                    failures.append(f"communications: expected {_listed(expected)}, sent {_listed(sent)}")
        return failures


def _case_failures(case: Case, expected: dict) -> list[str]:
    return [f"case {key}: expected {value}, is {getattr(case, key)}"
            for key, value in expected.items() if getattr(case, key) != value]


def _clock_failures(session, reference: str, expected: dict) -> list[str]:
    failures, now = [], clock.now()
    for clock_id, status in expected.items():
        run = session.scalar(select(ClockRun).where(ClockRun.case_reference == reference,
                                                    ClockRun.clock_id == clock_id)
                             .order_by(ClockRun.started_at.desc(), ClockRun.id.desc()).limit(1))
        if run is None:
            failures.append(f"clocks: '{clock_id}' never started")
            continue
        actual = clocks.status(clocks.CATALOGUE[clock_id], now, run.due_at, run.at_risk_at, run.stopped_at)
        if actual != status:
            failures.append(f"clocks: '{clock_id}' expected {status}, is {actual} (due {run.due_at:%Y-%m-%d})")
    return failures


def _listed(items) -> str:
    return "[" + ", ".join(items) + "]"


def _field_errors(err: Invalid) -> str:
    return "; ".join(f"{name}: {' '.join(messages)}" for name, messages in sorted(err.errors.items()))


# ------------------------------------------------------------------------------------ a draft
@dataclass
class Draft:
    """A bundle that is not deployed, its scenario files, and where the pathways it talks to come from."""

    files: list[BundleFile]
    scenario_files: list[BundleFile]
    companions: Companions = lambda key: None


@dataclass
class FileReport:
    """The scenarios of one file, or why the file could not be run."""

    file: str
    results: list[ScenarioResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.results)

    def failures(self) -> list[tuple[str, str]]:
        """(file, message) of every problem of the file and every failure of its scenarios."""
        return [(self.file, problem) for problem in self.problems] + \
            [(self.file, f"scenario '{r.name}': {failure}") for r in self.results for failure in r.failures]


@dataclass
class Verdict:
    """What the scenarios of one bundle said before its deploy."""

    process_key: str
    content_hash: str
    passed: int
    failed: int
    failed_at: list[tuple[str, str]]  # (scenario file, what failed)
    override_reason: str | None = None

    @classmethod
    def of(cls, compiled: CompiledBundle, reports: list[FileReport], override_reason: str | None) -> Verdict:
        results = [result for report in reports for result in report.results]
        failed = sum(1 for result in results if not result.ok)
        failed_at = [failure for report in reports for failure in report.failures()]
        return cls(compiled.process_key, compiled.content_hash, len(results) - failed, failed, failed_at,
                   override_reason if failed else None)

    @property
    def failures(self) -> list[str]:
        return [f"{file}: {message}" for file, message in self.failed_at]


def split_scenario_files(files: list[BundleFile]) -> tuple[list[BundleFile], list[BundleFile]]:
    """A bundle's own files, and the scenario files sent with them."""
    scenarios = [f for f in files if is_scenario_file(f.name)]
    return [f for f in files if not is_scenario_file(f.name)], scenarios


def scenario_count(draft: Draft) -> int:
    """How many scenarios the draft's readable files hold (for a progress count before running them)."""
    count = 0
    for file in draft.scenario_files:
        try:
            count += len(load_scenario_file(file.name, file.content, VOCABULARY).scenarios)
        except ScenarioFileError:
            continue
    return count


def run_draft(draft: Draft, progress: Callable[[ScenarioResult], None] | None = None,
              compiled: CompiledBundle | None = None) -> list[FileReport]:
    """Run every scenario file of the draft (`compiled` is its bundle, if compiled already); a bundle that
    does not compile raises DeployError."""
    compiled = compiled or _compile(draft.files, DomainHooks())
    diagrams = {f.name for f in compiled.files if f.kind == "bpmn"}
    reports = []
    for file in draft.scenario_files:
        name = Path(file.name.replace("\\", "/")).name
        if diagram_of(name) not in diagrams:
            reports.append(FileReport(name, problems=[f"belongs to {diagram_of(name)}, which is not in the bundle "
                                                      f"({', '.join(sorted(diagrams))})"]))
            continue
        reports.append(_run_file(name, file.content, compiled, draft.companions, progress))
    return reports


def _compile(files: list[BundleFile], hooks: DomainHooks) -> CompiledBundle:
    return compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)


def _run_file(name: str, content: bytes, compiled: CompiledBundle, companions: Companions,
              progress) -> FileReport:
    try:
        scenario_file = load_scenario_file(name, content, VOCABULARY)
        companion_bundles = _companion_bundles(name, scenario_file, companions)
    except ScenarioFileError as err:
        return FileReport(name, problems=err.messages)
    ids = diagram_ids(compiled, companion_bundles)
    problems = check_references(scenario_file, ids)
    if problems:
        return FileReport(name, problems=problems)
    report = FileReport(name)
    with _FileTemplate(compiled, companion_bundles) as template:
        for scenario in scenario_file.scenarios:
            result = template.run(scenario, ids)
            report.results.append(result)
            if progress is not None:
                progress(result)
    return report


def _companion_bundles(name: str, scenario_file: ScenarioFile, companions: Companions) -> list[CompiledBundle]:
    bundles, problems, hooks = [], [], DomainHooks()
    for key in scenario_file.companions:
        files = companions(key)
        if files is None:
            problems.append(f"with: no pathway '{key}' to run beside the diagram")
            continue
        try:
            bundles.append(_compile(files, hooks))
        except DeployError as err:
            problems.append(f"with: the pathway '{key}' does not deploy: {err}")
    if problems:
        raise ScenarioFileError(name, problems)
    return bundles


class _FileTemplate:
    """A database holding the draft and its companions, copied for each scenario of one file."""

    def __init__(self, compiled: CompiledBundle, companions: list[CompiledBundle]):
        self.compiled, self.companions = compiled, companions
        self.scratch = _scratch()
        self.specs = None
        self.path = None

    def __enter__(self) -> _FileTemplate:
        self.path = self.scratch.copy(self.scratch.template("domain", _prepare_domain), self._deploy)
        return self

    def __exit__(self, *exc) -> None:
        self.scratch.discard(self.path)

    def _deploy(self, url: str) -> None:
        from .service import Camins  # the service imports this module for its deploy gate

        camins = Camins(url)
        try:
            for bundle in [self.compiled, *self.companions]:
                camins.engine.deploy(bundle.files, "scenario")
            # Copies of this database hold the same definition ids: their runs share the parsed specs.
            self.specs = camins.engine.specs
        finally:
            camins.close()

    def run(self, scenario: Scenario, ids) -> ScenarioResult:
        from .service import Camins

        path = self.scratch.copy(self.path)
        recorder = PathRecorder(DomainHooks())
        camins = Camins(url_of(path), hooks=recorder)
        camins.engine.specs = self.specs
        try:
            return run_scenario(scenario, PathwayRun(camins, self.compiled.process_key, ids, recorder))
        finally:
            camins.close()
            self.scratch.discard(path)


def _prepare_domain(url: str) -> None:
    """The schema and the demo professionals, with a password hash nothing matches (no login here)."""
    from .service import Camins

    camins = Camins(url)
    try:
        camins.upgrade_schema()
        with camins.db.write() as session:
            for username, role, unit in DEMO_USERS:
                user = User(username=username, full_name=username, password_hash="!", active=True,
                            created_at=clock.now())
                user.memberships.append(membership_for(role, unit))
                session.add(user)
    finally:
        camins.close()


_scratch_lock = threading.Lock()
_scratch_databases: ScratchDatabases | None = None


def _scratch() -> ScratchDatabases:
    """One set of scratch databases per process; the template is made by the first run that needs it."""
    global _scratch_databases
    with _scratch_lock:
        if _scratch_databases is None:
            _scratch_databases = ScratchDatabases()
            atexit.register(_scratch_databases.close)
        return _scratch_databases


# ------------------------------------------------------------------------------ from the disk
def drafts_from_path(path: Path) -> list[Draft]:
    """The drafts of a directory (every diagram with a scenario file beside it) or of one .bpmn file;
    the pathways named by `with:` come from the same directory."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    companions = directory_companions(directory)
    drafts = []
    for files in bundles_from_directory(directory):
        if path.is_file() and files[0].name != path.name:
            continue
        scenario_file = scenario_file_beside(directory / files[0].name)
        if scenario_file is not None:
            drafts.append(Draft(files, [scenario_file], companions))
    return drafts


def scenario_file_beside(diagram: Path) -> BundleFile | None:
    """The scenario file of a diagram on disk (`x.scenarios.yaml` beside `x.bpmn`), if there is one."""
    path = diagram.parent / scenario_file_name(diagram.name)
    return BundleFile(path.name, path.read_bytes()) if path.is_file() else None


def orphan_scenario_files(directory: Path) -> list[str]:
    """Scenario files with no diagram beside them: a renamed diagram, or a typo in the file name."""
    return sorted(p.name for p in Path(directory).glob(f"*{SCENARIO_SUFFIX}")
                  if not (p.parent / diagram_of(p.name)).is_file())


def directory_companions(directory: Path) -> Companions:
    """Process key → the bundle of that process in `directory` (compiled once, when first asked)."""
    cache: dict[str, list[BundleFile]] | None = None
    hooks = DomainHooks()

    def find(process_key: str) -> list[BundleFile] | None:
        nonlocal cache
        if cache is None:
            cache = {}
            for files in bundles_from_directory(directory):
                try:
                    cache[_compile(files, hooks).process_key] = files
                except DeployError:
                    continue  # a broken neighbour is reported when its own scenarios run
        return cache.get(process_key)

    return find
