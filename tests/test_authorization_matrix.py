"""Who may do what: every API route × every role, inside and just outside the case's territory.

ONE table (`case_rows`, `task_rows`) says, for each route, the answer every actor gets on a case of
Manacor that has an open task of each kind: a municipal task waiting in its queue, a municipal task
assigned to its professional (continuity), an IMAS-section task and an IMAS-wide task. The actors
are a demo user for every role of workflows/roles.py in the case's territory, the same role just
outside it (Son Servera: same comarca and IMAS section; Nord i Pla: same section; IMAS Ponent),
and two callers without a valid token.

Each test sets its case up once and walks its rows; every wrong cell is collected and the test
fails listing them all. For every cell it also checks:
- a read of case data wrote exactly the access-log row it should, and a refused call wrote none;
- a 404 for something that exists says exactly what the 404 for something that never existed
  says (existence, and the case reference, do not leak).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import requests
from sqlalchemy import delete, func, select

from api import create_app
from engine.bundle import BundleFile
from engine.models import HumanTask, Incident, Instance
from workflows import security
from workflows.demo import DEMO_PASSWORD, DEMO_USERS, TASK_DATA, principal
from workflows.models import AccessLog, ApiToken, Membership, User
from workflows.roles import ANY, IMAS, ROLES, SYSTEM
from workflows.service import NOTIFYING_ROLES, Camins

from .pathway_driver import notification
from .scenario import Case, sample_data

# ---------------------------------------------------------------------------------------- actors
# (role, scope, user). "in": the user's territory covers the case (Manacor, comarca Llevant i
# Migjorn, section IMAS Llevant); "out": the nearest territory that does not; "-": roles whose
# territory is the whole island (IMAS-wide, system, notifiers) have no outside.
ACTORS: list[tuple[str, str, str]] = [
    ("sscb_social_worker", "in", "ts.manacor"), ("sscb_social_worker", "out", "ts.sonservera"),
    ("sscb_social_educator", "in", "es.manacor"), ("sscb_social_educator", "out", "es.sonservera"),
    ("sscb_family_worker", "in", "tf.manacor"), ("sscb_family_worker", "out", "tf.sonservera"),
    ("sscb_admin", "in", "adm.manacor"), ("sscb_admin", "out", "adm.sonservera"),
    ("sscb_coordinator", "in", "coord.manacor"), ("sscb_coordinator", "out", "coord.sonservera"),
    ("commission_risk", "in", "comissio.manacor"), ("commission_risk", "out", "comissio.sonservera"),
    ("imas_childhood_referent", "in", "ref.llevant"), ("imas_childhood_referent", "out", "ref.nord"),
    ("imas_case_manager", "in", "cm.llevant"), ("imas_case_manager", "out", "cm.ponent"),
    ("imas_section_head", "in", "cap.llevant"), ("imas_section_head", "out", "cap.ponent"),
    ("imas_intake", "-", "intake.imas"),
    ("imas_psychologist", "-", "psi.imas"),
    ("imas_jurist", "-", "jur.imas"),
    ("imas_foster_care", "-", "acolliment.imas"),
    ("imas_adoption", "-", "adopcions.imas"),
    ("imas_emancipation", "-", "emancipacio.imas"),
    ("commission_guardianship", "-", "comissio.tutela"),
    ("notifier", "-", "notificant.escola"),
    ("analyst", "-", "analista"),
    ("auditor", "-", "auditor"),
]
NO_TOKEN, FORGED_TOKEN = "(no token)", "(forged token)"
ANONYMOUS = (NO_TOKEN, FORGED_TOKEN)
USERS = frozenset(user for _role, _scope, user in ACTORS)
ROLE_OF = {user: role for role, _scope, user in ACTORS}
SCOPE_OF = {user: scope for _role, scope, user in ACTORS}


def holding(*roles: str) -> frozenset[str]:
    return frozenset(user for role, _scope, user in ACTORS if role in roles)


# ------------------------------------------------------------------------- the case's people
# Who needs to know the case as the fixture leaves it (see `build_case`): its supervisors, whoever
# worked on it, and the queues its open tasks wait in. Everyone else in its territory does not.
SUPERVISORS = frozenset({"coord.manacor", "cap.llevant"})
KNOWS = SUPERVISORS | {"adm.manacor", "ts.manacor", "es.manacor", "cm.llevant", "intake.imas"}
ANALYST, AUDITOR, NOTIFIER = "analista", "auditor", "notificant.escola"

# kind → (element id, the one actor who is its candidate, the supervisor who directs that work)
TASKS = {
    "municipal queue": ("informe_educatiu", "es.manacor", "coord.manacor"),
    "municipal assigned": ("informe_social", "ts.manacor", "coord.manacor"),
    "IMAS section queue": ("p4_diligencies_previes", "cm.llevant", "cap.llevant"),
    "IMAS-wide queue": ("p4_diligencies_urgents", "intake.imas", "cap.llevant"),
}
ASSIGNED = {"municipal assigned": "ts.manacor"}
INBOX = {candidate: {element} for element, candidate, _director in TASKS.values()}

# Two tiny processes of our own: one records a communication (it fails while the service is down,
# which opens incidents to retry), one starts on a message (something harmless to send).
PROCESS = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs_{key}"
  targetNamespace="http://camins">
  {message}
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="{key}" /></bpmn:collaboration>
  <bpmn:process id="{key}" name="Prova d'autorització" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane" name="Coordinador/a SSCB">
      <bpmn:flowNodeRef>start</bpmn:flowNodeRef><bpmn:flowNodeRef>comunicar</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>end</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="start" name="Inici"><bpmn:outgoing>f1</bpmn:outgoing>{start}</bpmn:startEvent>
    <bpmn:serviceTask id="comunicar" name="Comunicar">
      <bpmn:extensionElements>
        <spiffworkflow:serviceTaskOperator id="record_communication" resultVariable="comunicacio">
          <spiffworkflow:parameters>
            <spiffworkflow:parameter id="recipient" type="str" value="'Fiscalia de Menors'" />
            <spiffworkflow:parameter id="subject" type="str" value="'Prova'" />
          </spiffworkflow:parameters>
        </spiffworkflow:serviceTaskOperator>
      </bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:endEvent id="end" name="Fi"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="comunicar" />
    <bpmn:sequenceFlow id="f2" sourceRef="comunicar" targetRef="end" />
  </bpmn:process>
</bpmn:definitions>
"""
STARTED = "prova_autoritzacio"
MESSAGE = "prova_autoritzacio_missatge"
STARTED_BUNDLE = PROCESS.format(key=STARTED, message="", start="").encode()
STARTED_BUNDLE_V2 = STARTED_BUNDLE.replace(b'name="Comunicar"', b'name="Comunicar a la Fiscalia"')
MESSAGE_BUNDLE = PROCESS.format(
    key=MESSAGE, message=f'<bpmn:message id="missatge" name="{MESSAGE}" />',
    start='<bpmn:messageEventDefinition id="def_missatge" messageRef="missatge" />').encode()


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Row:
    """One route on one target: `allowed` get `status`; `denied` maps a status to the actors that
    get it; every other actor with a valid token gets `otherwise`; callers without one get 401."""

    method: str
    path: str  # {ref} {task} {instance} {incident} {process} are filled from the case
    allowed: frozenset
    status: int
    otherwise: int
    denied: dict = field(default_factory=dict)
    target: str | None = None  # the task kind for task routes
    logs: str | None = None  # the access-log action a success writes
    logs_for: frozenset | None = None  # list routes: only those who are shown the case
    last: bool = False  # successes change what the other cells see: run them at the end
    check: Callable | None = None  # (body, user, case reference) → problem or None, on success

    def expected(self, actor: str) -> int:
        if actor in ANONYMOUS:
            return 401
        if actor in self.allowed:
            return self.status
        return next((status for status, actors in self.denied.items() if actor in actors), self.otherwise)

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}" + (f" [{self.target}]" if self.target else "")


def _sees_in_inbox(body, user, _reference):
    seen = {t["element_id"] for t in body["items"]}
    return None if seen == INBOX.get(user, set()) else f"inbox shows {sorted(seen)}"


def _sees_clocks(body, user, reference):
    shown = any(c["case_reference"] == reference for c in body["items"])
    return None if shown == (SCOPE_OF[user] == "in") else f"case clocks shown: {shown}"


def _bulk_outcome(body, user, _reference):
    """The municipal queue task: reassigned by its director, refused to the section head, unseen elsewhere."""
    wanted = {"coord.manacor": "reassigned", "cap.llevant": "refused"}.get(user, "not_found")
    outcomes = [item["outcome"] for item in body["items"]]
    return None if outcomes == [wanted] else f"bulk reassignment report {outcomes}, expected {[wanted]}"


def _counts_the_case(body, user, _reference):
    counted = body["totals"]["instances"] > 0
    return None if counted == (SCOPE_OF[user] == "in" or user == ANALYST) else f"case counted: {counted}"


def _lists_the_case(body, user, reference):
    shown = any(i["case_reference"] == reference for i in body["items"])
    return None if shown == (SCOPE_OF[user] == "in") else f"case instances shown: {shown}"


def _weighs_the_case(body, user, _reference):
    weighed = bool(body["professionals"] or body["role_queues"])
    return None if weighed == (SCOPE_OF[user] == "in") else f"case tasks in the workload: {weighed}"


def case_rows() -> list[Row]:
    everyone_but_notifiers = USERS - {NOTIFIER}
    supervisors_anywhere = holding(*[code for code, role in ROLES.items() if role.supervisor])
    return [
        Row("POST", "/api/auth/token", USERS, 200, 401),
        Row("POST", "/api/auth/logout", USERS, 204, 401),
        # Anyone who must report may notify a child of any municipality; it opens nothing to them.
        Row("POST", "/api/notifications", holding(*NOTIFYING_ROLES), 201, 403),
        Row("GET", "/api/tasks?case={ref}", everyone_but_notifiers, 200, 403, logs="list_tasks",
            logs_for=frozenset(INBOX), check=_sees_in_inbox),
        Row("GET", "/api/cases/{ref}", KNOWS, 200, 404, logs="read_case"),
        Row("GET", "/api/cases/{ref}/clocks", KNOWS, 200, 404, logs="read_clocks"),
        Row("GET", "/api/instances/{instance}", KNOWS | {ANALYST}, 200, 404, logs="read_instance"),
        Row("POST", "/api/instances", SUPERVISORS | {ANALYST}, 201, 404, {403: KNOWS - SUPERVISORS},
            logs="read_instance"),
        Row("GET", "/api/definitions", everyone_but_notifiers, 200, 403),
        Row("POST", "/api/definitions", frozenset({ANALYST}), 201, 403),
        Row("POST", "/api/definitions/validate", frozenset({ANALYST}), 200, 403),
        Row("POST", "/api/messages", KNOWS, 202, 404, {403: {NOTIFIER}}, logs="send_message"),
        Row("POST", "/api/incidents/{incident}/retry", SUPERVISORS | {ANALYST}, 200, 404,
            {403: KNOWS - SUPERVISORS}, logs="retry_incident", last=True),
        # Supervisors' acts: the case's supervisors; whoever else sees the instance gets 403.
        *[Row("POST", f"/api/instances/{{{target}}}/{act}", SUPERVISORS, 200, 404,
              {403: (KNOWS - SUPERVISORS) | {ANALYST}}, logs=logs, last=True)
          for act, target, logs in (("suspend", "instance", "suspend_instance"),
                                    ("resume", "instance", "resume_instance"),
                                    ("move", "instance", "move_token"),
                                    ("cancel", "cancellable", "cancel_instance"))],
        # Any supervisor may ask; the report says what became of each task (see `_bulk_outcome`).
        Row("POST", "/api/tasks/reassign", holding(*[code for code, role in ROLES.items() if role.supervisor]),
            200, 403, logs="reassign_task", logs_for=frozenset({"coord.manacor"}), check=_bulk_outcome),
        Row("GET", "/api/clocks", holding(*[code for code, role in ROLES.items() if role.supervisor]), 200, 403,
            logs="list_clocks", logs_for=SUPERVISORS, check=_sees_clocks),
        Row("GET", "/api/access-log?case={ref}", frozenset({AUDITOR}), 200, 403, logs="read_access_log"),
        # Supervisors' views: counts for supervisors (their scope) and analysts; cases and people for supervisors.
        Row("GET", "/api/supervision/processes/{process}/overview", supervisors_anywhere | {ANALYST}, 200, 403,
            check=_counts_the_case),
        Row("GET", "/api/supervision/processes/{process}/instances", supervisors_anywhere, 200, 403,
            logs="list_instances", logs_for=SUPERVISORS, check=_lists_the_case),
        Row("GET", "/api/supervision/workload", supervisors_anywhere, 200, 403, check=_weighs_the_case),
        # Versions and migrations are the analysts' alone; the process's instances all run on version 2.
        Row("GET", "/api/definitions/{key}/versions", frozenset({ANALYST}), 200, 403),
        Row("GET", "/api/definitions/{key}/diff?from=1&to=2", frozenset({ANALYST}), 200, 403),
        Row("POST", "/api/migrations/preview", frozenset({ANALYST}), 200, 403),
        Row("POST", "/api/migrations", frozenset({ANALYST}), 200, 403),
        Row("POST", "/api/definitions/{key}/versions/{version}/retire", frozenset({ANALYST}), 200, 403, last=True),
    ]


def task_rows() -> list[Row]:
    rows = []
    for kind, (_element, candidate, director) in TASKS.items():
        sees = {candidate} | SUPERVISORS  # candidates and the case's supervisors see the task
        assigned = kind in ASSIGNED
        rows += [
            Row("GET", "/api/tasks/{task}", sees, 200, 404, target=kind, logs="read_task"),
            Row("POST", "/api/tasks/{task}/claim", {candidate}, 200, 404, {403: SUPERVISORS - {candidate}},
                target=kind, logs="read_task"),
            # Only the assignee gives a task back; for anyone else who sees it that is a conflict.
            Row("POST", "/api/tasks/{task}/unclaim", {candidate} if assigned else set(), 200, 404,
                {409: (SUPERVISORS if assigned else sees)}, target=kind, logs="read_task"),
            # A supervisor directs the work of their own administration only.
            Row("POST", "/api/tasks/{task}/reassign", {director}, 200, 404, {403: sees - {director}},
                target=kind, logs="reassign_task"),
            Row("POST", "/api/tasks/{task}/complete", {candidate}, 200, 404, {403: SUPERVISORS - {candidate}},
                target=kind, logs="complete_task", last=True),
        ]
    return rows


# ------------------------------------------------------------------------------------ the case
@dataclass
class World:
    http: object
    camins: Camins
    ref: str
    instance: int
    tasks: dict = field(default_factory=dict)  # kind → task id
    forms: dict = field(default_factory=dict)  # kind → valid form data
    incidents: list = field(default_factory=list)
    cancellable: list = field(default_factory=list)  # instances for the supervisors to cancel, one each


def build_case(http, camins, monkeypatch) -> World:
    """A case of Manacor in investigation (one municipal task assigned, one in its queue), referred
    to IMAS protection both ordinarily (a section task) and urgently (an IMAS-wide task)."""
    case = Case(http, camins, "Manacor")
    case.do("registre_notificacio")
    case.do("valorar_urgencia", perill_immediat=False)
    case.do("visita_domiciliaria")
    case.send("derivacio_proteccio_imas", {"gravetat": "greu"})
    case.send("proteccio_urgent", {"data_guarda": "2026-11-20"})
    world = World(http, camins, case.reference, case.instances("investigacio")[0].id)
    for kind, (element, candidate, _director) in TASKS.items():
        task = case.open_task(element)
        assert task.assignee == ASSIGNED.get(kind), (kind, task.assignee)
        world.tasks[kind] = task.id
        detail = http.get(f"/api/tasks/{task.id}", candidate)
        assert detail.status_code == 200, detail.text
        world.forms[kind] = sample_data(detail.json()["form"], {})
    for bundle in (STARTED_BUNDLE, STARTED_BUNDLE_V2, MESSAGE_BUNDLE):
        camins.deploy_bundle(None, [BundleFile("prova.bpmn", bundle)])

    def service_down(*args, **kwargs):
        raise ConnectionError("register unreachable")

    # Incidents to retry, one for each actor allowed to (each success resolves one).
    monkeypatch.setattr(camins.hooks, "call_service", service_down)
    for _ in range(len(SUPERVISORS) + 2):
        started = camins.start_instance(principal(camins, ANALYST), STARTED, world.ref, {})
        assert started["incident_id"] is not None
        world.incidents.append(started["incident_id"])
    for _ in SUPERVISORS:  # stuck at their start by the failure: what a supervisor would cancel
        world.cancellable.append(camins.start_instance(principal(camins, ANALYST), STARTED, world.ref, {})["id"])
    monkeypatch.undo()
    sign_in(http, camins, USERS)
    return world


def mint_token(camins, username: str) -> str:
    """A bearer token as POST /api/auth/token issues it, without the password hash's deliberate
    slowness (the token row of the table logs in for real)."""
    with camins.db.write() as session:
        token, _row = security.issue_token(session, session.scalar(select(User).where(User.username == username)))
    return token


def sign_in(http, camins, users) -> None:
    for user in users:
        http.tokens[user] = mint_token(camins, user)


def _cancellable(world: World) -> int | None:
    with world.camins.db.read() as session:
        return session.scalar(select(Instance.id).where(Instance.id.in_(world.cancellable),
                                                        Instance.status != "cancelled").order_by(Instance.id))


def _open_incident(world: World) -> int | None:
    with world.camins.db.read() as session:
        return session.scalar(select(Incident.id).where(Incident.id.in_(world.incidents),
                                                        Incident.status == "open").order_by(Incident.id))


BODY_WITH_REF = ("/api/instances", "/api/messages")
GHOST = {"ref": "EXP-2026-999999", "task": "00000000-0000-4000-8000-000000000000", "instance": "2147483646",
         "incident": "2147483646", "cancellable": "2147483646", "key": "no_such_process",
         "version": "2147483646", "process": "no_such_process"}
ACT_REASON = "Motiu de la prova d'autorització."


def _request(world: World, row: Row, actor: str, ghost: bool = False) -> tuple[requests.Response, dict]:
    """Send the row's request as `actor`; returns the response and the ids filled in."""
    ids = {"ref": world.ref, "instance": str(world.instance), "task": world.tasks.get(row.target, ""), "key": STARTED,
           "version": "1", "process": "investigacio",
           "incident": str(_open_incident(world)) if "{incident}" in row.path else "",
           "cancellable": str(_cancellable(world)) if "{cancellable}" in row.path else ""}
    if ghost:
        ids = GHOST
    path = row.path.format(**ids)
    kwargs: dict = {}
    if row.path == "/api/auth/token":
        password = DEMO_PASSWORD if actor in USERS else "not-the-password"
        return requests.post(world.http.base + path, json={"username": actor, "password": password},
                             timeout=60), ids
    if row.path == "/api/auth/logout" and actor in USERS:
        # A token of its own, so the one the other cells use stays valid.
        ids = {**ids, "token": mint_token(world.camins, actor)}
        kwargs["headers"] = {"Authorization": f"Bearer {ids['token']}"}
    elif row.path == "/api/notifications":
        kwargs["json"] = notification("Manacor")
    elif row.path == "/api/instances":
        kwargs["json"] = {"process_key": STARTED, "case_reference": ids["ref"], "data": {}}
    elif row.path == "/api/messages":
        kwargs["json"] = {"name": MESSAGE, "case_reference": ids["ref"], "payload": {}}
    elif row.path.endswith("/retire"):
        kwargs["json"] = {"reason": "Substituïda per la versió 2"}
    elif row.path.startswith("/api/migrations"):
        kwargs["json"] = {"process_key": STARTED, "from_version": 1, "to_version": 2, "reason": "Prova"}
        if row.path.endswith("/preview"):
            del kwargs["json"]["reason"]
    elif row.path.startswith("/api/definitions") and row.method == "POST":
        kwargs["files"] = [("files", ("prova.bpmn", STARTED_BUNDLE, "application/xml"))]
    elif row.path.endswith("/complete"):
        kwargs["json"] = {"data": world.forms[row.target]}
    elif row.path == "/api/tasks/reassign":
        kwargs["json"] = {"task_ids": [world.tasks["municipal queue"]], "username": None, "reason": ACT_REASON}
    elif row.path.endswith("/reassign"):
        kwargs["json"] = {"username": ASSIGNED.get(row.target), "reason": ACT_REASON}
    elif row.path.startswith("/api/instances/{") and row.method == "POST":
        kwargs["json"] = {"reason": ACT_REASON}
        if row.path.endswith("/move"):
            kwargs["json"]["return_to_element"] = "visita_domiciliaria"
        if row.path.endswith("/resume") and not ghost and actor in row.allowed:
            world.camins.engine.suspend(world.instance, "preparació", "per reprendre-la")
    if actor == FORGED_TOKEN:
        kwargs.setdefault("headers", {})["Authorization"] = "Bearer forged-" + "x" * 40
    user = actor if actor in USERS and "headers" not in kwargs else None
    return world.http.call(row.method, path, user, **kwargs), ids


def _restore(world: World, row: Row, actor: str) -> None:
    """Undo a successful claim or unclaim so that the next cells see the task as it was."""
    task_id = world.tasks.get(row.target)
    if row.path.endswith("/suspend"):
        world.camins.engine.resume(world.instance, "restauració", "per a la cel·la següent")
    elif row.path.endswith("/move"):  # back where it was: the home visit done, the reports open
        with world.camins.db.read() as session:
            visit = session.scalar(select(HumanTask.id).where(HumanTask.instance_id == world.instance,
                                                              HumanTask.element_id == "visita_domiciliaria",
                                                              HumanTask.state == "open"))
        world.camins.engine.complete_task(visit, TASK_DATA["visita_domiciliaria"], "ts.manacor")
    elif row.path.endswith("/claim") and row.target not in ASSIGNED:
        world.camins.engine.unclaim(task_id, actor)
    elif row.path.endswith("/unclaim"):
        world.camins.engine.claim(task_id, actor)


def _last_log_id(camins) -> int:
    with camins.db.read() as session:
        return session.scalar(select(func.coalesce(func.max(AccessLog.id), 0)))


def _log_rows_since(camins, last_id: int) -> list[tuple]:
    return [row[1:] for row in _log_since(camins, last_id)]


def _log_since(camins, last_id: int) -> list[tuple]:
    with camins.db.read() as session:
        return [tuple(r) for r in session.execute(
            select(AccessLog.id, AccessLog.username, AccessLog.case_reference, AccessLog.action)
            .where(AccessLog.id > last_id).order_by(AccessLog.id))]


def _normalised(row: Row, response: requests.Response, ids: dict) -> str:
    """The problem with the ids the request named replaced by their names."""
    names = set(re.findall(r"\{(\w+)\}", row.path)) | ({"ref"} if row.path in BODY_WITH_REF else set())
    text = json.dumps(response.json(), sort_keys=True)
    for name in names:
        text = re.sub(rf"\b{re.escape(ids[name])}\b", f"<{name}>", text)
    return text


def run_table(world: World, rows: list[Row]) -> list[str]:
    """Every cell of `rows`; returns the wrong ones."""
    actors = [user for _role, _scope, user in ACTORS] + list(ANONYMOUS)
    cells = [(row, actor) for row in rows for actor in actors]
    # A success on a `last` row changes the case (a task completed, an incident resolved): those run last.
    cells.sort(key=lambda cell: cell[0].last and cell[0].expected(cell[1]) < 400)
    ghosts: dict[str, str] = {}
    wrong = []
    last_log = _last_log_id(world.camins)
    for row, actor in cells:
        label = f"{row.name} as {actor} ({ROLE_OF.get(actor, 'no role')}, scope {SCOPE_OF.get(actor, '-')})"
        response, ids = _request(world, row, actor)
        expected = row.expected(actor)
        new_rows = _log_since(world.camins, last_log)
        last_log = max([last_log] + [r[0] for r in new_rows])
        if response.status_code != expected:
            wrong.append(f"{label}: expected {expected}, got {response.status_code} {response.text[:150]}")
            continue
        if row.path == "/api/auth/token" and expected == 200:
            world.http.tokens[actor] = response.json()["access_token"]
        if expected < 400:
            _restore(world, row, actor)
        if row.path == "/api/auth/logout" and expected == 204:
            again = requests.get(world.http.base + "/api/tasks", timeout=60,
                                 headers={"Authorization": f"Bearer {ids['token']}"})
            if again.status_code != 401:
                wrong.append(f"{label}: the token still works after logout ({again.status_code})")
        if expected >= 400 and not response.headers.get("Content-Type", "").startswith("application/problem+json"):
            wrong.append(f"{label}: {expected} is not problem+json")
        # The access log: a success that reads case data writes its row; nothing else writes one.
        logged = [r[1:] for r in new_rows]
        wanted = []
        if expected < 400 and row.logs and (row.logs_for is None or actor in row.logs_for):
            wanted = [(actor, world.ref, row.logs)]
        if logged != wanted:
            wrong.append(f"{label}: access log {logged}, expected {wanted}")
        if expected < 400 and row.check:
            problem = row.check(response.json(), actor, world.ref)
            if problem:
                wrong.append(f"{label}: {problem}")
        # A 404 for what exists is word for word the 404 for what never existed.
        if expected == 404:
            if row.name not in ghosts:
                ghost, ghost_ids = _request(world, row, actor, ghost=True)
                assert ghost.status_code == 404, (row.name, ghost.text)
                assert _log_since(world.camins, last_log) == [], row.name
                ghosts[row.name] = _normalised(row, ghost, ghost_ids)
            if _normalised(row, response, ids) != ghosts[row.name]:
                wrong.append(f"{label}: the 404 tells this exists: {response.text} vs {ghosts[row.name]}")
    return wrong


# ------------------------------------------------------------------------------------ the tests
def _pattern(path: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "*", path.split("?")[0])


def test_the_table_covers_every_route_and_every_role():
    camins = Camins("sqlite://")
    app = create_app(camins, {"TESTING": True})
    routes = {(method, _pattern(rule.rule)) for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") and not rule.rule.startswith(("/api/docs", "/api/openapi"))
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    camins.close()
    table = {(row.method, _pattern(row.path)) for row in case_rows() + task_rows()}
    assert routes == table, f"routes without rows: {routes - table}; rows without a route: {table - routes}"
    assert {role for role, _scope, _user in ACTORS} == set(ROLES)
    for role, code in ROLES.items():
        scopes = {scope for r, scope, _u in ACTORS if r == role}
        assert scopes == ({"-"} if code.level in (IMAS, SYSTEM, ANY) else {"in", "out"}), role
    demo = {(user, role) for user, role, _unit in DEMO_USERS}
    assert all((user, role) in demo for role, _scope, user in ACTORS)
    for kind, (_element, candidate, _director) in TASKS.items():
        assert candidate in KNOWS, kind


def test_case_routes_answer_each_role_as_the_table_says(http, camins, monkeypatch):
    world = build_case(http, camins, monkeypatch)
    wrong = run_table(world, case_rows())
    assert wrong == [], f"{len(wrong)} wrong cells:\n" + "\n".join(wrong)


def test_task_routes_answer_each_role_as_the_table_says(http, camins, monkeypatch):
    world = build_case(http, camins, monkeypatch)
    wrong = run_table(world, task_rows())
    assert wrong == [], f"{len(wrong)} wrong cells:\n" + "\n".join(wrong)
    # The successful completions at the end moved the case on.
    with camins.db.read() as session:
        states = dict(session.execute(select(HumanTask.id, HumanTask.state)
                                      .where(HumanTask.id.in_(world.tasks.values()))).all())
    assert set(states.values()) == {"completed"}


def test_a_professional_who_leaves_the_territory_loses_the_task_assigned_to_them(http, camins):
    """Assignment is not a key of its own: moved to Inca, a social worker no longer sees, or
    completes, the Manacor task they had claimed; the coordinator hands it to a colleague."""
    username = "ts.trasllat"
    camins.create_user(username, DEMO_PASSWORD, [("sscb_social_worker", "Manacor")])
    try:
        sign_in(http, camins, [username, "adm.manacor", "coord.manacor", "ts.manacor", "notificant.escola"])
        case = Case(http, camins, "Manacor")
        case.do("registre_notificacio")
        task = case.open_task("valorar_urgencia")
        assert http.post(f"/api/tasks/{task.id}/claim", username).status_code == 200
        assert [t["id"] for t in http.get("/api/tasks?mine=true", username).json()["items"]] == [task.id]
        data = {"perill_immediat": False, "justificacio": "Sense indicis de perill immediat."}

        with camins.db.write() as session:  # moved: Manacor → Inca
            user_id = session.scalar(select(User.id).where(User.username == username))
            session.execute(delete(Membership).where(Membership.user_id == user_id))
            session.add(Membership(user_id=user_id, role="sscb_social_worker", org_unit="inca"))
        before = _last_log_id(camins)
        assert http.get(f"/api/tasks/{task.id}", username).status_code == 404
        assert http.post(f"/api/tasks/{task.id}/complete", username, json={"data": data}).status_code == 404
        assert http.post(f"/api/tasks/{task.id}/unclaim", username).status_code == 404
        assert http.get("/api/tasks", username).json()["items"] == []
        assert http.get("/api/tasks?mine=true", username).json()["total"] == 0
        assert http.get(f"/api/cases/{case.reference}", username).status_code == 404
        assert _log_rows_since(camins, before) == []

        # Still assigned to them: the coordinator sees it and gives it to a colleague in Manacor.
        assert case.view()["open_tasks"][0]["assignee"] == username
        moved = http.post(f"/api/tasks/{task.id}/reassign", "coord.manacor",
                          json={"username": "ts.manacor", "reason": "Trasllat a Inca."})
        assert moved.status_code == 200 and moved.json()["assignee"] == "ts.manacor"
        done = http.post(f"/api/tasks/{task.id}/complete", "ts.manacor", json={"data": data})
        assert done.status_code == 200, done.text
    finally:
        with camins.db.write() as session:
            user_id = session.scalar(select(User.id).where(User.username == username))
            session.execute(delete(ApiToken).where(ApiToken.user_id == user_id))
            session.execute(delete(Membership).where(Membership.user_id == user_id))
            session.execute(delete(User).where(User.id == user_id))
        http.tokens.pop(username, None)


# ---------------------------------------------------------------------------- the access log
def _log(http, query: str = "", user: str = AUDITOR) -> requests.Response:
    return http.get(f"/api/access-log{query}", user)


def test_the_auditor_reads_who_read_which_case(http, camins, manual_clock):
    sign_in(http, camins, ["notificant.escola", "coord.manacor", "coord.sonservera", "adm.manacor", "ts.manacor",
                           AUDITOR])
    first = Case(http, camins, "Manacor")
    other = Case(http, camins, "Son Servera")
    start = manual_clock.now()
    first.view("coord.manacor")
    other.view("coord.sonservera")
    manual_clock.advance(timedelta(hours=1))
    middle = manual_clock.now()
    task = first.open_task("registre_notificacio")
    assert http.get(f"/api/tasks/{task.id}", "adm.manacor").status_code == 200
    first.clocks()
    manual_clock.advance(timedelta(hours=1))
    end = manual_clock.now()
    first.view("coord.manacor")
    # Refused reads leave no trace as reads.
    assert http.get(f"/api/cases/{first.reference}", "coord.sonservera").status_code == 404
    assert http.get(f"/api/cases/{first.reference}", "ts.manacor").status_code == 404

    page = _log(http, f"?case={first.reference}")
    assert page.status_code == 200, page.text
    body = page.json()
    assert [(e["username"], e["action"], e["resource"]) for e in body["items"]] == [
        ("coord.manacor", "read_case", f"case/{first.reference}"),
        ("adm.manacor", "read_task", f"task/{task.id}"),
        ("coord.manacor", "read_clocks", f"case/{first.reference}/clocks"),
        ("coord.manacor", "read_case", f"case/{first.reference}"),
    ]
    assert body["total"] == 4 and body["page"] == 1 and body["per_page"] == 50
    assert {e["case_reference"] for e in body["items"]} == {first.reference}
    ats = [e["at"] for e in body["items"]]
    assert ats == sorted(ats) and ats[0].startswith(start.isoformat()[:19])
    assert set(body["items"][0]) == {"id", "at", "username", "case_reference", "action", "resource"}

    by_user = _log(http, "?user=coord.sonservera").json()
    assert [(e["case_reference"], e["action"]) for e in by_user["items"]] == [(other.reference, "read_case")]
    # since is inclusive, until exclusive: the middle hour only.
    hour = http.get("/api/access-log", AUDITOR, params={"since": middle.isoformat(), "until": end.isoformat(),
                                                         "case": first.reference}).json()
    assert [e["action"] for e in hour["items"]] == ["read_task", "read_clocks"]
    both = http.get("/api/access-log", AUDITOR, params={"since": start.isoformat(), "until": middle.isoformat(),
                                                         "user": "coord.manacor"}).json()
    assert [(e["case_reference"], e["action"]) for e in both["items"]] == [(first.reference, "read_case")]
    assert _log(http, "?user=nobody").json() == {"items": [], "total": 0, "page": 1, "per_page": 50}

    # Pages: the first two hours, three by three, give back every row once, in order.
    until = {"until": end.isoformat(), "per_page": 3}
    whole = http.get("/api/access-log", AUDITOR, params={"until": end.isoformat()}).json()
    pages = [http.get("/api/access-log", AUDITOR, params={**until, "page": n}).json() for n in (1, 2, 3)]
    assert [len(p["items"]) for p in pages] == [3, 1, 0]
    assert {p["total"] for p in pages} == {4} and whole["total"] == 4
    assert [e["id"] for p in pages for e in p["items"]] == [e["id"] for e in whole["items"]]
    assert [e["action"] for e in whole["items"]] == ["read_case", "read_case", "read_task", "read_clocks"]

    # The auditors are audited: each query above is in the log.
    own = _log(http, "?user=auditor&per_page=200").json()["items"]
    assert own and {e["action"] for e in own} == {"read_access_log"}
    assert (first.reference, "access-log") in {(e["case_reference"], e["resource"]) for e in own}


def test_the_access_log_refuses_bad_queries_and_cannot_be_changed(http, camins):
    sign_in(http, camins, ["notificant.escola", AUDITOR, ANALYST, "cap.llevant"])
    reference = Case(http, camins, "Manacor").reference
    bad = {
        "?since=2026-11-21T00:00:00%2B00:00&until=2026-11-20T00:00:00%2B00:00": "until",
        "?since=2026-11-20T00:00:00": "since",  # no offset: ambiguous
        "?since=yesterday": "since",
        "?per_page=0": "per_page",
        "?per_page=201": "per_page",
        "?page=0": "page",
        "?case=" + "X" * 31: "case",
        # Valid timestamps whose UTC moment falls outside years 1-9999 (they were a 500).
        "?since=0001-01-01T00:00:00%2B14:00": "since",
        "?until=9999-12-31T23:59:59-14:00": "until",
    }
    for query, field_name in bad.items():
        response = _log(http, query)
        assert response.status_code == 422, (query, response.text)
        assert field_name in response.json()["errors"], (query, response.json())
    edges = _log(http, "?since=0001-01-01T00:00:00%2B00:00&until=9999-12-31T23:59:59%2B00:00")
    assert edges.status_code == 200 and edges.json()["total"] == 0
    # The inbox's own timestamp filter had the same 500.
    inbox = http.get("/api/tasks?due_before=0001-01-01T00:00:00%2B14:00", "cap.llevant")
    assert inbox.status_code == 422 and "due_before" in inbox.json()["errors"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = http.call(method, "/api/access-log", AUDITOR, json={"case_reference": reference})
        assert response.status_code == 405, (method, response.status_code)
    assert http.call("DELETE", f"/api/access-log?case={reference}", "analista").status_code == 405
    assert _log(http, "", "analista").status_code == 403
    assert _log(http, "", "cap.llevant").status_code == 403
    operation = http.get("/api/openapi.json", AUDITOR).json()["paths"]["/api/access-log"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"case", "user", "since", "until", "page", "per_page"}
