"""The API's blueprints. Each view checks its input with a schema and calls the service."""
from __future__ import annotations

from flask import g, request
from flask.views import MethodView
from flask_smorest import Blueprint

from engine.bundle import BundleFile
from engine.errors import Invalid

from .. import schemas as s
from ..auth import authenticated, camins
from ..textguard import MESSAGE, unstorable
from .acts import acts_blp
from .documented import answers as _answers
from .supervision import supervision_blp
from .versions import migrations_blp, versions_blp

auth_blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Tokens for the API")
notifications_blp = Blueprint("notifications", __name__, url_prefix="/api/notifications",
                              description="Notifications of a child at risk")
tasks_blp = Blueprint("tasks", __name__, url_prefix="/api/tasks", description="The inbox and task actions")
cases_blp = Blueprint("cases", __name__, url_prefix="/api/cases", description="Cases (need-to-know, logged)")
instances_blp = Blueprint("instances", __name__, url_prefix="/api/instances", description="Pathway instances")
definitions_blp = Blueprint("definitions", __name__, url_prefix="/api/definitions",
                            description="Deployed pathway diagrams")
messages_blp = Blueprint("messages", __name__, url_prefix="/api/messages",
                         description="Acts of external parties, delivered to a case")
incidents_blp = Blueprint("incidents", __name__, url_prefix="/api/incidents", description="Incidents")
clocks_blp = Blueprint("clocks", __name__, url_prefix="/api/clocks",
                       description="Legal clocks of the cases a supervisor oversees")
access_log_blp = Blueprint("access_log", __name__, url_prefix="/api/access-log",
                           description="Who read or changed which case (auditors)")

BLUEPRINTS = [auth_blp, notifications_blp, tasks_blp, cases_blp, instances_blp, definitions_blp, messages_blp,
              incidents_blp, clocks_blp, access_log_blp, acts_blp, versions_blp, migrations_blp, supervision_blp]
MAX_UPLOAD_FILES = 100


def _page(page) -> dict:
    return {"items": page.items, "total": page.total, "page": page.page, "per_page": page.per_page}


@auth_blp.route("/token")
class TokenView(MethodView):
    @auth_blp.arguments(s.TokenRequest)
    @auth_blp.response(200, s.TokenResponse)
    @_answers(auth_blp, 400, 401, 413, 429)
    @auth_blp.doc(security=[])
    def post(self, body):
        """Exchange a username and password for a bearer token. Repeated failures for a username or
        from an address are answered 429 with Retry-After for a while, even with the right password."""
        token, expires_at = camins().login(body["username"], body["password"], request.remote_addr)
        return {"access_token": token, "token_type": "Bearer", "expires_at": expires_at}


@auth_blp.route("/logout")
class LogoutView(MethodView):
    @auth_blp.response(204)
    @_answers(auth_blp, 401)
    @authenticated
    def post(self):
        """Revoke the token used for this request."""
        camins().logout(g.token)


@notifications_blp.route("")
class NotificationsView(MethodView):
    @notifications_blp.arguments(s.NotificationRequest)
    @notifications_blp.response(201, s.NotificationResponse)
    @_answers(notifications_blp, 400, 401, 403, 409, 413)
    @authenticated
    def post(self, body):
        """Notify a child at risk: opens a case and starts the detection pathway."""
        return camins().submit_notification(g.principal, body["municipality"], body["child"], body["reporter"],
                                            body["description"])


@tasks_blp.route("")
class TasksView(MethodView):
    @tasks_blp.arguments(s.TaskFilterArgs, location="query")
    @tasks_blp.response(200, s.TaskPage)
    @_answers(tasks_blp, 401, 403)
    @authenticated
    def get(self, args):
        """What the caller may work on: assigned to them, or in a queue of their role and territory."""
        return _page(camins().inbox(g.principal, process_key=args.get("pathway"), case_reference=args.get("case"),
                                    due_before=args.get("due_before"), overdue=args["overdue"],
                                    mine=args["mine"], page=args["page"], per_page=args["per_page"]))


@tasks_blp.route("/<string:task_id>")
class TaskView(MethodView):
    @tasks_blp.response(200, s.TaskDetail)
    @_answers(tasks_blp, 401, 404)
    @authenticated
    def get(self, task_id):
        """One task with its form."""
        return camins().get_task(g.principal, task_id)


@tasks_blp.route("/<string:task_id>/claim")
class ClaimView(MethodView):
    @tasks_blp.response(200, s.TaskDetail)
    @_answers(tasks_blp, 401, 403, 404, 409, 422)
    @authenticated
    def post(self, task_id):
        """Take a task from the role queue."""
        return camins().claim(g.principal, task_id)


@tasks_blp.route("/<string:task_id>/unclaim")
class UnclaimView(MethodView):
    @tasks_blp.response(200, s.TaskDetail)
    @_answers(tasks_blp, 401, 404, 409)
    @authenticated
    def post(self, task_id):
        """Give a claimed task back to its queue."""
        return camins().unclaim(g.principal, task_id)


@tasks_blp.route("/<string:task_id>/complete")
class CompleteView(MethodView):
    @tasks_blp.arguments(s.CompleteRequest)
    @tasks_blp.response(200, s.CompleteResponse)
    @_answers(tasks_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, task_id):
        """Complete a task with its form data (422 names each bad field; 409 if someone was faster)."""
        return camins().complete(g.principal, task_id, body["data"])


@tasks_blp.route("/<string:task_id>/reassign")
class ReassignView(MethodView):
    @tasks_blp.arguments(s.ReassignRequest)
    @tasks_blp.response(200, s.TaskDetail)
    @_answers(tasks_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, task_id):
        """Supervisors: give the task to another candidate, or back to the queue (username null), saying
        why (kept in the case's history). Many at once: `POST /api/tasks/reassign`."""
        return camins().reassign(g.principal, task_id, body["username"], body["reason"])


@cases_blp.route("/<string:reference>")
class CaseView(MethodView):
    @cases_blp.response(200, s.CaseView)
    @_answers(cases_blp, 401, 404)
    @authenticated
    def get(self, reference):
        """A case: child, municipality, instances, open tasks, history. Out of scope answers 404."""
        return camins().get_case(g.principal, reference)


@cases_blp.route("/<string:reference>/clocks")
class CaseClocksView(MethodView):
    @cases_blp.response(200, s.ClockList)
    @_answers(cases_blp, 401, 404)
    @authenticated
    def get(self, reference):
        """Every legal clock of the case, with its article and status (on time, at risk, breached, met, late)."""
        return {"items": camins().case_clocks(g.principal, reference)}


@clocks_blp.route("")
class ScopeClocksView(MethodView):
    @clocks_blp.arguments(s.ClockFilterArgs, location="query")
    @clocks_blp.response(200, s.ClockPage)
    @_answers(clocks_blp, 401, 403)
    @authenticated
    def get(self, args):
        """Supervisors: running clocks of every case in their territory, soonest due first."""
        return _page(camins().scope_clocks(g.principal, args.get("status"), args["page"], args["per_page"]))


@access_log_blp.route("")
class AccessLogView(MethodView):
    @access_log_blp.arguments(s.AccessLogArgs, location="query")
    @access_log_blp.response(200, s.AccessLogPage)
    @_answers(access_log_blp, 401, 403)
    @authenticated
    def get(self, args):
        """Auditors: who read or changed which case, oldest first. Filters: case, user, since (inclusive),
        until (exclusive)."""
        return _page(camins().access_log(g.principal, args.get("case"), args.get("user"), args.get("since"),
                                         args.get("until"), args["page"], args["per_page"]))


@instances_blp.route("")
class InstancesView(MethodView):
    @instances_blp.arguments(s.StartInstanceRequest)
    @instances_blp.response(201, s.InstanceView)
    @_answers(instances_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body):
        """Start a pathway for a case (supervisors of its territory, analysts)."""
        return camins().start_instance(g.principal, body["process_key"], body["case_reference"], body["data"])


@instances_blp.route("/<int:instance_id>")
class InstanceView(MethodView):
    @instances_blp.response(200, s.InstanceView)
    @_answers(instances_blp, 401, 404)
    @authenticated
    def get(self, instance_id):
        """Active and completed elements, waiting timers and messages, incidents."""
        return camins().get_instance(g.principal, instance_id)


def _uploaded_bundle() -> list[BundleFile]:
    uploads = request.files.getlist("files")
    if not uploads:
        raise Invalid({"files": ["send the bundle as multipart/form-data, one 'files' part per file"]})
    if len(uploads) > MAX_UPLOAD_FILES:
        raise Invalid({"files": [f"at most {MAX_UPLOAD_FILES} files"]})
    return [BundleFile(u.filename or "unnamed", u.read()) for u in uploads]


def _override_reason() -> str | None:
    reason = request.form.get("override_reason")
    if reason is not None and unstorable(reason):
        raise Invalid({"override_reason": [MESSAGE]})
    return reason


_FILES_PART = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
               "maxItems": MAX_UPLOAD_FILES,
               "description": "the .bpmn, its .dmn files and forms/*.form; and any *.scenarios.yaml, run first"}
_BUNDLE_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {"files": _FILES_PART}, "required": ["files"]}}}}}
_DEPLOY_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "properties": {
        "files": _FILES_PART,
        "override_reason": {"type": "string", "maxLength": 2000,
                            "description": "deploy even though scenarios fail, for this reason (recorded)"}},
    "required": ["files"]}}}}}


@definitions_blp.route("")
class DefinitionsView(MethodView):
    @definitions_blp.arguments(s.PageArgs, location="query")
    @definitions_blp.response(200, s.DefinitionPage)
    @_answers(definitions_blp, 401, 403)
    @authenticated
    def get(self, args):
        """Deployed definitions, newest version first."""
        return _page(camins().list_definitions(g.principal, args["page"], args["per_page"]))

    @definitions_blp.response(201, s.DeployResponse)
    @definitions_blp.doc(**_DEPLOY_DOC)
    @_answers(definitions_blp, 401, 403, 409, 413, 422)
    @authenticated
    def post(self):
        """Deploy a bundle (analysts). Identical content keeps its version; a change makes the next one.

        Modelling-rule findings (`lint`) are listed but do not stop a deploy: validate first to gate on them.
        Scenario files sent with the bundle (`x.scenarios.yaml` beside `x.bpmn`) run first, against the
        bundle as a draft: if one fails the deploy is refused (422, each failure in `problems`) unless
        `override_reason` says why to deploy anyway; the reason is recorded and the definition shows it."""
        return camins().deploy_bundle(g.principal, _uploaded_bundle(), _override_reason())


@definitions_blp.route("/validate")
class ValidateView(MethodView):
    @definitions_blp.response(200, s.ValidateResponse)
    @definitions_blp.doc(**_BUNDLE_DOC)
    @_answers(definitions_blp, 401, 403, 413, 422)
    @authenticated
    def post(self):
        """Run every deploy check and the modelling rules on a bundle without deploying it (analysts).

        `valid` says whether it would deploy; `lint_clean` whether it also breaks no modelling rule;
        `scenarios` how the scenario files sent with it (`*.scenarios.yaml`) fared."""
        result = camins().validate_bundle(g.principal, _uploaded_bundle())
        return {"valid": True, **result}


@messages_blp.route("")
class MessagesView(MethodView):
    @messages_blp.arguments(s.MessageRequest)
    @messages_blp.response(202, s.MessageResponse)
    @_answers(messages_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body):
        """Deliver an external act (court ruling, consent, hearing) to the case's waiting pathway."""
        return camins().send_message(g.principal, body["name"], body["case_reference"], body["payload"])


@incidents_blp.route("/<int:incident_id>/retry")
class RetryView(MethodView):
    @incidents_blp.arguments(s.RetryRequest, required=False)
    @incidents_blp.response(200, s.RetryResponse)
    @_answers(incidents_blp, 400, 401, 403, 404, 409, 413)
    @authenticated
    def post(self, body, incident_id):
        """Replay the failed step of an incident (supervisors of the case, analysts). The reason, when
        given, goes to the case's history with the resolution."""
        return camins().retry_incident(g.principal, incident_id, (body or {}).get("reason"))
