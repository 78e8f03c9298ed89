"""The domain's answers to the engine: lanes → roles, routing, service tasks, hand-offs."""
from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import lazyload

from engine import clock
from engine.hooks import EngineHooks, Routing

from . import clocks
from .forms import FormDefinitionError, parse_form
from .models import Case, CaseReferent, ClockRun, Communication, Membership, User
from .pathways import HANDOFFS, LEGAL_STATUSES, OWNED_PROCESSES, SEVERITIES
from .roles import ROLES, role_for_lane
from .security import scope_unit

# Roles whose tasks go to a body or a supervisor rather than a continuing professional.
_NO_CONTINUITY = {"commission_risk", "commission_guardianship", "sscb_coordinator", "imas_section_head"}


class DomainHooks(EngineHooks):
    def resolve_lane(self, lane_name: str) -> str | None:
        return role_for_lane(lane_name)

    def check_form(self, name: str, content: bytes) -> None:
        try:
            parse_form(content, name)
        except FormDefinitionError as err:
            raise ValueError(str(err)) from None

    def property_problems(self, properties: dict) -> list[str]:
        unknown = [c for key in clocks.CLOCK_PROPERTIES
                   for c in clocks.clock_ids(properties.get(key)) if c not in clocks.CATALOGUE]
        problems = [f"unknown legal clock '{c}' (see workflows/clocks.py)" for c in unknown]
        status = properties.get("case_legal_status")
        if status and status not in LEGAL_STATUSES:
            problems.append(f"unknown case_legal_status '{status}'; one of: {', '.join(LEGAL_STATUSES)}")
        return problems

    def route_task(self, session, business_key: str, role: str | None, element) -> Routing:
        case = case_facts(session, business_key)
        if case is None or role is None:
            return Routing(role=role, org_unit=None)
        unit = scope_unit(role, case)
        return Routing(role=role, org_unit=unit, assignee=self._referent(session, case, role, unit))

    def _referent(self, session, case, role: str, unit: str | None) -> str | None:
        """Continuity of the professional: the referent gets the task if they still hold the role there."""
        referent = _referents(session, case).get(role)
        if referent is None:
            return None
        units = _referent_units(session, case).get(role)
        if units is None:  # a referent written in this transaction: their memberships were not read
            still_there = session.connection().scalar(_STILL_HOLDS_ROLE,
                                                      {"username": referent, "role": role, "unit": unit})
            return referent if still_there else None
        return referent if unit in units else None

    def call_service(self, session, instance, operation: str, params: dict):
        if operation != "record_communication":
            raise ValueError(f"unknown service operation '{operation}'")
        recipient = str(params.get("recipient") or "").strip()
        subject = str(params.get("subject") or "").strip()
        if not recipient or not subject:
            raise ValueError("record_communication needs a recipient and a subject")
        sent_at = clock.now()
        session.add(Communication(case_reference=instance.business_key, instance_id=instance.id,
                                  recipient=recipient[:200], subject=subject[:500], sent_at=sent_at))
        return {"recipient": recipient[:200], "sent_at": sent_at.isoformat()}

    def on_task_completed(self, session, human_task, actor: str | None) -> None:
        role = human_task.role
        if not actor or role not in ROLES or role in _NO_CONTINUITY:
            return
        case = case_facts(session, human_task.business_key)
        if case is None:
            return
        referents = _referents(session, case)
        if role in referents:
            return
        # A step on another pathway of the case may have committed a referent for this role first:
        # theirs stands, and this one is not written.
        # RETURNING tells whether the row went in: psycopg reports no rowcount for an INSERT.
        added = session.execute(_insert_ignoring_duplicates(session, CaseReferent).values(
            case_id=case.id, role=role, username=actor, since=clock.now()).returning(CaseReferent.id)).first()
        if added is not None:
            referents[role] = actor
        else:
            session.info.get("camins_referents", {}).pop(case.id, None)

    def on_message_received(self, session, instance, name: str, payload: dict) -> None:
        # A hand-off sent from outside (POST /api/messages) moves the case as one thrown by a pathway.
        self.on_message_thrown(session, instance, name, payload)

    def on_message_thrown(self, session, instance, name: str, payload: dict) -> None:
        case = _case(session, instance.business_key)
        if case is None or name not in HANDOFFS:
            return
        status, legal_status = HANDOFFS[name]
        case.status = status
        if legal_status:
            case.legal_status = legal_status
        severity = payload.get("gravetat") if isinstance(payload, dict) else None
        if severity in SEVERITIES:
            case.severity = severity


    def owned_processes(self) -> set[str]:
        return set(OWNED_PROCESSES)

    def start_data(self, session, business_key: str) -> dict:
        case = case_facts(session, business_key)
        if case is None or case.child_birth_date is None:
            return {}
        # Timers that depend on age (reviews, 16th and 18th birthdays) read it from here.
        return {"data_naixement": case.child_birth_date.isoformat()}

    def on_elements(self, session, instance, entered: list, completed: list, now) -> None:
        """Start and stop the legal clocks the diagram attaches to these elements."""
        self._set_legal_status(session, instance, completed)

        def ids(element, key):
            return clocks.clock_ids(element.properties.get(key))

        if not any(ids(e, k) for e in [*entered, *completed] for k in clocks.CLOCK_PROPERTIES):
            return
        case = case_facts(session, instance.business_key)
        if case is None:
            return
        entered_now = {e.element_id for e in entered}
        completed_now = {e.element_id for e in completed}
        # In the order things happened: an element entered and completed in this step (a service
        # task, an event) starts its clock, then stops clocks, then starts the ones that run "after" it.
        for element in completed:
            if element.element_id in entered_now:
                for clock_id in ids(element, "clock_start"):
                    self._start_clock(session, case, instance, element.element_id, clock_id, now)
            for clock_id in ids(element, "clock_stop"):
                for run in session.scalars(select(ClockRun).where(ClockRun.case_reference == case.reference,
                                                                  ClockRun.clock_id == clock_id,
                                                                  ClockRun.stopped_at.is_(None))):
                    run.stopped_at, run.stopped_by = now, element.element_id
                session.flush()
            for clock_id in ids(element, "clock_start_after"):
                self._start_clock(session, case, instance, element.element_id, clock_id, now)
        # Elements that are now waiting (user tasks, timers, messages) start their clocks.
        for element in entered:
            if element.element_id not in completed_now:
                for clock_id in ids(element, "clock_start"):
                    self._start_clock(session, case, instance, element.element_id, clock_id, now)

    @staticmethod
    def _set_legal_status(session, instance, completed: list) -> None:
        """An element with `case_legal_status` sets it when it completes (e.g. tutela on a declaration)."""
        statuses = [e.properties["case_legal_status"] for e in completed if e.properties.get("case_legal_status")]
        if statuses:
            case = _case(session, instance.business_key)
            if case is not None:
                case.legal_status = statuses[-1]

    @staticmethod
    def _start_clock(session, case, instance, element_id: str, clock_id: str, now) -> None:
        clock = clocks.CATALOGUE.get(clock_id)
        running = session.scalar(select(ClockRun.id).where(ClockRun.case_reference == case.reference,
                                                           ClockRun.clock_id == clock_id,
                                                           ClockRun.stopped_at.is_(None)))
        if clock is None or running is not None:
            return
        due = clocks.due_at(clock, now, case.child_birth_date)
        session.add(ClockRun(case_reference=case.reference, instance_id=instance.id, clock_id=clock_id,
                             element_id=element_id, started_at=now, due_at=due,
                             at_risk_at=clocks.at_risk_at(clock, now, due)))
        session.flush()


def _insert_ignoring_duplicates(session, model):
    """INSERT … ON CONFLICT DO NOTHING: a savepoint around a plain INSERT costs two more statements."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return insert(model).on_conflict_do_nothing()


def _referents(session, case) -> dict[str, str]:
    """Role → the case's referent professional, read with the case's facts once per transaction."""
    cache = session.info.setdefault("camins_referents", {})
    if case.id not in cache:
        cache[case.id] = dict(session.connection().execute(_REFERENTS, {"case_id": case.id}).all())
    return cache[case.id]


# What the hooks read of a case, with its referents in the same query: none of them needs the child's
# name or the family. Built once; a step reads the case on every completion.
_CASES = Case.__table__
_REFERENT_ROWS = CaseReferent.__table__
_USERS = User.__table__
_MEMBERSHIPS = Membership.__table__
# One row per (referent, unit where that referent still holds the referent role): routing a task to
# the referent needs to know they are still there, and asking separately cost a query per step.
_CASE_FACTS = (
    select(_CASES.c.id, _CASES.c.reference, _CASES.c.municipality, _CASES.c.comarca, _CASES.c.section,
           _CASES.c.child_birth_date, _REFERENT_ROWS.c.role.label("referent_role"),
           _REFERENT_ROWS.c.username.label("referent"), _MEMBERSHIPS.c.org_unit.label("referent_unit"))
    .select_from(_CASES.outerjoin(_REFERENT_ROWS, _REFERENT_ROWS.c.case_id == _CASES.c.id)
                 .outerjoin(_USERS, (_USERS.c.username == _REFERENT_ROWS.c.username) & _USERS.c.active.is_(True))
                 .outerjoin(_MEMBERSHIPS, (_MEMBERSHIPS.c.user_id == _USERS.c.id)
                            & (_MEMBERSHIPS.c.role == _REFERENT_ROWS.c.role)))
    .where(_CASES.c.reference == bindparam("reference"))
)
_REFERENTS = select(_REFERENT_ROWS.c.role, _REFERENT_ROWS.c.username).where(
    _REFERENT_ROWS.c.case_id == bindparam("case_id"))
_STILL_HOLDS_ROLE = (
    select(_MEMBERSHIPS.c.id)
    .select_from(_MEMBERSHIPS.join(_USERS))
    .where(_USERS.c.username == bindparam("username"), _USERS.c.active.is_(True),
           _MEMBERSHIPS.c.role == bindparam("role"), _MEMBERSHIPS.c.org_unit == bindparam("unit"))
    .limit(1)
)


def case_facts(session, reference: str):
    """The case of a step as a row of `_CASE_FACTS`, read once per transaction (its referents too)."""
    facts = session.info.setdefault("camins_case_facts", {})
    if reference not in facts:
        if session.new:
            session.flush()  # a case created in this transaction (a notification) is not written yet
        rows = session.connection().execute(_CASE_FACTS, {"reference": reference}).all()
        facts[reference] = rows[0] if rows else None
        if rows:
            session.info.setdefault("camins_referents", {})[rows[0].id] = {
                row.referent_role: row.referent for row in rows if row.referent_role is not None}
            units: dict[str, set[str]] = {}
            for row in rows:
                if row.referent_role is not None:
                    units.setdefault(row.referent_role, set())
                    if row.referent_unit is not None:
                        units[row.referent_role].add(row.referent_unit)
            session.info.setdefault(_REFERENT_UNITS, {})[rows[0].id] = units
    return facts[reference]


_REFERENT_UNITS = "camins_referent_units"


def _referent_units(session, case) -> dict[str, set[str]]:
    """Role → the units where the case's referent for it holds that role now (read with the case)."""
    return session.info.get(_REFERENT_UNITS, {}).get(case.id, {})


def _case(session, reference: str) -> Case | None:
    """The case of a step, loaded once per transaction and without its family and referents: a step
    asks for it from several hooks, and none of them needs the relations."""
    cases = session.info.setdefault("camins_cases", {})
    if reference not in cases:
        cases[reference] = session.scalar(select(Case).where(Case.reference == reference)
                                          .options(lazyload(Case.family), lazyload(Case.referents)))
    return cases[reference]
