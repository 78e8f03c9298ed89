"""Cases driven in process, as the demo professionals would: the benchmark's workload.

Everything here goes through the service (`Camins`), so the cases, tasks and histories the
measurements work on are exactly those of real use.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import select

from engine import clock
from engine.models import HumanTask, Instance
from workflows.demo import DEMO_USERS, TASK_DATA, notify, principal, work_open_tasks
from workflows.forms import sample_submission, validate_submission
from workflows.orgunits import find_unit

TOWNS = ("Manacor", "Son Servera", "Inca", "Palma")
SUPERVISORS = {"Manacor": "coord.manacor", "Son Servera": "coord.sonservera", "Inca": "coord.inca",
               "Palma": "coord.palma"}
# The assessment pathway (investigacio) up to the severity grading: four completions per case, none of
# which hands the case on, so every loop does the same work.
ASSESSMENT_LAYERS = ("visita_domiciliaria", "informe_social", "informe_educatiu", "valoracio_gravetat")

_QUEUE_USERS: dict[tuple[str, str], list[str]] = {}
for _user, _role, _unit in DEMO_USERS:
    _QUEUE_USERS.setdefault((_role, find_unit(_unit).code), []).append(_user)


def worker_for(task: HumanTask) -> str:
    """Who completes the task: its assignee, or the first professional of its queue who may."""
    candidates = [u for u in _QUEUE_USERS.get((task.role, task.org_unit), []) if u != task.distinct_from_user]
    return task.assignee or candidates[0]


def cases_in_assessment(camins, count: int, say=print) -> list[str]:
    """`count` new cases, each with its assessment pathway waiting at the home visit."""
    references = []
    for n in range(count):
        town = TOWNS[n % len(TOWNS)]
        reference = notify(camins, town, "Nen", f"Bench {n}", date(2015, 4, 1))
        work_open_tasks(camins, reference, ["registre_notificacio", "valorar_urgencia"])
        references.append(reference)
        if (n + 1) % 100 == 0:
            say(f"  {n + 1}/{count} cases in assessment")
    return references


def open_tasks(camins, references: list[str], element_id: str) -> list[HumanTask]:
    """The open task of `element_id` of each case, in the order of `references`."""
    with camins.db.read() as session:
        rows = session.scalars(select(HumanTask).where(HumanTask.element_id == element_id,
                                                       HumanTask.state == "open",
                                                       HumanTask.business_key.in_(references))).all()
    by_case = {t.business_key: t for t in rows}
    return [by_case[r] for r in references]


def cleaned_submission(cached, element_id: str) -> dict:
    """The demo's submission for an element's task, as the service passes it to the engine."""
    import json
    name = cached.elements[element_id].properties["form"]
    form = json.loads(cached.forms.get(name) or cached.forms[f"forms/{name.rsplit('/', 1)[-1]}"])
    return validate_submission(form, TASK_DATA[element_id])


def _form(camins, task: HumanTask) -> dict:
    import json
    with camins.db.read() as session:
        instance = session.get(Instance, task.instance_id)
        cached = camins.engine.cached_spec(instance.definition)
    return json.loads(cached.forms[task.form])


class CaseDriver:
    """One case moved along by whoever's turn it is (used for the long-history case)."""

    def __init__(self, camins, town: str = "Manacor", birth: date = date(2015, 4, 1)):
        self.camins = camins
        self.town = town
        self.reference = notify(camins, town, "Nena", "Bench", birth)

    def open_task(self, element_id: str) -> HumanTask:
        with self.camins.db.read() as session:
            return session.scalars(select(HumanTask).where(HumanTask.business_key == self.reference,
                                                           HumanTask.element_id == element_id,
                                                           HumanTask.state == "open")).one()

    def do(self, element_id: str, **decisions) -> None:
        task = self.open_task(element_id)
        # The demo's choices where it has them (the ordinary route), then the caller's.
        data = sample_submission(_form(self.camins, task), {**TASK_DATA.get(element_id, {}), **decisions},
                                 clock.now().date())
        self.camins.complete(principal(self.camins, worker_for(task)), task.id, data)

    def send(self, name: str, payload: dict) -> None:
        self.camins.send_message(principal(self.camins, SUPERVISORS[self.town]), name, self.reference, payload)
