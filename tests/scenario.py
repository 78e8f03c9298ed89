"""A small language for scenario tests: act on a case as its professionals would, over HTTP.

Form data is generated from each task's own form (every required field gets a valid value),
so a scenario only states the decisions that choose its path.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from engine import clock
from engine.models import HumanTask, Instance
from tasks.worker import TimerWorker
from workflows.demo import DEMO_USERS
from workflows.forms import sample_submission

from .pathway_driver import notification

USERS_BY_QUEUE: dict[tuple[str, str], list[str]] = {}
for _user, _role, _unit in DEMO_USERS:
    from workflows.orgunits import find_unit

    USERS_BY_QUEUE.setdefault((_role, find_unit(_unit).code), []).append(_user)

SUPERVISOR = {"manacor": "coord.manacor", "son-servera": "coord.sonservera", "inca": "coord.inca",
              "palma": "coord.palma"}


def sample_data(form: dict, overrides: dict) -> dict:
    return sample_submission(form, overrides, clock.now().date())


class Case:
    """One case driven through its pathways by the demo professionals."""

    def __init__(self, http, camins, municipality: str = "Manacor", birth_date: str = "2015-04-01"):
        self.http, self.camins = http, camins
        response = http.post("/api/notifications", "notificant.escola", json=notification(municipality, birth_date))
        assert response.status_code == 201, response.text
        self.reference = response.json()["case_reference"]
        from workflows.orgunits import find_unit
        self.municipality = find_unit(municipality).code
        self.supervisor = SUPERVISOR[self.municipality]

    def open_task(self, element_id: str) -> HumanTask:
        with self.camins.db.read() as session:
            tasks = session.scalars(select(HumanTask).where(HumanTask.business_key == self.reference,
                                                            HumanTask.element_id == element_id,
                                                            HumanTask.state == "open")).all()
        assert len(tasks) == 1, f"{element_id}: {len(tasks)} open tasks; open: {self.open_elements()}"
        return tasks[0]

    def open_elements(self) -> list[str]:
        with self.camins.db.read() as session:
            return sorted(session.scalars(select(HumanTask.element_id).where(
                HumanTask.business_key == self.reference, HumanTask.state == "open")))

    def do(self, element_id: str, **decisions) -> dict:
        """Complete the open task of `element_id` as a professional of its queue."""
        task = self.open_task(element_id)
        candidates = [u for u in USERS_BY_QUEUE.get((task.role, task.org_unit), []) if u != task.distinct_from_user]
        user = task.assignee or candidates[0]
        detail = self.http.get(f"/api/tasks/{task.id}", user)
        assert detail.status_code == 200, detail.text
        data = sample_data(detail.json()["form"], decisions)
        response = self.http.post(f"/api/tasks/{task.id}/complete", user, json={"data": data})
        assert response.status_code == 200, response.text
        return response.json()

    def send(self, name: str, payload: dict | None = None, user: str | None = None) -> list[int]:
        response = self.http.post("/api/messages", user or self.supervisor,
                                  json={"name": name, "case_reference": self.reference, "payload": payload or {}})
        assert response.status_code == 202, response.text
        return response.json()["instance_ids"]

    def wait(self, manual_clock, delta: timedelta) -> int:
        """Let time pass and run a worker, as the scheduler would."""
        manual_clock.advance(delta)
        return TimerWorker(self.camins.engine).run_once()

    def view(self, user: str | None = None) -> dict:
        response = self.http.get(f"/api/cases/{self.reference}", user or self.supervisor)
        assert response.status_code == 200, response.text
        return response.json()

    def instances(self, process_key: str) -> list[Instance]:
        with self.camins.db.read() as session:
            return session.scalars(select(Instance).where(Instance.business_key == self.reference,
                                                          Instance.process_key == process_key)
                                   .order_by(Instance.id)).all()

    def thrown(self) -> list[str]:
        return [h["detail"]["name"] for h in self.view()["history"] if h["event"] == "message_thrown"]

    def clocks(self) -> dict[str, dict]:
        """clock id → the latest run of that legal clock on the case."""
        response = self.http.get(f"/api/cases/{self.reference}/clocks", self.supervisor)
        assert response.status_code == 200, response.text
        return {c["clock_id"]: c for c in response.json()["items"]}


# --- helpers for the family/applicant-side processes and hand-off payloads (pathways 6-8) ---

def start_process(case: Case, process_key: str, data: dict | None = None, user: str = "analista") -> dict:
    """Start a process with a none start event on the case, over POST /api/instances."""
    response = case.http.post("/api/instances", user, json={"process_key": process_key,
                                                            "case_reference": case.reference,
                                                            "data": data or {}})
    assert response.status_code == 201, response.text
    return response.json()


def instance_view(case: Case, instance_id: int, user: str = "analista") -> dict:
    """GET /api/instances/<id>: active elements, waiting timers and message subscriptions."""
    response = case.http.get(f"/api/instances/{instance_id}", user)
    assert response.status_code == 200, response.text
    return response.json()


def thrown_payloads(case: Case, name: str) -> list[dict]:
    """Payloads of the messages `name` the case's instances threw, oldest first (what the receiver gets)."""
    from engine.models import Outbox

    with case.camins.db.read() as session:
        return list(session.scalars(select(Outbox.payload).where(Outbox.business_key == case.reference,
                                                                 Outbox.name == name,
                                                                 Outbox.source_instance_id.is_not(None))
                                    .order_by(Outbox.id)))
