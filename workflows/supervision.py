"""Supervisors' read-only views: where the cases of a territory stand in a pathway, and who carries the work.

Everything here is counted in SQL over the projections (instance, human_task, incident, legal_clock),
joined to the case on business key = reference for its territory: no list deserializes a workflow.

Scope: a supervisor sees the cases they supervise (an SSCB coordinator their municipality, an IMAS
section head their section; `Principal.supervises`). The territory filters narrow that scope and can
never widen it: a filter outside it gives an empty answer, not other data. Analysts may read the
overview of any territory, because it holds counts per diagram element and no case reference; the
instance list and the workload name cases and people, so they are for supervisors only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, func, or_, select, true
from sqlalchemy import case as when

from engine import clock
from engine.errors import Forbidden, Invalid, NotFound
from engine.models import Definition, HumanTask, Incident, Instance

from . import clocks
from .models import Case, ClockRun
from .orgunits import UNITS, find_unit
from .roles import COMARCA, MUNICIPALITY, ROLES, SECTION
from .security import Principal

# Not ended: a suspended instance (a supervisor's act) still holds its tokens where it stopped.
RUNNING = ("created", "running", "suspended")
_SCOPE_COLUMN = {MUNICIPALITY: Case.municipality, COMARCA: Case.comarca, SECTION: Case.section}
_FILTER_KIND = {"municipality": "municipality", "comarca": "comarca", "section": "section"}


@dataclass(frozen=True)
class TerritoryFilter:
    """What the caller asked to narrow to, by unit name or code ('Manacor', 'raiguer', 'IMAS Llevant')."""

    municipality: str | None = None
    comarca: str | None = None
    section: str | None = None

    def conditions(self) -> list:
        """SQL conditions on the case; Invalid naming each filter that is not a unit of its kind."""
        conditions, errors = [], {}
        for name, kind in _FILTER_KIND.items():
            value = getattr(self, name)
            if value is None:
                continue
            unit = find_unit(value)
            if unit is None or unit.kind != kind:
                errors[name] = [f"'{value}' is not a {kind} of Mallorca"]
                continue
            conditions.append(getattr(Case, name) == unit.code)
        if errors:
            raise Invalid(errors)
        return conditions


def supervised_scope(principal: Principal):
    """The cases the principal supervises, as a condition on the case; None if they supervise none."""
    scopes = [_SCOPE_COLUMN[ROLES[g.role].level] == g.unit for g in principal.grants
              if g.role in ROLES and ROLES[g.role].supervisor and ROLES[g.role].level in _SCOPE_COLUMN]
    return or_(*scopes) if scopes else None


def _active_elements(dialect: str):
    """The element ids of `instance.active_elements` (a JSON list) as rows of a table-valued function,
    correlated to the instance of the enclosing query."""
    if dialect == "postgresql":
        return func.json_array_elements_text(Instance.active_elements).table_valued("value").render_derived()
    return func.json_each(Instance.active_elements).table_valued("value")


def _overdue(now: datetime):
    return and_(HumanTask.due_at.is_not(None), HumanTask.due_at < now)


def _count_if(condition):
    return func.coalesce(func.sum(when((condition, 1), else_=0)), 0)


class SupervisorViews:
    """The read-only views of supervision; `log_listing(session, principal, references, action, resource)`
    writes the access-log rows of a list that shows cases."""

    def __init__(self, db, engine, log_listing: Callable):
        self.db = db
        self.engine = engine
        self._log_listing = log_listing

    # ------------------------------------------------------------ scope
    def _scope(self, principal: Principal, analysts: bool = False):
        """The cases the view may count; with `analysts`, every case for an analyst (counts, no case named)."""
        if analysts and principal.has_role("analyst"):
            return true()
        scope = supervised_scope(principal)
        if scope is not None:
            return scope
        who = "supervisors and analysts" if analysts else "supervisors"
        raise Forbidden(f"only {who} see this view (SSCB coordinators for their municipality, IMAS section heads "
                        "for their section)")

    def _definitions(self, session, process_key: str, version: int | None) -> list[Definition]:
        query = select(Definition).where(Definition.process_key == process_key).order_by(Definition.version)
        definitions = session.scalars(query).all()
        if not definitions:
            raise NotFound(f"no deployed process '{process_key}'")
        if version is None:
            return definitions
        chosen = [d for d in definitions if d.version == version]
        if not chosen:
            raise Invalid({"version": [f"'{process_key}' has no version {version}; deployed: "
                                       + ", ".join(str(d.version) for d in definitions)]})
        return chosen

    @staticmethod
    def _running_in(definition_ids: list[int], scope, territory: list) -> list:
        """Conditions on an instance (joined to its case): running, of these versions, in scope."""
        return [Instance.definition_id.in_(definition_ids), Instance.status.in_(RUNNING), scope, *territory]

    # ------------------------------------------------------------ overview
    def overview(self, principal: Principal, process_key: str, version: int | None = None,
                 territory: TerritoryFilter = TerritoryFilter()) -> dict:
        """Per element of a process (all its versions, or one): running instances whose token is there,
        instances with an open incident there, overdue open user tasks there; totals; and the legal
        clocks at risk or breached of the cases that have a running instance of it. Counts only."""
        scope = self._scope(principal, analysts=True)
        filters = territory.conditions()
        now = clock.now()
        with self.db.read() as session:
            definitions = self._definitions(session, process_key, version)
            running = self._running_in([d.id for d in definitions], scope, filters)
            by_case = Case.reference == Instance.business_key
            elements = _active_elements(session.get_bind().dialect.name)
            at = dict(session.execute(
                select(elements.c.value, func.count()).select_from(Instance).join(Case, by_case)
                .join(elements, true()).where(*running).group_by(elements.c.value)).all())
            failing = dict(session.execute(
                select(Incident.element_id, func.count(func.distinct(Incident.instance_id)))
                .join(Instance, Instance.id == Incident.instance_id).join(Case, by_case)
                .where(Incident.status == "open", *running).group_by(Incident.element_id)).all())
            late = dict(session.execute(
                select(HumanTask.element_id, func.count())
                .join(Instance, Instance.id == HumanTask.instance_id).join(Case, by_case)
                .where(HumanTask.state == "open", _overdue(now), *running).group_by(HumanTask.element_id)).all())
            totals = session.execute(
                select(func.count(func.distinct(Instance.id)),
                       func.count(func.distinct(when((Incident.id.is_not(None), Instance.id)))))
                .select_from(Instance).join(Case, by_case)
                .outerjoin(Incident, and_(Incident.instance_id == Instance.id, Incident.status == "open"))
                .where(*running)).one()
            concerned = select(Instance.business_key).join(Case, by_case).where(*running)
            clock_counts = self._clock_counts(session, concerned, now)
            names = {}
            for definition in definitions:
                names.update({e: info.name for e, info in self.engine.spec_of(session, definition.id).elements.items()})
        ids = sorted(set(at) | {e for e in failing if e} | set(late))
        return {
            "process_key": process_key,
            "definitions": [{"id": d.id, "version": d.version, "name": d.name, "deployed_at": d.deployed_at}
                            for d in definitions],
            "elements": [{"element_id": e, "name": names.get(e, e), "instances": at.get(e, 0),
                          "incidents": failing.get(e, 0), "overdue_tasks": late.get(e, 0)} for e in ids],
            "totals": {"instances": totals[0], "instances_with_incidents": totals[1],
                       "overdue_tasks": sum(late.values())},
            "clocks": clock_counts,
        }

    @staticmethod
    def _clock_counts(session, case_references, now: datetime) -> dict:
        """Running deadline clocks of these cases that are at risk or breached, per clock."""
        deadlines = [c.id for c in clocks.CATALOGUE.values() if not c.minimum]
        breached = ClockRun.due_at <= now
        at_risk = and_(ClockRun.at_risk_at <= now, ClockRun.due_at > now)
        rows = session.execute(
            select(ClockRun.clock_id, _count_if(at_risk), _count_if(breached))
            .where(ClockRun.stopped_at.is_(None), ClockRun.clock_id.in_(deadlines),
                   ClockRun.case_reference.in_(case_references), or_(at_risk, breached))
            .group_by(ClockRun.clock_id).order_by(ClockRun.clock_id)).all()
        by_clock = [{"clock_id": clock_id, "label": clocks.CATALOGUE[clock_id].label,
                     "article": clocks.CATALOGUE[clock_id].article, "at_risk": risk, "breached": late}
                    for clock_id, risk, late in rows]
        return {"at_risk": sum(c["at_risk"] for c in by_clock), "breached": sum(c["breached"] for c in by_clock),
                "by_clock": by_clock}

    # ------------------------------------------------------------ instances
    def instances(self, principal: Principal, process_key: str, element: str | None = None,
                  version: int | None = None, incident: bool | None = None, overdue: bool | None = None,
                  territory: TerritoryFilter = TerritoryFilter(), page: int = 1,
                  per_page: int = 50) -> tuple[list[dict], int]:
        """Running instances of a process in the supervisor's scope, oldest first, as summaries.

        `element` picks what the overview counted there: instances whose token is at it; with
        `incident=true`, those with an open incident at it; with `overdue=true`, those with an overdue
        open task at it. Without `element`, `incident` and `overdue` say whether an instance has any
        (true) or none (false). Each case shown is a read of it, written to the access log.
        Returns the page's items and the total."""
        scope = self._scope(principal)
        filters = territory.conditions()
        now = clock.now()
        open_incident = select(Incident.id).where(Incident.instance_id == Instance.id, Incident.status == "open")
        overdue_task = select(HumanTask.id).where(HumanTask.instance_id == Instance.id, HumanTask.state == "open",
                                                  _overdue(now))
        with self.db.write() as session:
            definitions = self._definitions(session, process_key, version)
            by_version = {d.id: d.version for d in definitions}
            conditions = self._running_in(list(by_version), scope, filters)
            if element is not None:
                if incident:
                    open_incident = open_incident.where(Incident.element_id == element)
                elif overdue:
                    overdue_task = overdue_task.where(HumanTask.element_id == element)
                else:
                    elements = _active_elements(session.get_bind().dialect.name)
                    conditions.append(exists(select(1).select_from(elements).where(elements.c.value == element)))
            if incident is not None:
                conditions.append(exists(open_incident) if incident else ~exists(open_incident))
            if overdue is not None:
                conditions.append(exists(overdue_task) if overdue else ~exists(overdue_task))
            query = select(Instance.id).join(Case, Case.reference == Instance.business_key).where(*conditions)
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            incidents_of = (select(func.count(Incident.id))
                            .where(Incident.instance_id == Instance.id, Incident.status == "open")
                            .scalar_subquery())
            overdue_of = (select(func.count(HumanTask.id))
                          .where(HumanTask.instance_id == Instance.id, HumanTask.state == "open", _overdue(now))
                          .scalar_subquery())
            rows = session.execute(
                select(Instance.id, Instance.business_key, Instance.definition_id, Instance.status,
                       Instance.active_elements, Instance.started_at, incidents_of, overdue_of)
                .join(Case, Case.reference == Instance.business_key).where(*conditions)
                .order_by(Instance.started_at, Instance.id).offset((page - 1) * per_page).limit(per_page)).all()
            items = [{"id": r[0], "case_reference": r[1], "process_key": process_key, "version": by_version[r[2]],
                      "status": r[3], "active_elements": list(r[4] or []), "started_at": r[5],
                      "open_incidents": r[6], "overdue_tasks": r[7]} for r in rows]
            self._log_listing(session, principal, [i["case_reference"] for i in items], "list_instances",
                              f"supervision/processes/{process_key}/instances"[:200])
        return items, total

    # ------------------------------------------------------------ workload
    def workload(self, principal: Principal, territory: TerritoryFilter = TerritoryFilter()) -> dict:
        """Open user tasks of the cases in scope: per professional (assigned to them) and per role queue
        (waiting to be claimed), with how many are overdue. Names people and queues, no case."""
        scope = self._scope(principal)
        filters = territory.conditions()
        now = clock.now()
        open_in_scope = [HumanTask.state == "open", scope, *filters]
        overdue = _overdue(now)
        with self.db.read() as session:
            people = session.execute(
                select(HumanTask.assignee, func.count(), _count_if(overdue), func.min(HumanTask.due_at))
                .join(Case, Case.reference == HumanTask.business_key)
                .where(HumanTask.assignee.is_not(None), *open_in_scope).group_by(HumanTask.assignee)).all()
            queues = session.execute(
                select(HumanTask.role, HumanTask.org_unit, func.count(), _count_if(overdue),
                       func.min(HumanTask.created_at), func.min(HumanTask.due_at))
                .join(Case, Case.reference == HumanTask.business_key)
                .where(HumanTask.assignee.is_(None), *open_in_scope)
                .group_by(HumanTask.role, HumanTask.org_unit)).all()
        professionals = [{"username": user, "open_tasks": count, "overdue_tasks": late, "oldest_due_at": due}
                         for user, count, late, due in people]
        role_queues = [{"role": role, "role_label": ROLES[role].label if role in ROLES else role,
                        "org_unit": unit, "org_unit_name": UNITS[unit].name if unit in UNITS else unit,
                        "open_tasks": count, "overdue_tasks": late, "oldest_waiting_since": waiting,
                        "oldest_due_at": due}
                       for role, unit, count, late, waiting, due in queues]
        # The most pressing first: most overdue, then most open.
        professionals.sort(key=lambda p: (-p["overdue_tasks"], -p["open_tasks"], p["username"]))
        role_queues.sort(key=lambda q: (-q["overdue_tasks"], -q["open_tasks"], q["role"] or "", q["org_unit"] or ""))
        return {"professionals": professionals, "role_queues": role_queues}

