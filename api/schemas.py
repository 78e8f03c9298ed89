"""Marshmallow schemas for every request and response of the API."""
from __future__ import annotations

from datetime import UTC

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

REPORTER_KINDS = ("school", "health", "police", "social_services", "citizen")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class TokenRequest(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=100))
    password = fields.String(required=True, validate=validate.Length(min=1, max=200), load_only=True)


class TokenResponse(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_at = fields.DateTime(required=True)


class ChildSchema(StrictSchema):
    given_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    family_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    birth_date = fields.Date(required=True)


class ReporterSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(REPORTER_KINDS))
    anonymous = fields.Boolean(load_default=False)
    name = fields.String(validate=validate.Length(max=200))
    organisation = fields.String(validate=validate.Length(max=200))
    phone = fields.String(validate=validate.Length(max=50))
    email = fields.Email()


class NotificationRequest(StrictSchema):
    municipality = fields.String(required=True, validate=validate.Length(min=1, max=100))
    child = fields.Nested(ChildSchema, required=True)
    reporter = fields.Nested(ReporterSchema, required=True)
    description = fields.String(required=True, validate=validate.Length(min=1, max=10000))


class NotificationResponse(Schema):
    case_reference = fields.String(required=True)
    instance_id = fields.Integer(required=True)
    incident_id = fields.Integer(allow_none=True)


class PageArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


def _in_utc_range(moment) -> None:
    """A moment the database can hold: '0001-01-01T00:00+14:00' is a valid timestamp before year 1 in UTC."""
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValidationError("out of range") from None


class TaskFilterArgs(PageArgs):
    pathway = fields.String(validate=validate.Length(max=100))
    case = fields.String(validate=validate.Length(max=30))
    due_before = fields.AwareDateTime(default_timezone=None, validate=_in_utc_range)
    overdue = fields.Boolean(load_default=False)
    mine = fields.Boolean(load_default=False)


class TaskSummary(Schema):
    id = fields.String(required=True)
    case_reference = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(allow_none=True)
    org_unit = fields.String(allow_none=True)
    assignee = fields.String(allow_none=True)
    due_at = fields.DateTime(allow_none=True)
    overdue = fields.Boolean()
    state = fields.String()
    process_key = fields.String()
    element_id = fields.String()
    instance_id = fields.Integer()
    created_at = fields.DateTime()


class PageMeta(Schema):
    total = fields.Integer(required=True)
    page = fields.Integer(required=True)
    per_page = fields.Integer(required=True)


class TaskPage(PageMeta):
    items = fields.List(fields.Nested(TaskSummary), required=True)


class ChildView(Schema):
    given_name = fields.String()
    family_name = fields.String()
    birth_date = fields.Date(allow_none=True)


class TaskDetail(TaskSummary):
    form = fields.Dict(allow_none=True)
    completed_by = fields.String(allow_none=True)
    legal_basis = fields.String(allow_none=True)
    child = fields.Nested(ChildView)
    candidates = fields.List(fields.String())
    instance_suspended = fields.Boolean(metadata={
        "description": "its instance is suspended: the task can be neither claimed nor completed until it is resumed"})


class CompleteRequest(StrictSchema):
    data = fields.Dict(keys=fields.String(), required=True)


class CompleteResponse(Schema):
    task_id = fields.String()
    instance_id = fields.Integer()
    instance_status = fields.String()


def _act_reason() -> fields.String:
    return fields.String(required=True, validate=validate.Length(min=1, max=2000), metadata={
        "description": "why (required, at most 2000 characters, blank is refused): kept in the case's history "
                       "with who acted and when, never in the application log"})


class ReassignRequest(StrictSchema):
    username = fields.String(required=True, allow_none=True, validate=validate.Length(min=1, max=100), metadata={
        "description": "a candidate of the task's queue (its role in its territory); null gives it back to the queue"})
    reason = _act_reason()


class BulkReassignRequest(ReassignRequest):
    task_ids = fields.List(fields.String(validate=validate.Length(min=1, max=100)), required=True,
                           validate=validate.Length(min=1, max=200),
                           metadata={"description": "1 to 200 task ids; each is reassigned on its own"})


class BulkReassignItem(Schema):
    task_id = fields.String(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(["reassigned", "refused", "not_found"]),
                            metadata={"description": "not_found also for a task the caller may not see"})
    assignee = fields.String(allow_none=True, metadata={"description": "who has it now (reassigned only)"})
    detail = fields.String(metadata={"description": "why it was refused"})


class BulkReassignResponse(Schema):
    reassigned = fields.Integer(required=True)
    refused = fields.Integer(required=True, metadata={"description": "refused or not found"})
    items = fields.List(fields.Nested(BulkReassignItem), required=True,
                        metadata={"description": "one per distinct task id, in the order given"})


class ActRequest(StrictSchema):
    reason = _act_reason()


class MoveRequest(ActRequest):
    skip_task_id = fields.UUID(metadata={
        "description": "an open user task of this instance, passed without its form: the pathway goes on from it"})
    return_to_element = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "the element id of a user task completed earlier in this instance: its latest completion "
                       "is undone and it opens again; the tasks, timers and messages after it are abandoned"})

    @validates_schema
    def _one_move(self, data, **_kwargs):
        if ("skip_task_id" in data) == ("return_to_element" in data):
            raise ValidationError("give either skip_task_id or return_to_element")


class ActResponse(Schema):
    instance_id = fields.Integer(required=True)
    instance_status = fields.String(required=True, metadata={
        "enum": ["running", "suspended", "completed", "cancelled"]})
    version = fields.Integer(metadata={"description": "the instance's version after the act"})


class RetryRequest(StrictSchema):
    reason = fields.String(validate=validate.Length(min=1, max=2000), metadata={
        "description": "why it is retried (optional; blank is refused): kept in the case's history"})


class HistoryItem(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    actor = fields.String(allow_none=True)
    event = fields.String()
    element_id = fields.String(allow_none=True)
    instance_id = fields.Integer(allow_none=True)
    detail = fields.Dict()


class InstanceSummary(Schema):
    id = fields.Integer()
    process_key = fields.String()
    name = fields.String()
    parent_instance_id = fields.Integer(allow_none=True, metadata={
        "description": "the instance whose hand-off message started this one: the case's journey"})
    version = fields.Integer()
    status = fields.String()
    started_at = fields.DateTime()
    ended_at = fields.DateTime(allow_none=True)
    active_elements = fields.List(fields.String())


class CaseView(Schema):
    reference = fields.String()
    child = fields.Nested(ChildView)
    family = fields.List(fields.Dict())
    municipality = fields.String()
    comarca = fields.String()
    section = fields.String()
    status = fields.String()
    legal_status = fields.String()
    severity = fields.String(allow_none=True)
    created_at = fields.DateTime()
    referents = fields.List(fields.Dict())
    instances = fields.List(fields.Nested(InstanceSummary))
    open_tasks = fields.List(fields.Nested(TaskSummary))
    history = fields.List(fields.Nested(HistoryItem))
    communications = fields.List(fields.Dict())


class TimerView(Schema):
    id = fields.String()
    element_id = fields.String()
    due_at = fields.DateTime()
    status = fields.String()


class IncidentView(Schema):
    id = fields.Integer()
    element_id = fields.String(allow_none=True)
    error_type = fields.String()
    message = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    created_at = fields.DateTime()


class InstanceView(InstanceSummary):
    case_reference = fields.String()
    completed_elements = fields.List(fields.String(), metadata={
        "description": "the completed path: every element id the instance has completed"})
    taken_flows = fields.List(fields.String(), metadata={
        "description": "the sequence flow ids the instance has crossed, for drawing its path on the diagram"})
    history = fields.List(fields.Nested(HistoryItem), metadata={
        "description": "everything that happened to this instance, oldest first: who, what, when, where"})
    variables = fields.Dict(keys=fields.String(), metadata={
        "description": "the instance's process data where its tokens are (or as it ended). Shown in full to "
                       "those who need to know the case (its supervisors, referents, candidates and "
                       "assignees); for anyone else (analysts) every value, nested ones too, is '[redactat]'"})
    variables_redacted = fields.Boolean(metadata={"description": "whether the values of `variables` are hidden"})
    version_counter = fields.Integer()
    timers = fields.List(fields.Nested(TimerView))
    messages = fields.List(fields.Dict())
    incidents = fields.List(fields.Nested(IncidentView))
    incident_id = fields.Integer(allow_none=True)


class StartInstanceRequest(StrictSchema):
    process_key = fields.String(required=True, validate=validate.Length(min=1, max=100))
    case_reference = fields.String(required=True, validate=validate.Length(min=1, max=30))
    data = fields.Dict(keys=fields.String(), load_default=dict)


class ScenarioVerdictView(Schema):
    """How the scenario files sent with a bundle fared before its deploy (or its validation)."""
    passed = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    failures = fields.List(fields.String(), metadata={"description": "file: scenario 'name': what differed"})
    override_reason = fields.String(allow_none=True,
                                    metadata={"description": "why it was deployed although scenarios failed"})
    decided_by = fields.String(allow_none=True)
    decided_at = fields.DateTime()


class DefinitionView(Schema):
    id = fields.Integer()
    process_key = fields.String()
    version = fields.Integer()
    name = fields.String()
    status = fields.String()
    content_hash = fields.String()
    deployed_at = fields.DateTime()
    deployed_by = fields.String(allow_none=True)
    files = fields.List(fields.String())
    running_instances = fields.Integer()
    scenarios = fields.Nested(ScenarioVerdictView, allow_none=True,
                              metadata={"description": "the scenarios run before this content was deployed"})


class DefinitionPage(PageMeta):
    items = fields.List(fields.Nested(DefinitionView), required=True)


class LintFinding(Schema):
    """A broken modelling rule (engine/lint.py), on the element a modeler would mark."""
    file = fields.String(required=True)
    element_id = fields.String(allow_none=True, metadata={"description": "the element or sequence flow"})
    line = fields.Integer(allow_none=True)
    rule = fields.String(required=True, metadata={"description": "e.g. no-implicit-split, label-required"})
    severity = fields.String(required=True, validate=validate.OneOf(["error", "warning"]))
    message = fields.String(required=True)


class _LintReport(Schema):
    lint = fields.List(fields.Nested(LintFinding), metadata={"description": "modelling-rule findings"})
    lint_clean = fields.Boolean(metadata={"description": "no finding of severity error"})


class DeployResponse(_LintReport):
    id = fields.Integer()
    process_key = fields.String()
    version = fields.Integer()
    created = fields.Boolean()
    scenarios = fields.Nested(ScenarioVerdictView, allow_none=True,
                              metadata={"description": "null when no scenario file came with the bundle, or when "
                                                       "its content was deployed already"})


class ValidateResponse(_LintReport):
    valid = fields.Boolean(metadata={"description": "passes every deploy check (lint findings do not count)"})
    process_key = fields.String()
    name = fields.String()
    content_hash = fields.String()
    files = fields.List(fields.String())
    scenarios = fields.Nested(ScenarioVerdictView, metadata={"description": "when scenario files came with it"})


class VersionView(DefinitionView):
    """One version of a process (analysts)."""
    status = fields.String(metadata={"description": "active, or retired: a retired version starts no new instance, "
                                                    "its running instances go on", "enum": ["active", "retired"]})
    running_instances = fields.Integer(metadata={"description": "its instances that have not completed or been "
                                                                "cancelled"})
    retired_at = fields.DateTime(allow_none=True)
    retired_by = fields.String(allow_none=True)
    retire_reason = fields.String(allow_none=True)


class VersionList(Schema):
    items = fields.List(fields.Nested(VersionView), required=True, metadata={"description": "newest first"})


class VersionDiffArgs(Schema):
    class Meta:
        unknown = EXCLUDE

    from_version = fields.Integer(required=True, data_key="from", validate=validate.Range(min=1, max=2**31 - 1),
                                  metadata={"description": "the version compared from"})
    to_version = fields.Integer(required=True, data_key="to", validate=validate.Range(min=1, max=2**31 - 1),
                                metadata={"description": "the version compared to"})


class DiffElement(Schema):
    id = fields.String(metadata={"description": "the element id in the diagram"})
    type = fields.String(metadata={"description": "SpiffWorkflow's kind of element: UserTask, ExclusiveGateway, ..."})
    name = fields.String(allow_none=True)
    lane = fields.String(allow_none=True)
    process = fields.String(metadata={"description": "the process or subprocess it belongs to"})
    changes = fields.List(fields.String(), metadata={
        "description": "changed elements only: what changed (name, lane, type, property 'form', script, "
                       "conditions of its outgoing flows, event (timer expression, message or signal), "
                       "incoming flows, outgoing flows, ...)"})


class DiffFlow(Schema):
    id = fields.String()
    source = fields.String(metadata={"description": "the element the flow leaves"})
    target = fields.String(metadata={"description": "the element the flow enters"})
    name = fields.String(allow_none=True)
    condition = fields.String(allow_none=True)
    changes = fields.List(fields.String(), metadata={"description": "changed flows only: source, target, name, "
                                                                    "condition"})


class DiffFile(Schema):
    name = fields.String()
    changes = fields.List(fields.String(), metadata={"description": "changed files only: content"})


def _diff_part(item, what: str) -> type[Schema]:
    return Schema.from_dict({
        "added": fields.List(fields.Nested(item), metadata={"description": f"{what} only the newer version has"}),
        "removed": fields.List(fields.Nested(item), metadata={"description": f"{what} only the older version has"}),
        "changed": fields.List(fields.Nested(item), metadata={"description": f"{what} in both that differ"}),
    }, name=f"Diff{item.__name__[4:]}s")


class VersionDiff(Schema):
    process_key = fields.String()
    from_version = fields.Integer()
    to_version = fields.Integer()
    elements = fields.Nested(_diff_part(DiffElement, "elements"), metadata={"description": "compared by id"})
    sequence_flows = fields.Nested(_diff_part(DiffFlow, "sequence flows"), metadata={"description": "by id"})
    files = fields.Nested(_diff_part(DiffFile, "files"), metadata={"description": "the bundle's .bpmn, .dmn and "
                                                                                 "form files, by name"})


class RetireRequest(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000),
                           metadata={"description": "why this version must start no new instance (recorded)"})


class MigrationPreviewRequest(StrictSchema):
    process_key = fields.String(required=True, validate=validate.Length(min=1, max=100))
    from_version = fields.Integer(required=True, validate=validate.Range(min=1, max=2**31 - 1),
                                  metadata={"description": "the version the instances are on"})
    to_version = fields.Integer(required=True, validate=validate.Range(min=1, max=2**31 - 1),
                                metadata={"description": "the version to move them to (older or newer)"})
    instance_ids = fields.List(fields.Integer(validate=validate.Range(min=1, max=2**31 - 1)),
                               validate=validate.Length(min=1, max=500), metadata={
                                   "description": "at most 500 instances of the process; left out, the first 500 "
                                                  "unfinished instances of from_version"})


class MigrationRequest(MigrationPreviewRequest):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000),
                           metadata={"description": "why the instances move (recorded in each one's history)"})


class MigrationOutcome(Schema):
    instance_id = fields.Integer()
    case_reference = fields.String(allow_none=True)
    status = fields.String(allow_none=True, metadata={"description": "the instance's status"})
    version = fields.Integer(allow_none=True, metadata={"description": "the version it is on after this request"})
    can_migrate = fields.Boolean(metadata={"description": "it can move (preview) or it moved (migration)"})
    migrated = fields.Boolean(metadata={"description": "it moved in this request (always false in a preview)"})
    reasons = fields.List(fields.String(), metadata={
        "description": "why it cannot move: it is over or on another version, a completed or started task changed "
                       "or was removed, it waits at a removed element, ..."})


class MigrationReport(Schema):
    process_key = fields.String()
    from_version = fields.Integer()
    to_version = fields.Integer()
    instances = fields.List(fields.Nested(MigrationOutcome))
    can_migrate = fields.Integer(metadata={"description": "how many can move (preview) or moved (migration)"})
    migrated = fields.Integer()
    refused = fields.Integer()
    unfinished_on_from_version = fields.Integer(metadata={"description": "unfinished instances still on "
                                                                         "from_version after this request"})


class MessageRequest(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    case_reference = fields.String(required=True, validate=validate.Length(min=1, max=30))
    payload = fields.Dict(keys=fields.String(), load_default=dict)


class MessageResponse(Schema):
    name = fields.String()
    case_reference = fields.String()
    instance_ids = fields.List(fields.Integer())


class RetryResponse(Schema):
    instance_id = fields.Integer()
    instance_status = fields.String()


class ClockView(Schema):
    id = fields.Integer()
    clock_id = fields.String()
    case_reference = fields.String()
    label = fields.String()
    article = fields.String(allow_none=True)
    rule = fields.String(allow_none=True)
    minimum = fields.Boolean(metadata={"description": "a minimum duration (e.g. a year of follow-up), "
                                                      "not a deadline"})
    started_at = fields.DateTime()
    due_at = fields.DateTime()
    at_risk_at = fields.DateTime()
    stopped_at = fields.DateTime(allow_none=True)
    status = fields.String(metadata={"enum": ["on_time", "at_risk", "breached", "met", "late"]})
    escalated_at = fields.DateTime(allow_none=True)
    instance_id = fields.Integer(allow_none=True)
    element_id = fields.String(allow_none=True)


class ClockList(Schema):
    items = fields.List(fields.Nested(ClockView), required=True)


class ClockPage(PageMeta):
    items = fields.List(fields.Nested(ClockView), required=True)


class ClockFilterArgs(PageArgs):
    status = fields.String(validate=validate.OneOf(["on_time", "at_risk", "breached"]))


class DeployProblem(Schema):
    file = fields.String(required=True)
    message = fields.String(required=True)
    element_id = fields.String(allow_none=True)
    line = fields.Integer(allow_none=True)


class Problem(Schema):
    """Every error answer: RFC 9457 application/problem+json (see api/errors.py)."""
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "invalid input: messages per field ('child.birth_date')"})
    problems = fields.List(fields.Nested(DeployProblem), metadata={"description": "a bundle's failed deploy checks"})
    lint = fields.List(fields.Nested(LintFinding),
                       metadata={"description": "a refused bundle's modelling-rule findings, where it could be read"})
    scenarios = fields.Nested(ScenarioVerdictView, metadata={"description": "a bundle refused for failing scenarios"})
    incident_id = fields.Integer(metadata={"description": "the incident a failed step opened"})
    instance_id = fields.Integer()
    element_id = fields.String()


class AccessLogArgs(PageArgs):
    case = fields.String(validate=validate.Length(min=1, max=30), metadata={"description": "a case reference"})
    user = fields.String(validate=validate.Length(min=1, max=100), metadata={"description": "a username"})
    since = fields.AwareDateTime(default_timezone=None, validate=_in_utc_range,
                                 metadata={"description": "from this moment (inclusive)"})
    until = fields.AwareDateTime(default_timezone=None, validate=_in_utc_range,
                                 metadata={"description": "up to this moment (exclusive)"})


class AccessLogEntry(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    username = fields.String()
    case_reference = fields.String(allow_none=True)
    action = fields.String(metadata={"description": "read_case, read_clocks, read_task, read_instance, list_tasks, "
                                                    "list_clocks, list_instances, complete_task, send_message, "
                                                    "read_access_log, preview_migration, migrate_instance"})
    resource = fields.String()


class AccessLogPage(PageMeta):
    items = fields.List(fields.Nested(AccessLogEntry), required=True)


# ------------------------------------------------------------------ supervision (read-only views)
class TerritoryArgs(Schema):
    """Filters that narrow a supervisor's scope; they never widen it (a unit outside gives nothing)."""
    class Meta:
        unknown = EXCLUDE

    municipality = fields.String(validate=validate.Length(min=1, max=100), metadata={
        "description": "a municipality by name or code ('Son Servera', 'son-servera')"})
    comarca = fields.String(validate=validate.Length(min=1, max=100), metadata={
        "description": "a comarca by name or code ('Llevant i Migjorn', 'raiguer')"})
    section = fields.String(validate=validate.Length(min=1, max=100), metadata={
        "description": "an IMAS section by name or code ('IMAS Llevant', 'imas-ponent')"})


class OverviewArgs(TerritoryArgs):
    version = fields.Integer(validate=validate.Range(min=1, max=2**31 - 1), metadata={
        "description": "one deployed version of the process; without it, every version together"})


class SupervisedInstancesArgs(OverviewArgs, PageArgs):
    element = fields.String(validate=validate.Length(min=1, max=200), metadata={
        "description": "an element id: instances whose token is there; with incident=true, those with an open "
                       "incident there; with overdue=true, those with an overdue open task there"})
    incident = fields.Boolean(metadata={
        "description": "true: only instances with an open incident; false: only those without"})
    overdue = fields.Boolean(metadata={
        "description": "true: only instances with an overdue open user task; false: only those without"})


class DefinitionRef(Schema):
    id = fields.Integer()
    version = fields.Integer()
    name = fields.String()
    deployed_at = fields.DateTime()


class ElementCounts(Schema):
    element_id = fields.String(metadata={"description": "the BPMN element id, to place the counts on the diagram"})
    name = fields.String()
    instances = fields.Integer(metadata={"description": "running instances with a token at the element"})
    incidents = fields.Integer(metadata={"description": "instances with an open incident at the element"})
    overdue_tasks = fields.Integer(metadata={"description": "open user tasks at the element past their due time"})


class OverviewTotals(Schema):
    instances = fields.Integer(metadata={"description": "running instances"})
    instances_with_incidents = fields.Integer()
    overdue_tasks = fields.Integer()


class ClockCount(Schema):
    clock_id = fields.String()
    label = fields.String()
    article = fields.String()
    at_risk = fields.Integer()
    breached = fields.Integer()


class ClockCounts(Schema):
    at_risk = fields.Integer(metadata={"description": "running legal clocks past their at-risk share (80 %)"})
    breached = fields.Integer(metadata={"description": "running legal clocks past their due time"})
    by_clock = fields.List(fields.Nested(ClockCount), metadata={"description": "only clocks at risk or breached"})


class ProcessOverview(Schema):
    process_key = fields.String()
    definitions = fields.List(fields.Nested(DefinitionRef), metadata={"description": "the versions counted"})
    elements = fields.List(fields.Nested(ElementCounts), metadata={
        "description": "elements with anything to show, by element id"})
    totals = fields.Nested(OverviewTotals)
    clocks = fields.Nested(ClockCounts, metadata={
        "description": "legal clocks of the cases with a running instance counted here"})


class SupervisedInstance(Schema):
    id = fields.Integer()
    case_reference = fields.String()
    process_key = fields.String()
    version = fields.Integer()
    status = fields.String()
    active_elements = fields.List(fields.String(), metadata={"description": "where its tokens are"})
    started_at = fields.DateTime()
    open_incidents = fields.Integer()
    overdue_tasks = fields.Integer()


class SupervisedInstancePage(PageMeta):
    items = fields.List(fields.Nested(SupervisedInstance), required=True)


class ProfessionalLoad(Schema):
    username = fields.String()
    open_tasks = fields.Integer(metadata={"description": "open tasks assigned to them"})
    overdue_tasks = fields.Integer()
    oldest_due_at = fields.DateTime(allow_none=True, metadata={"description": "the earliest due time among them"})


class QueueLoad(Schema):
    role = fields.String(allow_none=True)
    role_label = fields.String(allow_none=True)
    org_unit = fields.String(allow_none=True)
    org_unit_name = fields.String(allow_none=True)
    open_tasks = fields.Integer(metadata={"description": "open tasks waiting in the queue, assigned to nobody"})
    overdue_tasks = fields.Integer()
    oldest_waiting_since = fields.DateTime(metadata={"description": "when the longest-waiting one became ready"})
    oldest_due_at = fields.DateTime(allow_none=True)


class Workload(Schema):
    professionals = fields.List(fields.Nested(ProfessionalLoad), metadata={"description": "most overdue first"})
    role_queues = fields.List(fields.Nested(QueueLoad), metadata={"description": "most overdue first"})
