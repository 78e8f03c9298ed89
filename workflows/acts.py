"""Supervisors' acts on the instances and tasks of the cases they oversee, each with its reason.

Suspend, resume, cancel, move a token (skip a task, return to an earlier one), retry an incident,
reassign one task or many. Every act:
- is refused with 404 to whoever may not see the case (its existence does not leak), and with 403 to
  whoever sees it but does not supervise it;
- needs a reason, which goes to the case's history with who acted, and never to the application log
  (it may hold personal data);
- writes an access-log row in the act's own transaction, so a refused or failed act writes none.

Mixed into `Camins` (workflows/service.py), whose visibility rules and access log it uses.
"""
from __future__ import annotations

from sqlalchemy import select

from engine.errors import Conflict, Forbidden, Invalid, NotFound, Rejected
from engine.models import HumanTask, Incident, Instance

from . import security
from .models import Case
from .roles import MUNICIPALITY, ROLES
from .security import Principal

MAX_REASON = 2000
MAX_BULK_REASSIGN = 200


def act_reason(text: str | None) -> str:
    """Why a supervisor acts: kept in the history, so it must say something."""
    reason = (text or "").strip()
    if not reason:
        raise Invalid({"reason": ["say why: the reason is kept in the case's history"]})
    if len(reason) > MAX_REASON:
        raise Invalid({"reason": [f"at most {MAX_REASON} characters"]})
    return reason


def directs(principal: Principal, case: Case, task) -> bool:
    """A supervisor directs the work of their own administration on the cases of their territory: an SSCB
    coordinator the tasks of municipal roles, an IMAS section head the tasks of IMAS roles."""
    role = ROLES.get(task.role or "")
    if role is None:
        return False
    municipal = role.level == MUNICIPALITY
    return any(ROLES[g.role].supervisor and principal.covers(g, case) and (ROLES[g.role].level == MUNICIPALITY)
               == municipal for g in principal.grants)


def is_supervisor(principal: Principal) -> bool:
    return any(ROLES[g.role].supervisor for g in principal.grants if g.role in ROLES)


class SupervisorActs:
    """The acts; `self` is the `Camins` service."""

    # ------------------------------------------------------------ on an instance
    def suspend_instance(self, principal: Principal, instance_id: int, reason: str | None) -> dict:
        reason = act_reason(reason)
        result = self.engine.suspend(instance_id, principal.username, reason,
                                     self._instance_act_check(principal, instance_id, "suspend_instance"))
        return _act_result(result)

    def resume_instance(self, principal: Principal, instance_id: int, reason: str | None) -> dict:
        reason = act_reason(reason)
        result = self.engine.resume(instance_id, principal.username, reason,
                                    self._instance_act_check(principal, instance_id, "resume_instance"))
        return _act_result(result)

    def cancel_instance(self, principal: Principal, instance_id: int, reason: str | None) -> dict:
        reason = act_reason(reason)
        result = self.engine.cancel(instance_id, principal.username, reason,
                                    self._instance_act_check(principal, instance_id, "cancel_instance"))
        return _act_result(result)

    def move_token(self, principal: Principal, instance_id: int, reason: str | None,
                   skip_task_id: str | None = None, return_to_element: str | None = None) -> dict:
        """Skip an open user task, or return to the latest completed task of an element: exactly one."""
        reason = act_reason(reason)
        if (skip_task_id is None) == (return_to_element is None):
            raise Invalid({"_schema": ["give either skip_task_id or return_to_element"]})
        check = self._instance_act_check(principal, instance_id, "move_token")
        if skip_task_id is not None:
            result = self.engine.skip_task(instance_id, skip_task_id, principal.username, reason, check)
        else:
            result = self.engine.return_to(instance_id, return_to_element, principal.username, reason, check)
        return _act_result(result)

    def _instance_act_check(self, principal: Principal, instance_id: int, action: str):
        """The check an act runs inside its step, on the locked instance: 404 for whoever may not see the
        case, 403 for whoever sees it but does not supervise it; then the access-log row."""
        if not 0 < instance_id < 2**31:
            raise NotFound("instance not found")

        def check(session, instance) -> None:
            case = self._supervised_case(session, principal, instance.business_key, "instance not found",
                                         "only a supervisor of the case's territory may do this")
            self._log_access(session, principal, case.reference, action, f"instance/{instance_id}")

        return check

    def _supervised_case(self, session, principal: Principal, reference: str, not_found: str,
                         forbidden: str) -> Case:
        try:
            case = self._case_for_process_work(session, principal, reference)
        except NotFound:
            # The same answer as for an id that does not exist: no case reference, no existence.
            raise NotFound(not_found) from None
        if not principal.supervises(case):
            raise Forbidden(forbidden)
        return case

    # ------------------------------------------------------------ incidents
    def retry_incident(self, principal: Principal, incident_id: int, reason: str | None = None) -> dict:
        """Replay the failed step of an incident (supervisors of the case, and analysts, who fix diagrams).

        The reason is optional here, for the clients written before it existed; it goes to the history."""
        if not 0 < incident_id < 2**31:
            raise NotFound("incident not found")
        reason = act_reason(reason) if reason is not None else None

        def check(session, instance) -> None:
            case = self._incident_case(session, principal, instance.business_key)
            self._log_access(session, principal, case.reference, "retry_incident", f"incident/{incident_id}")

        with self.db.read() as session:
            # Answered before the engine says whether the incident is still open.
            incident = session.get(Incident, incident_id)
            if incident is None:
                raise NotFound("incident not found")
            self._incident_case(session, principal, session.get(Instance, incident.instance_id).business_key)
        result = self.engine.retry_incident(incident_id, principal.username, reason, check)
        return {"instance_id": result.instance_id, "instance_status": result.status}

    def _incident_case(self, session, principal: Principal, reference: str) -> Case:
        try:
            case = self._case_for_process_work(session, principal, reference)
        except NotFound:
            raise NotFound("incident not found") from None
        if not (principal.supervises(case) or principal.has_role("analyst")):
            raise Forbidden("only supervisors and analysts may retry incidents")
        return case

    # ------------------------------------------------------------ reassignment
    def reassign(self, principal: Principal, task_id: str, username: str | None, reason: str | None) -> dict:
        """Give a task to another candidate of its queue, or back to the queue (username None)."""
        reason = act_reason(reason)
        self._reassign_one(principal, task_id, username, reason)
        with self.db.read() as session:  # the act's access-log row covers this answer
            task = session.get(HumanTask, task_id)
            case = session.scalar(select(Case).where(Case.reference == task.business_key))
            return self._task_detail(session, task, case)

    def reassign_many(self, principal: Principal, task_ids: list[str], username: str | None,
                      reason: str | None) -> dict:
        """Reassign each task on its own: one refusal does not undo the others. A task the caller may not
        see is reported as not found, as one that does not exist."""
        if not is_supervisor(principal):
            raise Forbidden("only supervisors reassign tasks")
        reason = act_reason(reason)
        if len(task_ids) > MAX_BULK_REASSIGN:
            raise Invalid({"task_ids": [f"at most {MAX_BULK_REASSIGN} tasks at a time"]})
        items = []
        for task_id in dict.fromkeys(task_ids):
            try:
                self._reassign_one(principal, task_id, username, reason)
                items.append({"task_id": task_id, "outcome": "reassigned", "assignee": username})
            except NotFound:
                items.append({"task_id": task_id, "outcome": "not_found", "detail": "task not found"})
            except Invalid as err:
                detail = "; ".join(m for messages in err.errors.values() for m in messages)
                items.append({"task_id": task_id, "outcome": "refused", "detail": detail})
            except (Forbidden, Conflict, Rejected) as err:
                items.append({"task_id": task_id, "outcome": "refused", "detail": str(err)})
        reassigned = sum(1 for item in items if item["outcome"] == "reassigned")
        return {"reassigned": reassigned, "refused": len(items) - reassigned, "items": items}

    def _reassign_one(self, principal: Principal, task_id: str, username: str | None, reason: str) -> None:
        def check(session, task) -> None:
            case = session.scalar(select(Case).where(Case.reference == task.business_key))
            # Being the assignee is not enough: whoever left the task's role or territory loses it.
            seen = case is not None and (self._is_candidate(principal, task) or principal.supervises(case))
            if not seen:
                raise NotFound("task not found")
            if not directs(principal, case, task):
                raise Forbidden("only a supervisor of the case's territory may reassign, and only the tasks "
                                "of their own administration (municipal or IMAS)")
            if username is not None and username not in security.candidates(session, task.role, task.org_unit):
                raise Invalid({"username": [f"'{username}' does not hold role {task.role} in {task.org_unit}"]})
            self._log_access(session, principal, case.reference, "reassign_task", f"task/{task_id}")

        self.engine.reassign(task_id, username, principal.username, reason, check)


def _act_result(result) -> dict:
    return {"instance_id": result.instance_id, "instance_status": result.status, "version": result.version}

