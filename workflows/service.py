"""The application service: every use case the API offers, with its authorization.

The API layer only translates HTTP to these calls; all rules live here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import ARRAY, String, and_, bindparam, false, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError

from engine import clock, versions
from engine.bundle import BundleFile, bundles_from_directory, lint_bundle
from engine.db import Database, UTCDateTime
from engine.errors import (
    AuthenticationFailed,
    Conflict,
    DeployError,
    Forbidden,
    IncidentOpened,
    Invalid,
    NotFound,
    Problem,
    ScenariosFailed,
    TooManyAttempts,
)
from engine.lint import errors as lint_errors
from engine.migrate import upgrade
from engine.migration import Migrations
from engine.models import (
    Definition,
    HistoryEvent,
    HumanTask,
    Incident,
    Instance,
    MessageSubscription,
    ScenarioVerdict,
    Timer,
)
from engine.runtime import Engine

from . import clocks, security
from .acts import SupervisorActs
from .forms import SubmissionInvalid, form_fields, validate_submission
from .hooks import DomainHooks, case_facts
from .models import (
    AccessLog,
    Case,
    CaseCounter,
    CaseReferent,
    ClockRun,
    Communication,
    FamilyMember,
    Notification,
    User,
)
from .orgunits import find_unit
from .pathways import BUNDLED_DIAGRAMS, ESCALATION_PATHWAY, NOTIFICATION_PATHWAY
from .roles import COMARCA, MUNICIPALITY, ROLES, SECTION
from .scenarios import Companions, Draft, Verdict, run_draft, split_scenario_files
from .security import Principal
from .supervision import SupervisorViews, TerritoryFilter

DOMAIN_MIGRATIONS = Path(__file__).parent / "migrations" / "versions"
REPORTER_KINDS = ("school", "health", "police", "social_services", "citizen")
NOTIFYING_ROLES = ("notifier", "sscb_admin", "sscb_social_worker", "sscb_coordinator", "imas_intake")
MAX_PER_PAGE = 200
MAX_OVERRIDE_REASON = 2000
MAX_RECORDED_FAILURES = 50


# A task as lists show it (plus `overdue`): key → column. The inbox selects just these columns, as
# plain rows, instead of loading whole HumanTask objects.
_TASK_SUMMARY = {"id": HumanTask.id, "case_reference": HumanTask.business_key, "name": HumanTask.name,
                 "role": HumanTask.role, "org_unit": HumanTask.org_unit, "assignee": HumanTask.assignee,
                 "due_at": HumanTask.due_at, "state": HumanTask.state, "process_key": HumanTask.process_key,
                 "element_id": HumanTask.element_id, "instance_id": HumanTask.instance_id,
                 "created_at": HumanTask.created_at}


@dataclass
class Page:
    items: list
    total: int
    page: int
    per_page: int


class Camins(SupervisorActs):
    """One per process: the database, the engine and the domain rules (supervisors' acts in acts.py)."""

    def __init__(self, database_url: str, script_time_limit: float = 1.0, hooks: DomainHooks | None = None):
        self.db = Database(database_url)
        self.hooks = hooks or DomainHooks()
        self.engine = Engine(self.db, self.hooks, script_time_limit=script_time_limit)
        self.login_limits = security.LoginLimits.from_env()
        self._forms: dict[tuple[int, str], dict | None] = {}
        self.supervision = SupervisorViews(self.db, self.engine, self._log_listing)

    def upgrade_schema(self) -> None:
        upgrade(self.db.url, [DOMAIN_MIGRATIONS])

    def close(self) -> None:
        self.db.dispose()

    # ------------------------------------------------------------ auth
    def login(self, username: str, password: str, address: str | None = None) -> tuple[str, datetime]:
        """A token for the right password. Failures are limited per username and per client address
        (`login_limits`, shared by every process through the database); past a limit the answer is
        TooManyAttempts without checking the password, the same whether or not the user exists."""
        keys = security.attempt_keys(self.login_limits, username, address)
        with self.db.write() as session:
            attempt, wait = security.admit_attempt(session, self.login_limits, keys)
        if wait is not None:
            raise TooManyAttempts(wait)
        with self.db.read() as session:  # the slow hash is checked outside any write transaction
            user = security.authenticate(session, username, password)
        if user is None:
            raise AuthenticationFailed("wrong username or password")  # the attempt stays, as a failure
        with self.db.write() as session:
            security.forget_attempts(session, attempt)
            security.clear_user_failures(session, username)
            token, row = security.issue_token(session, session.get(User, user.id))
            return token, row.expires_at

    def principal(self, token: str) -> Principal:
        with self.db.read_one() as session:
            return security.principal_for_token(session, token)

    def logout(self, token: str) -> None:
        with self.db.write() as session:
            security.revoke_token(session, token)

    def create_user(self, username: str, password: str, grants: list[tuple[str, str]], full_name: str = "") -> None:
        with self.db.write() as session:
            security.create_user(session, username, password, grants, full_name)

    def add_membership(self, username: str, role: str, unit: str) -> None:
        with self.db.write() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise NotFound(f"user '{username}' not found")
            user.memberships.append(security.membership_for(role, unit))

    # ------------------------------------------------------------ definitions
    def _require_analyst(self, principal: Principal) -> None:
        if not principal.has_role("analyst"):
            raise Forbidden("only analysts may validate or deploy diagrams")

    def validate_bundle(self, principal: Principal | None, files: list[BundleFile]) -> dict:
        if principal is not None:
            self._require_analyst(principal)
        files, scenario_files = split_scenario_files(files)
        compiled = self.engine.validate(files)
        report = {"process_key": compiled.process_key, "name": compiled.name, "content_hash": compiled.content_hash,
                  "files": [f.name for f in compiled.files], **_lint_report(compiled.lint)}
        if scenario_files:
            report["scenarios"] = _verdict_view(self._run_scenarios(compiled, files, scenario_files, None, None))
        return report

    def deploy_bundle(self, principal: Principal | None, files: list[BundleFile], override_reason: str | None = None,
                      companions: Companions | None = None) -> dict:
        """Deploy, and list the bundle's modelling-rule findings. They do not stop the deploy: the rules
        judge how a diagram reads, not whether it runs, and `camins validate` is where they gate.

        Scenario files sent with the bundle (`*.scenarios.yaml`) run first (`check_scenarios`)."""
        if principal is not None:
            self._require_analyst(principal)
        files, scenario_files = split_scenario_files(files)
        verdict = self.check_scenarios(files, scenario_files, override_reason, companions)
        return self.deploy_checked(principal, files, verdict)

    def check_scenarios(self, files: list[BundleFile], scenario_files: list[BundleFile],
                        override_reason: str | None = None, companions: Companions | None = None) -> Verdict | None:
        """Run a bundle's scenario files against it as a draft, on throwaway databases.

        ScenariosFailed if one fails, unless `override_reason` says why to deploy anyway; DeployError if a
        file cannot be run. None when there are none, or when this content is deployed already (it keeps
        its version, so there is nothing to decide). `companions` finds the pathways a file runs beside
        its diagram (`with:`); by default the deployed ones."""
        reason = _override_reason(override_reason)
        compiled = self.engine.validate(files)
        if not scenario_files or self._is_deployed(compiled):
            return None
        verdict = self._run_scenarios(compiled, files, scenario_files, reason, companions)
        if verdict.failed and not verdict.override_reason:
            problems = [Problem(file=file, message=message) for file, message in verdict.failed_at]
            raise ScenariosFailed(problems, verdict.passed, verdict.failed)
        return verdict

    def deploy_checked(self, principal: Principal | None, files: list[BundleFile], verdict: Verdict | None) -> dict:
        """Deploy a bundle whose scenarios `check_scenarios` ran; the verdict is recorded first, so that a
        deploy over failing scenarios is never stored without its reason."""
        actor = principal.username if principal else "cli"
        if verdict is not None:
            with self.db.write() as session:
                session.add(ScenarioVerdict(process_key=verdict.process_key, content_hash=verdict.content_hash,
                                            passed=verdict.passed, failed=verdict.failed,
                                            failures=verdict.failures[:MAX_RECORDED_FAILURES],
                                            override_reason=verdict.override_reason, decided_by=actor,
                                            decided_at=clock.now()))
        definition, created = self.engine.deploy(files, actor)
        return {"id": definition.id, "process_key": definition.process_key, "version": definition.version,
                "created": created, "scenarios": _verdict_view(verdict), **_lint_report(lint_bundle(files))}

    def _run_scenarios(self, compiled, files, scenario_files, reason: str | None, companions) -> Verdict:
        reports = run_draft(Draft(files, scenario_files, companions or self._deployed_bundle), compiled=compiled)
        unreadable = [Problem(file=report.file, message=problem) for report in reports for problem in report.problems]
        if unreadable:
            raise DeployError(unreadable)
        return Verdict.of(compiled, reports, reason)

    def _is_deployed(self, compiled) -> bool:
        with self.db.read() as session:
            return session.scalar(select(Definition.id).where(Definition.process_key == compiled.process_key,
                                                              Definition.content_hash == compiled.content_hash)
                                  .limit(1)) is not None

    def _deployed_bundle(self, process_key: str) -> list[BundleFile] | None:
        """The files of the latest deployed version of a process: what a draft's scenarios run beside."""
        with self.db.read() as session:
            definition = self.engine.latest_definition(session, process_key)
            return [BundleFile(f.name, f.content) for f in definition.files] if definition else None

    def deploy_directory(self, path: Path = BUNDLED_DIAGRAMS, actor: str = "cli") -> list[tuple[Definition, bool]]:
        bundles = bundles_from_directory(path)
        if not bundles:
            raise DeployError([])
        # Validate all first so that a bad file deploys nothing.
        for files in bundles:
            self.engine.validate(files)
        return [self.engine.deploy(files, actor) for files in bundles]

    def list_definitions(self, principal: Principal, page: int = 1, per_page: int = 50) -> Page:
        if principal.only_notifier:
            raise Forbidden("notifiers cannot read definitions")
        with self.db.read() as session:
            query = select(Definition).order_by(Definition.process_key, Definition.version.desc())
            total = session.scalar(select(func.count()).select_from(Definition))
            rows = session.scalars(query.offset((page - 1) * per_page).limit(per_page)).all()
            counts = dict(session.execute(select(Instance.definition_id, func.count())
                                          .where(Instance.status.in_(("created", "running", "suspended")))
                                          .group_by(Instance.definition_id)).all())
            verdicts = _verdicts_of(session, rows)
            items = [dict(id=d.id, process_key=d.process_key, version=d.version, name=d.name, status=d.status,
                          content_hash=d.content_hash, deployed_at=d.deployed_at, deployed_by=d.deployed_by,
                          files=[f.name for f in d.files], running_instances=counts.get(d.id, 0),
                          scenarios=verdicts.get((d.process_key, d.content_hash))) for d in rows]
        return Page(items, total, page, per_page)

    # ------------------------------------------------------------ versions and migration (analysts)
    def _require_version_analyst(self, principal: Principal) -> None:
        if not principal.has_role("analyst"):
            raise Forbidden("only analysts manage the versions of a pathway and migrate its instances")

    def list_versions(self, principal: Principal, process_key: str) -> list[dict]:
        """Every version of a process, newest first, with its status and its unfinished instances."""
        self._require_version_analyst(principal)
        with self.db.read() as session:
            rows = versions.versions_of(session, process_key)
            counts = versions.running_counts(session, [d.id for d in rows])
            verdicts = _verdicts_of(session, rows)
            return [_version_view(d, counts.get(d.id, 0), verdicts.get((d.process_key, d.content_hash)))
                    for d in rows]

    def diff_versions(self, principal: Principal | None, process_key: str, from_version: int, to_version: int) -> dict:
        """What changed from one version to another; `principal` None is the `camins diff` command."""
        if principal is not None:
            self._require_version_analyst(principal)
        with self.db.read() as session:
            old = versions.version_of(session, process_key, from_version)
            new = versions.version_of(session, process_key, to_version)
            return versions.diff_versions(self.engine, old, new)

    def retire_version(self, principal: Principal, process_key: str, version: int, reason: str) -> dict:
        """A retired version starts no new instance; its running ones go on. Who, when and why are kept."""
        self._require_version_analyst(principal)
        reason = _required_reason(reason)
        with self.db.write() as session:
            definition = versions.retire(session, process_key, version, principal.username, reason)
            counts = versions.running_counts(session, [definition.id])
            return _version_view(definition, counts.get(definition.id, 0), None)

    def preview_migration(self, principal: Principal, process_key: str, from_version: int, to_version: int,
                          instance_ids: list[int] | None) -> dict:
        """Which instances could move to another version and why the others cannot; writes nothing but the
        access log (each instance's state was read)."""
        self._require_version_analyst(principal)
        report = Migrations(self.engine).preview(process_key, from_version, to_version, instance_ids)
        with self.db.write() as session:
            self._log_listing(session, principal, [i["case_reference"] for i in report["instances"]],
                              "preview_migration", f"migration/{process_key}/{from_version}-{to_version}"[:200])
        return report

    def migrate_instances(self, principal: Principal, process_key: str, from_version: int, to_version: int,
                          instance_ids: list[int] | None, reason: str) -> dict:
        """Move instances to another version, each in its own transaction; refusals come with their reasons."""
        self._require_version_analyst(principal)
        reason = _required_reason(reason)

        def audit(session, instance) -> None:
            self._log_access(session, principal, instance.business_key, "migrate_instance",
                             f"instance/{instance.id}")

        report = Migrations(self.engine).migrate(process_key, from_version, to_version, instance_ids,
                                                 principal.username, reason, audit)
        refused = [i["case_reference"] for i in report["instances"] if not i["migrated"] and i["case_reference"]]
        if refused:
            with self.db.write() as session:
                self._log_listing(session, principal, refused, "preview_migration",
                                  f"migration/{process_key}/{from_version}-{to_version}"[:200])
        return report

    # ------------------------------------------------------------ notifications
    def submit_notification(self, principal: Principal, municipality: str, child: dict, reporter: dict,
                            description: str) -> dict:
        if not principal.has_role(*NOTIFYING_ROLES):
            raise Forbidden("your role may not submit notifications")
        unit, errors = _case_facts_errors(municipality, child)
        if reporter.get("kind") not in REPORTER_KINDS:
            errors["reporter.kind"] = [f"must be one of: {', '.join(REPORTER_KINDS)}"]
        if errors:
            raise Invalid(errors)
        with self.db.write() as session:
            definition = self.engine.latest_definition(session, NOTIFICATION_PATHWAY)
            if definition is None:
                raise Conflict(f"the pathway '{NOTIFICATION_PATHWAY}' is not deployed, or every version of it "
                               f"is retired")
            case = self._new_case(session, unit, child, principal.username)
            reporter_public = {k: v for k, v in reporter.items() if v is not None}
            session.add(Notification(case_id=case.id, reporter_kind=reporter["kind"], reporter=reporter_public,
                                     description=description, submitted_by=principal.username,
                                     received_at=clock.now()))
            instance = self.engine.create_instance(
                session, definition, case.reference,
                {"reporter_kind": reporter["kind"], "anonymous": bool(reporter.get("anonymous", False))},
                principal.username)
            reference, instance_id = case.reference, instance.id
        result = {"case_reference": reference, "instance_id": instance_id, "incident_id": None}
        try:
            self.engine.advance(instance_id, principal.username)
        except IncidentOpened as err:
            # The notification is stored; the incident keeps the step for a retry.
            result["incident_id"] = err.incident_id
        return result

    def open_case(self, municipality: str, child: dict, actor: str) -> str:
        """A case with no pathway running yet, for one to be started on it by a message or by hand.

        Not offered over the API, where every case begins with a notification: scenario runs use it to
        start a pathway in the middle of a journey."""
        unit, errors = _case_facts_errors(municipality, child)
        if errors:
            raise Invalid(errors)
        with self.db.write() as session:
            return self._new_case(session, unit, child, actor).reference

    def _new_case(self, session, unit, child: dict, actor: str) -> Case:
        year = clock.now().year
        counter = session.get(CaseCounter, year, with_for_update=True)
        if counter is None:
            try:
                with session.begin_nested():
                    session.add(CaseCounter(year=year, last=0))
            except IntegrityError:
                pass  # a notification made at the same moment created the year's counter first
            counter = session.get(CaseCounter, year, with_for_update=True, populate_existing=True)
        counter.last += 1
        municipality = unit.code
        case = Case(reference=f"EXP-{year}-{counter.last:06d}", municipality=municipality, comarca=unit.parent,
                    section=unit.section, child_given_name=child["given_name"],
                    child_family_name=child["family_name"], child_birth_date=child.get("birth_date"),
                    status="notified", legal_status="none", created_at=clock.now(), created_by=actor)
        for member in child.get("family") or []:
            case.family.append(FamilyMember(**member))
        session.add(case)
        session.flush()
        return case

    # ------------------------------------------------------------ visibility
    def _visible_case(self, session, principal: Principal, reference: str) -> Case:
        """The case if the principal needs to know it; NotFound otherwise, so existence does not leak."""
        case = session.scalar(select(Case).where(Case.reference == reference))
        if case is None or not self._needs_to_know(session, principal, case):
            raise NotFound(f"case {reference} not found")
        return case

    def _needs_to_know(self, session, principal: Principal, case: Case) -> bool:
        grants = [g for g in principal.grants if principal.covers(g, case)]
        if not grants:
            return False
        if principal.supervises(case):
            return True
        if session.scalar(select(CaseReferent.id).where(CaseReferent.case_id == case.id,
                                                        CaseReferent.username == principal.username)):
            return True
        queue_match = or_(*[and_(HumanTask.role == g.role, HumanTask.org_unit == g.unit) for g in grants])
        return session.scalar(
            select(HumanTask.id).where(HumanTask.business_key == case.reference,
                                       or_(queue_match, HumanTask.assignee == principal.username,
                                           HumanTask.completed_by == principal.username)).limit(1)) is not None

    def _case_for_process_work(self, session, principal: Principal, reference: str) -> Case:
        """Instance-level work (start, inspect, retry) is open to analysts on any case: the
        instance view holds element ids and errors, and its variables redacted unless the caller needs to
        know the case. Others need to know the case."""
        if principal.has_role("analyst"):
            case = session.scalar(select(Case).where(Case.reference == reference))
            if case is None:
                raise NotFound(f"case {reference} not found")
            return case
        return self._visible_case(session, principal, reference)

    def _log_access(self, session, principal: Principal, reference: str | None, action: str, resource: str):
        # A Core INSERT: an ORM object would make the next query flush the unit of work for one row.
        session.execute(insert(AccessLog.__table__).values(at=clock.now(), username=principal.username,
                                                           case_reference=reference, action=action,
                                                           resource=resource))

    def _log_listing(self, session, principal: Principal, references: list[str], action: str, resource: str):
        """A list that shows cases is a read of each: one row per case shown, in the order shown.

        The rows of one listing share its moment and are written by one statement: a page of 50 cases
        written row by row was most of the cost of an inbox."""
        references = list(dict.fromkeys(references))
        if not references:
            return
        if session.get_bind().dialect.name == "postgresql":
            shown = func.unnest(bindparam("references", references, type_=ARRAY(String))) \
                .table_valued("value", with_ordinality="position").render_derived()
            position = shown.c.position
        else:  # SQLite: json_each is built in since 3.38
            shown = func.json_each(json.dumps(references)).table_valued("value", "key")
            position = shown.c.key
        session.execute(insert(AccessLog).from_select(
            ["at", "username", "case_reference", "action", "resource"],
            select(literal(clock.now(), UTCDateTime()), literal(principal.username, String()), shown.c.value,
                   literal(action, String()), literal(resource, String())).order_by(position)))

    # ------------------------------------------------------------ tasks
    def inbox(self, principal: Principal, process_key: str | None = None, case_reference: str | None = None,
              due_before: datetime | None = None, overdue: bool = False, mine: bool = False,
              page: int = 1, per_page: int = 50) -> Page:
        if principal.only_notifier:
            raise Forbidden("notifiers have no inbox")
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        # Only tasks of a queue the caller holds now: one assigned to them before they left that role
        # or territory is no longer theirs to see (a supervisor reassigns it).
        in_queue = or_(false(), *[and_(HumanTask.role == r, HumanTask.org_unit == u) for r, u in principal.queues()])
        workable = HumanTask.assignee == principal.username
        if not mine:
            workable = or_(workable, HumanTask.assignee.is_(None))
        query = select(*_TASK_SUMMARY.values()).where(HumanTask.state == "open", in_queue, workable)
        if process_key:
            query = query.where(HumanTask.process_key == process_key)
        if case_reference:
            query = query.where(HumanTask.business_key == case_reference)
        if due_before:
            query = query.where(HumanTask.due_at <= due_before)
        if overdue:
            query = query.where(HumanTask.due_at < clock.now())
        with self.db.write() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            # In the order of index ix_human_task_inbox, so a page reads only its own rows.
            rows = session.execute(query.order_by(HumanTask.due_at.is_(None), HumanTask.due_at,
                                                  HumanTask.created_at, HumanTask.id)
                                   .offset((page - 1) * per_page).limit(per_page)).all()
            now = clock.now()
            items = [_with_overdue(dict(zip(_TASK_SUMMARY, row, strict=True)), now) for row in rows]
            self._log_listing(session, principal, [item["case_reference"] for item in items], "list_tasks", "tasks")
        return Page(items, total, page, per_page)

    def _task_summary(self, task: HumanTask) -> dict:
        return _with_overdue({key: getattr(task, column.key) for key, column in _TASK_SUMMARY.items()}, clock.now())

    def _is_candidate(self, principal: Principal, task: HumanTask) -> bool:
        return (task.role, task.org_unit) in principal.queues()

    def _visible_task(self, session, principal: Principal, task_id: str) -> tuple[HumanTask, Case]:
        task = session.get(HumanTask, task_id)
        if task is None:
            raise NotFound("task not found")
        case = session.scalar(select(Case).where(Case.reference == task.business_key))
        # Being the assignee is not enough: whoever left the task's role or territory loses it.
        allowed = self._is_candidate(principal, task) or (case is not None and principal.supervises(case))
        if not allowed or case is None:
            raise NotFound("task not found")
        return task, case

    def get_task(self, principal: Principal, task_id: str) -> dict:
        with self.db.write() as session:
            task, case = self._visible_task(session, principal, task_id)
            detail = self._task_detail(session, task, case)
            self._log_access(session, principal, case.reference, "read_task", f"task/{task_id}")
        return detail

    def _task_detail(self, session, task: HumanTask, case: Case) -> dict:
        detail = self._task_summary(task)
        detail["form"] = self._form_of(session, task)
        detail["completed_by"] = task.completed_by
        detail["legal_basis"] = (task.properties or {}).get("legal_basis")
        detail["child"] = {"given_name": case.child_given_name, "family_name": case.child_family_name,
                           "birth_date": case.child_birth_date}
        detail["candidates"] = security.candidates(session, task.role, task.org_unit) if task.role else []
        detail["instance_suspended"] = session.scalar(
            select(Instance.status).where(Instance.id == task.instance_id)) == "suspended"
        return detail

    def _form_of(self, session, task: HumanTask) -> dict | None:
        if not task.form:
            return None
        definition_id = session.scalar(select(Instance.definition_id).where(Instance.id == task.instance_id))
        return self._parsed_form(session, definition_id, task.form)

    def claim(self, principal: Principal, task_id: str) -> dict:
        with self.db.read() as session:
            task, _case = self._visible_task(session, principal, task_id)
            if not self._is_candidate(principal, task):
                raise Forbidden("you do not hold the role this task needs in its territory")
        self.engine.claim(task_id, principal.username)
        return self.get_task(principal, task_id)

    def unclaim(self, principal: Principal, task_id: str) -> dict:
        with self.db.read() as session:
            self._visible_task(session, principal, task_id)
        self.engine.unclaim(task_id, principal.username)
        return self.get_task(principal, task_id)

    def complete(self, principal: Principal, task_id: str, data) -> dict:
        def authorize_and_clean(session, task) -> dict:
            """Inside the completing step: who may complete it, and the submission checked against its form."""
            # The facts the step's routing reads anyway, so deciding costs no query of its own.
            case = case_facts(session, task.business_key)
            candidate = (task.role, task.org_unit) in principal.queues()
            # Being the assignee is not enough: whoever left the task's role or territory loses it.
            if case is None or not (candidate or principal.supervises(case)):
                raise NotFound("task not found")
            if task.state != "open":
                raise Conflict(f"the task is already {task.state}")
            if task.assignee not in (None, principal.username):
                raise Forbidden("the task is assigned to someone else")
            if task.assignee is None and not candidate:
                raise Forbidden("you do not hold the role this task needs in its territory")
            form = self._parsed_form(session, task.definition_id, task.form)
            try:
                cleaned = _with_unchecked_boxes(form, validate_submission(form, data)) if form is not None \
                    else _plain_data(data)
            except SubmissionInvalid as err:
                raise Invalid(err.errors) from None
            self._log_access(session, principal, case.reference, "complete_task", f"task/{task_id}")
            return cleaned

        # One transaction: the checks, the access log and the completion. An unassigned task is claimed
        # in it: racing colleagues see it open or done, never held by someone whose completion then
        # fails, and every loser gets a 409.
        try:
            result = self.engine.complete_task(task_id, data, principal.username, claim=True,
                                               check=authorize_and_clean)
        except IncidentOpened:
            # The failed step was rolled back with its access-log row; the submission was read all the same.
            with self.db.write() as session:
                reference = session.scalar(select(HumanTask.business_key).where(HumanTask.id == task_id))
                self._log_access(session, principal, reference, "complete_task", f"task/{task_id}")
            raise
        return {"task_id": task_id, "instance_id": result.instance_id, "instance_status": result.status}

    def _parsed_form(self, session, definition_id: int, name: str | None) -> dict | None:
        """A task's form, parsed once per definition (a deployed definition never changes)."""
        if not name:
            return None
        key = (definition_id, name)
        if key not in self._forms:
            cached = self.engine.spec_of(session, definition_id)
            raw = cached.forms.get(name) or cached.forms.get(f"forms/{Path(name).name}")
            self._forms[key] = json.loads(raw) if raw else None
        return self._forms[key]

    # ------------------------------------------------------------ cases and instances
    def get_case(self, principal: Principal, reference: str, history_limit: int = 500) -> dict:
        with self.db.write() as session:
            case = self._visible_case(session, principal, reference)
            instances = session.scalars(select(Instance).where(Instance.business_key == reference)
                                        .order_by(Instance.id)).all()
            tasks = session.scalars(select(HumanTask).where(HumanTask.business_key == reference,
                                                            HumanTask.state == "open")
                                    .order_by(HumanTask.created_at)).all()
            history = session.scalars(select(HistoryEvent).where(HistoryEvent.business_key == reference)
                                      .order_by(HistoryEvent.id).limit(history_limit)).all()
            communications = session.scalars(select(Communication).where(Communication.case_reference == reference)
                                             .order_by(Communication.id)).all()
            self._log_access(session, principal, reference, "read_case", f"case/{reference}")
            return dict(
                reference=case.reference,
                child={"given_name": case.child_given_name, "family_name": case.child_family_name,
                       "birth_date": case.child_birth_date},
                family=[{"relation": m.relation, "given_name": m.given_name, "family_name": m.family_name}
                        for m in case.family],
                municipality=security.unit_name(case.municipality), comarca=security.unit_name(case.comarca),
                section=security.unit_name(case.section), status=case.status, legal_status=case.legal_status,
                severity=case.severity, created_at=case.created_at,
                referents=[{"role": r.role, "username": r.username, "since": r.since} for r in case.referents],
                instances=[self._instance_summary(session, i) for i in instances],
                open_tasks=[self._task_summary(t) for t in tasks],
                history=[_history_item(h) for h in history],
                communications=[{"recipient": c.recipient, "subject": c.subject, "sent_at": c.sent_at}
                                for c in communications],
            )

    def _instance_summary(self, session, instance: Instance) -> dict:
        definition = session.get(Definition, instance.definition_id)
        return dict(id=instance.id, process_key=instance.process_key, name=definition.name,
                    version=definition.version, status=instance.status, started_at=instance.started_at,
                    ended_at=instance.ended_at, active_elements=instance.active_elements or [],
                    parent_instance_id=instance.parent_instance_id)

    def get_instance(self, principal: Principal, instance_id: int) -> dict:
        _require_db_id(instance_id, "instance")
        with self.db.write() as session:
            instance = session.get(Instance, instance_id)
            if instance is None:
                raise NotFound("instance not found")
            try:
                case = self._case_for_process_work(session, principal, instance.business_key)
            except NotFound:
                # The same answer as for an id that does not exist: no case reference, no existence.
                raise NotFound("instance not found") from None
            detail = self._instance_summary(session, instance)
            # Analysts open any instance to mend diagrams; the data in it is the case's, for those who need it.
            variables = self.engine.instance_data(session, instance)
            redacted = not self._needs_to_know(session, principal, case)
            detail.update(
                case_reference=instance.business_key,
                completed_elements=instance.completed_elements or [],
                taken_flows=instance.taken_flows or [],
                history=[_history_item(h, redacted) for h in session.scalars(
                    select(HistoryEvent).where(HistoryEvent.instance_id == instance_id).order_by(HistoryEvent.id))],
                variables=_redacted(variables) if redacted else variables,
                variables_redacted=redacted,
                version_counter=instance.version,
                timers=[{"id": t.id, "element_id": t.element_id, "due_at": t.due_at, "status": t.status}
                        for t in session.scalars(select(Timer).where(Timer.instance_id == instance_id))],
                messages=[{"name": m.name, "element_id": m.element_id} for m in session.scalars(
                    select(MessageSubscription).where(MessageSubscription.instance_id == instance_id))],
                incidents=[{"id": i.id, "element_id": i.element_id, "error_type": i.error_type,
                            "message": i.message, "status": i.status, "attempts": i.attempts,
                            "created_at": i.created_at}
                           for i in session.scalars(select(Incident).where(Incident.instance_id == instance_id)
                                                    .order_by(Incident.id))],
            )
            self._log_access(session, principal, instance.business_key, "read_instance", f"instance/{instance_id}")
        return detail

    def start_instance(self, principal: Principal, process_key: str, case_reference: str, data: dict) -> dict:
        with self.db.write() as session:
            case = self._case_for_process_work(session, principal, case_reference)
            if not (principal.supervises(case) or principal.has_role("analyst")):
                raise Forbidden("only supervisors of the case's territory and analysts may start a pathway")
            definition = versions.startable_definition(self.engine, session, process_key)
            instance = self.engine.create_instance(session, definition, case_reference, _plain_data(data),
                                                   principal.username)
            instance_id = instance.id
        incident_id = None
        try:
            self.engine.advance(instance_id, principal.username)
        except IncidentOpened as err:
            incident_id = err.incident_id
        detail = self.get_instance(principal, instance_id)
        detail["incident_id"] = incident_id
        return detail

    def send_message(self, principal: Principal, name: str, case_reference: str, payload: dict) -> dict:
        if principal.only_notifier:
            raise Forbidden("notifiers cannot send messages to cases")
        with self.db.write() as session:
            self._visible_case(session, principal, case_reference)
            self._log_access(session, principal, case_reference, "send_message", f"message/{name}")
        instances = self.engine.deliver_message(name, case_reference, _plain_data(payload), principal.username)
        return {"name": name, "case_reference": case_reference, "instance_ids": instances}

    # ------------------------------------------------------------ legal clocks
    def case_clocks(self, principal: Principal, reference: str) -> list[dict]:
        with self.db.write() as session:
            self._visible_case(session, principal, reference)
            runs = session.scalars(select(ClockRun).where(ClockRun.case_reference == reference)
                                   .order_by(ClockRun.started_at, ClockRun.id)).all()
            self._log_access(session, principal, reference, "read_clocks", f"case/{reference}/clocks")
            now = clock.now()
            return [_clock_view(r, now) for r in runs]

    def scope_clocks(self, principal: Principal, status: str | None = None, page: int = 1,
                     per_page: int = 50) -> Page:
        """Running clocks of every case the supervisor oversees, soonest due first."""
        scopes = []
        for grant in principal.grants:
            role = ROLES.get(grant.role)
            if role is None or not role.supervisor:
                continue
            column = {MUNICIPALITY: Case.municipality, COMARCA: Case.comarca, SECTION: Case.section}.get(role.level)
            if column is not None:
                scopes.append(column == grant.unit)
        if not scopes:
            raise Forbidden("only supervisors see the legal clocks of their territory")
        now = clock.now()
        query = (select(ClockRun).join(Case, Case.reference == ClockRun.case_reference)
                 .where(or_(*scopes), ClockRun.stopped_at.is_(None)))
        deadlines = [c.id for c in clocks.CATALOGUE.values() if not c.minimum]
        if status == "breached":
            query = query.where(ClockRun.due_at <= now, ClockRun.clock_id.in_(deadlines))
        elif status == "at_risk":
            query = query.where(ClockRun.at_risk_at <= now, ClockRun.due_at > now, ClockRun.clock_id.in_(deadlines))
        elif status == "on_time":
            query = query.where(or_(ClockRun.at_risk_at > now, ~ClockRun.clock_id.in_(deadlines)))
        with self.db.write() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(ClockRun.due_at, ClockRun.id)
                                   .offset((page - 1) * per_page).limit(per_page)).all()
            self._log_listing(session, principal, [r.case_reference for r in rows], "list_clocks", "clocks")
            return Page([_clock_view(r, now) for r in rows], total, page, per_page)

    # ------------------------------------------------------------ supervision (workflows/supervision.py)
    def supervision_overview(self, principal: Principal, process_key: str, version: int | None = None,
                             territory: TerritoryFilter = TerritoryFilter()) -> dict:
        return self.supervision.overview(principal, process_key, version, territory)

    def supervised_instances(self, principal: Principal, process_key: str, element: str | None = None,
                             version: int | None = None, incident: bool | None = None,
                             overdue: bool | None = None, territory: TerritoryFilter = TerritoryFilter(),
                             page: int = 1, per_page: int = 50) -> Page:
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        items, total = self.supervision.instances(principal, process_key, element, version, incident, overdue,
                                                  territory, page, per_page)
        return Page(items, total, page, per_page)

    def workload(self, principal: Principal, territory: TerritoryFilter = TerritoryFilter()) -> dict:
        return self.supervision.workload(principal, territory)

    # ------------------------------------------------------------ access log
    def access_log(self, principal: Principal, case_reference: str | None = None, username: str | None = None,
                   since: datetime | None = None, until: datetime | None = None, page: int = 1,
                   per_page: int = 50) -> Page:
        """Auditors: who read or changed which case, oldest first; `since` inclusive, `until` exclusive.

        Reading the log is itself logged, so the auditors are audited too."""
        if not principal.has_role("auditor"):
            raise Forbidden("only auditors read the access log")
        if since is not None and until is not None and until < since:
            raise Invalid({"until": ["must not be before since"]})
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        query = select(AccessLog)
        if case_reference:
            query = query.where(AccessLog.case_reference == case_reference)
        if username:
            query = query.where(AccessLog.username == username)
        if since is not None:
            query = query.where(AccessLog.at >= since)
        if until is not None:
            query = query.where(AccessLog.at < until)
        with self.db.write() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(query.order_by(AccessLog.at, AccessLog.id)
                                   .offset((page - 1) * per_page).limit(per_page)).all()
            items = [dict(id=r.id, at=r.at, username=r.username, case_reference=r.case_reference, action=r.action,
                          resource=r.resource) for r in rows]
            resource = "access-log" + (f"?user={username}" if username else "")
            self._log_access(session, principal, case_reference or None, "read_access_log", resource[:200])
        return Page(items, total, page, per_page)

    def escalate_breached_clocks(self, limit: int = 100) -> int:
        """Open a supervisor task for every running clock past its due time, once; write history."""
        now = clock.now()
        deadlines = [c.id for c in clocks.CATALOGUE.values() if not c.minimum]
        with self.db.read() as session:
            ids = session.scalars(select(ClockRun.id).where(ClockRun.stopped_at.is_(None), ClockRun.due_at <= now,
                                                            ClockRun.escalated_at.is_(None),
                                                            ClockRun.clock_id.in_(deadlines))
                                  .order_by(ClockRun.due_at).limit(limit)).all()
        opened = 0
        for run_id in ids:
            instance_id = self._open_escalation(run_id, now)
            if instance_id is None:
                continue
            opened += 1
            try:
                self.engine.advance(instance_id, "legal-clocks")
            except IncidentOpened:
                pass  # the incident is on the escalation instance; supervisors see it
        return opened

    def _open_escalation(self, run_id: int, now: datetime) -> int | None:
        with self.db.write() as session:
            marked = session.execute(update(ClockRun).where(ClockRun.id == run_id, ClockRun.escalated_at.is_(None))
                                     .values(escalated_at=now))
            if marked.rowcount != 1:
                return None  # another worker escalated it
            run = session.get(ClockRun, run_id)
            legal = clocks.CATALOGUE.get(run.clock_id)
            definition = self.engine.latest_definition(session, ESCALATION_PATHWAY)
            self.engine.record_history(session, run.case_reference, "clock_breached", actor="legal-clocks",
                                       instance_id=run.instance_id, element_id=run.element_id,
                                       detail={"clock_id": run.clock_id, "due_at": run.due_at.isoformat(),
                                               "article": legal.article if legal else None})
            if definition is None or legal is None or not legal.escalate:
                return None
            instance = self.engine.create_instance(
                session, definition, run.case_reference,
                {"nivell": legal.supervisor_level, "termini": run.clock_id, "article": legal.article,
                 "venciment": run.due_at.isoformat()}, "legal-clocks", parent_instance_id=run.instance_id)
            return instance.id


def _case_facts_errors(municipality: str, child: dict) -> tuple[object, dict[str, list[str]]]:
    """The municipality's unit, and what is wrong with the facts a new case is opened with."""
    unit = find_unit(municipality)
    errors: dict[str, list[str]] = {}
    if unit is None or unit.kind != "municipality":
        errors["municipality"] = [f"'{municipality}' is not one of the 53 municipalities of Mallorca"]
    birth = child.get("birth_date")
    if isinstance(birth, date) and birth > clock.now().date():
        errors["child.birth_date"] = ["birth date is in the future"]
    return unit, errors


def _with_overdue(summary: dict, now: datetime) -> dict:
    summary["overdue"] = bool(summary["due_at"] and summary["state"] == "open" and summary["due_at"] < now)
    return summary


def _clock_view(run: ClockRun, now: datetime) -> dict:
    clock = clocks.CATALOGUE.get(run.clock_id)
    return {"id": run.id, "clock_id": run.clock_id, "case_reference": run.case_reference,
            "label": clock.label if clock else run.clock_id, "article": clock.article if clock else None,
            "rule": clock.rule.describe() if clock else None, "minimum": bool(clock and clock.minimum),
            "started_at": run.started_at,
            "due_at": run.due_at, "at_risk_at": run.at_risk_at, "stopped_at": run.stopped_at,
            "status": clocks.status(clock, now, run.due_at, run.at_risk_at, run.stopped_at),
            "escalated_at": run.escalated_at, "instance_id": run.instance_id, "element_id": run.element_id}


def _require_db_id(value: int, what: str) -> None:
    """Ids beyond a 32-bit column cannot exist; asking for one must be a 404, not a database error."""
    if not 0 < value < 2**31:
        raise NotFound(f"{what} not found")


def _with_unchecked_boxes(form: dict, cleaned: dict) -> dict:
    """An unticked checkbox is False, as form-js submits it, so diagrams can rely on the key."""
    for field in form_fields(form):
        if field["type"] == "checkbox" and "." not in field.get("path", field["key"]):
            cleaned.setdefault(field["key"], False)
    return cleaned


# History details that people write in their own words (an act's reason) and so may name the family.
_FREE_TEXT_DETAILS = ("reason",)


def _history_item(h: HistoryEvent, redacted: bool = False) -> dict:
    detail = h.detail
    if redacted and any(key in (detail or {}) for key in _FREE_TEXT_DETAILS):
        detail = {key: REDACTED if key in _FREE_TEXT_DETAILS else value for key, value in detail.items()}
    return dict(id=h.id, at=h.at, actor=h.actor, event=h.event, element_id=h.element_id,
                instance_id=h.instance_id, detail=detail)


REDACTED = "[redactat]"


def _redacted(data):
    """The shape of case data without its content: keys kept, every value (nested ones too) a marker."""
    if isinstance(data, dict):
        return {key: _redacted(value) for key, value in data.items()}
    return REDACTED


def _plain_data(data) -> dict:
    """Data for a task without a form, or start data: a small JSON object."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Invalid({"data": ["must be a JSON object"]})
    if len(json.dumps(data, default=str)) > 64 * 1024:
        raise Invalid({"data": ["larger than 64 KiB"]})
    bad = [k for k in data if not isinstance(k, str) or not k or k.startswith("_") or not k.isidentifier()]
    if bad:
        raise Invalid({str(k): ["field names must be identifiers not starting with '_'"] for k in bad})
    return data


def _override_reason(text: str | None) -> str | None:
    """Why a deploy goes ahead over failing scenarios: kept with the verdict, so it must say something."""
    reason = (text or "").strip()
    if len(reason) > MAX_OVERRIDE_REASON:
        raise Invalid({"override_reason": [f"at most {MAX_OVERRIDE_REASON} characters"]})
    return reason or None


def _required_reason(text: str | None) -> str:
    """Why an analyst retires a version or migrates instances: recorded, so it must say something."""
    reason = (text or "").strip()
    if not reason:
        raise Invalid({"reason": ["say why: it is recorded"]})
    if len(reason) > MAX_OVERRIDE_REASON:
        raise Invalid({"reason": [f"at most {MAX_OVERRIDE_REASON} characters"]})
    return reason


def _version_view(definition: Definition, running: int, scenarios: dict | None) -> dict:
    return dict(id=definition.id, process_key=definition.process_key, version=definition.version,
                name=definition.name, status=definition.status, content_hash=definition.content_hash,
                deployed_at=definition.deployed_at, deployed_by=definition.deployed_by,
                files=[f.name for f in definition.files], running_instances=running, scenarios=scenarios,
                retired_at=definition.retired_at, retired_by=definition.retired_by,
                retire_reason=definition.retire_reason)


def _verdict_view(verdict) -> dict | None:
    """A verdict (scenarios.Verdict, or a ScenarioVerdict row) as the API shows it."""
    if verdict is None:
        return None
    view = {"passed": verdict.passed, "failed": verdict.failed, "failures": list(verdict.failures),
            "override_reason": verdict.override_reason}
    for key in ("decided_by", "decided_at"):
        if hasattr(verdict, key):
            view[key] = getattr(verdict, key)
    return view


def _verdicts_of(session, definitions) -> dict[tuple[str, str], dict]:
    """(process key, content hash) → the latest scenario verdict recorded for that content."""
    hashes = {d.content_hash for d in definitions}
    if not hashes:
        return {}
    rows = session.scalars(select(ScenarioVerdict).where(ScenarioVerdict.content_hash.in_(hashes))
                           .order_by(ScenarioVerdict.id))
    return {(v.process_key, v.content_hash): _verdict_view(v) for v in rows}


def _lint_report(findings: list) -> dict:
    """Modelling-rule findings as the API shows them; clean means no finding of severity error."""
    return {"lint": [f.as_dict() for f in findings], "lint_clean": not lint_errors(findings)}
