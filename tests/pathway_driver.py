"""Helpers for scenario tests: act as the professionals of the demo, over HTTP."""
from __future__ import annotations

from workflows.demo import DEMO_USERS, SEVERITY_SCORES, TASK_DATA

CASE_ROLE_USERS = [u for u, role, _unit in DEMO_USERS if role not in ("notifier", "analyst", "auditor")]


def notification(municipality: str = "Son Servera", birth_date: str = "2015-04-01") -> dict:
    return {
        "municipality": municipality,
        "child": {"given_name": "Aina", "family_name": "Ferrer Pons", "birth_date": birth_date},
        "reporter": {"kind": "school", "organisation": "CEIP Son Servera"},
        "description": "Absències reiterades i signes de descura.",
    }


def notify(http, municipality: str = "Son Servera", user: str = "notificant.escola") -> str:
    response = http.post("/api/notifications", user, json=notification(municipality))
    assert response.status_code == 201, response.text
    return response.json()["case_reference"]


def inbox(http, user: str, reference: str) -> list[dict]:
    response = http.get(f"/api/tasks?case={reference}", user)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def who_sees(http, reference: str, users=CASE_ROLE_USERS) -> dict[str, list[str]]:
    """Element id → the users whose inbox shows it."""
    seen: dict[str, list[str]] = {}
    for user in users:
        for item in inbox(http, user, reference):
            seen.setdefault(item["element_id"], []).append(user)
    return seen


def task_in_inbox(http, user: str, reference: str, element_id: str) -> dict:
    matches = [t for t in inbox(http, user, reference) if t["element_id"] == element_id]
    assert matches, f"{element_id} is not in the inbox of {user}"
    return matches[0]


def complete(http, user: str, reference: str, element_id: str, overrides: dict | None = None):
    task = task_in_inbox(http, user, reference, element_id)
    data = dict(TASK_DATA[element_id], **(overrides or {}))
    return http.post(f"/api/tasks/{task['id']}/complete", user, json={"data": data})


def work(http, user: str, reference: str, element_id: str, overrides: dict | None = None) -> dict:
    response = complete(http, user, reference, element_id, overrides)
    assert response.status_code == 200, response.text
    return response.json()


def case(http, user: str, reference: str) -> dict:
    response = http.get(f"/api/cases/{reference}", user)
    assert response.status_code == 200, response.text
    return response.json()


def to_imas_decision(http, municipality="Son Servera", tag="sonservera") -> str:
    """A new case worked up to the IMAS decision: assessed severe and validated by the coordinator."""
    reference = notify(http, municipality)
    for element_id, user in [("registre_notificacio", f"adm.{tag}"), ("valorar_urgencia", f"ts.{tag}"),
                             ("visita_domiciliaria", f"ts.{tag}"), ("informe_social", f"ts.{tag}"),
                             ("informe_educatiu", f"es.{tag}")]:
        work(http, user, reference, element_id)
    work(http, f"ts.{tag}", reference, "valoracio_gravetat", SEVERITY_SCORES["greu"])
    work(http, f"coord.{tag}", reference, "validar_valoracio")
    return reference
