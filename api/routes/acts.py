"""Supervisors' acts: suspend, resume, cancel, move a token, reassign many tasks (workflows/acts.py)."""
from __future__ import annotations

from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

from .. import schemas as s
from ..auth import authenticated, camins
from .documented import answers

acts_blp = Blueprint("acts", __name__, url_prefix="/api", description=(
    "Supervisors' acts on the cases of their territory or section, each with its reason in the case's history. "
    "Out of scope answers 404; in scope without supervising the case, 403"))


@acts_blp.route("/instances/<int:instance_id>/suspend")
class SuspendView(MethodView):
    @acts_blp.arguments(s.ActRequest)
    @acts_blp.response(200, s.ActResponse)
    @answers(acts_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, instance_id):
        """Stop a running instance where it is. Until it is resumed its tasks stay in the inboxes but cannot be
        claimed or completed (409), its timers wait, and a message sent to it is refused (409); a message
        another pathway throws to it waits in the outbox until the resume."""
        return camins().suspend_instance(g.principal, instance_id, body["reason"])


@acts_blp.route("/instances/<int:instance_id>/resume")
class ResumeView(MethodView):
    @acts_blp.arguments(s.ActRequest)
    @acts_blp.response(200, s.ActResponse)
    @answers(acts_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, instance_id):
        """Run a suspended instance again: the timers that fell due meanwhile fire now, and the messages held
        for it are delivered."""
        return camins().resume_instance(g.principal, instance_id, body["reason"])


@acts_blp.route("/instances/<int:instance_id>/cancel")
class CancelView(MethodView):
    @acts_blp.arguments(s.ActRequest)
    @acts_blp.response(200, s.ActResponse)
    @answers(acts_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, instance_id):
        """End a running, suspended or stuck instance for good, with the owned sub-pathways it started (reviews,
        escalations); its open tasks, timers and message subscriptions are closed."""
        return camins().cancel_instance(g.principal, instance_id, body["reason"])


@acts_blp.route("/instances/<int:instance_id>/move")
class MoveView(MethodView):
    @acts_blp.arguments(s.MoveRequest)
    @acts_blp.response(200, s.ActResponse)
    @answers(acts_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, instance_id):
        """Move the token: skip an open user task (`skip_task_id`), or return to an earlier user task
        (`return_to_element`), which opens again while what came after it is abandoned. 409 when the task is
        not open or the element was never completed; 422 when the element is not a user task of the pathway or
        the pathway cannot go on from the move (nothing is changed)."""
        skip = body.get("skip_task_id")
        return camins().move_token(g.principal, instance_id, body["reason"],
                                   skip_task_id=str(skip) if skip is not None else None,
                                   return_to_element=body.get("return_to_element"))


@acts_blp.route("/tasks/reassign")
class BulkReassignView(MethodView):
    @acts_blp.arguments(s.BulkReassignRequest)
    @acts_blp.response(200, s.BulkReassignResponse)
    @answers(acts_blp, 400, 401, 403, 413)
    @authenticated
    def post(self, body):
        """Supervisors: reassign up to 200 tasks to one candidate (or back to their queues, username null), each
        on its own with the same rules as one: the report says, per task, reassigned or refused and why. A task
        you may not see is reported as not found, as one that does not exist."""
        return camins().reassign_many(g.principal, body["task_ids"], body["username"], body["reason"])
