"""Claim, unclaim, reassign, pagination, messages: what caseworkers and supervisors do with tasks."""
from __future__ import annotations

from .pathway_driver import case, inbox, notify, task_in_inbox, work


def test_claim_unclaim_and_reassign(http, camins):
    camins.create_user("ts2.sonservera", "camins-demo-2026", [("sscb_social_worker", "Son Servera")])
    reference = notify(http)
    work(http, "adm.sonservera", reference, "registre_notificacio")
    task = task_in_inbox(http, "ts.sonservera", reference, "valorar_urgencia")
    assert task["assignee"] is None
    task_in_inbox(http, "ts2.sonservera", reference, "valorar_urgencia")

    claimed = http.post(f"/api/tasks/{task['id']}/claim", "ts.sonservera")
    assert claimed.status_code == 200 and claimed.json()["assignee"] == "ts.sonservera"
    # Claimed: gone from the colleague's queue, and the colleague can neither claim nor complete it.
    assert inbox(http, "ts2.sonservera", reference) == []
    assert http.post(f"/api/tasks/{task['id']}/claim", "ts2.sonservera").status_code == 409
    other = http.post(f"/api/tasks/{task['id']}/complete", "ts2.sonservera",
                      json={"data": {"perill_immediat": False, "justificacio": "x"}})
    assert other.status_code == 403
    # A professional of another municipality does not even see it.
    assert http.post(f"/api/tasks/{task['id']}/claim", "ts.manacor").status_code == 404

    assert http.post(f"/api/tasks/{task['id']}/unclaim", "ts2.sonservera").status_code == 409
    released = http.post(f"/api/tasks/{task['id']}/unclaim", "ts.sonservera")
    assert released.status_code == 200 and released.json()["assignee"] is None

    # Reassignment: only the supervisor of the territory, only to a candidate.
    why = "Càrrega de feina."
    denied = http.post(f"/api/tasks/{task['id']}/reassign", "ts.sonservera",
                       json={"username": "ts2.sonservera", "reason": why})
    assert denied.status_code == 403
    assert http.post(f"/api/tasks/{task['id']}/reassign", "coord.manacor",
                     json={"username": "ts2.sonservera", "reason": why}).status_code == 404
    not_candidate = http.post(f"/api/tasks/{task['id']}/reassign", "coord.sonservera",
                              json={"username": "ts.manacor", "reason": why})
    assert not_candidate.status_code == 422 and "username" in not_candidate.json()["errors"]
    moved = http.post(f"/api/tasks/{task['id']}/reassign", "coord.sonservera",
                      json={"username": "ts2.sonservera", "reason": why})
    assert moved.status_code == 200 and moved.json()["assignee"] == "ts2.sonservera"
    assert [t["id"] for t in inbox(http, "ts2.sonservera", reference)] == [task["id"]]
    assert inbox(http, "ts.sonservera", reference) == []
    work(http, "ts2.sonservera", reference, "valorar_urgencia")

    events = [h["event"] for h in case(http, "coord.sonservera", reference)["history"]]
    for event in ("task_claimed", "task_unclaimed", "task_reassigned", "task_completed"):
        assert event in events


def test_task_detail_has_its_form_and_the_read_is_logged(http, camins):
    reference = notify(http)
    task = task_in_inbox(http, "adm.sonservera", reference, "registre_notificacio")
    detail = http.get(f"/api/tasks/{task['id']}", "adm.sonservera").json()
    keys = {c.get("key") for c in detail["form"]["components"]}
    assert {"canal", "data_recepcio", "es_reiteracio"} <= keys
    assert detail["child"]["given_name"] == "Aina"
    assert "adm.sonservera" in detail["candidates"] and "adm.manacor" not in detail["candidates"]
    assert http.get(f"/api/tasks/{task['id']}", "adm.manacor").status_code == 404
    from sqlalchemy import select

    from workflows.models import AccessLog
    with camins.db.read() as session:
        actions = session.scalars(select(AccessLog.action).where(AccessLog.username == "adm.sonservera")).all()
    assert "read_task" in actions


def test_inbox_is_paginated_and_filtered(http, camins, manual_clock):
    from datetime import timedelta

    references = [notify(http, "Manacor") for _ in range(5)]
    first = http.get("/api/tasks?per_page=2&page=1", "adm.manacor").json()
    second = http.get("/api/tasks?per_page=2&page=3", "adm.manacor").json()
    assert first["total"] == 5 and len(first["items"]) == 2 and len(second["items"]) == 1
    assert http.get("/api/tasks?pathway=investigacio", "adm.manacor").json()["total"] == 0
    assert http.get(f"/api/tasks?case={references[0]}", "adm.manacor").json()["total"] == 1
    assert http.get("/api/tasks?mine=true", "adm.manacor").json()["total"] == 0
    assert http.get("/api/tasks?per_page=0", "adm.manacor").status_code == 422
    # Urgency assessment has no due date; the urgent guarda is due in a day.
    work(http, "adm.manacor", references[0], "registre_notificacio")
    work(http, "ts.manacor", references[0], "valorar_urgencia", {"perill_immediat": True})
    manual_clock.advance(timedelta(days=2))
    overdue = http.get("/api/tasks?overdue=true", "intake.imas").json()["items"]
    assert [t["element_id"] for t in overdue] == ["assumir_guarda_provisional"] and overdue[0]["overdue"]


def test_message_starts_a_waiting_pathway_over_http(http, camins):
    reference = notify(http)
    sent = http.post("/api/messages", "coord.sonservera",
                     json={"name": "investigacio_iniciada", "case_reference": reference,
                           "payload": {"origen": "manual"}})
    assert sent.status_code == 202, sent.text
    instance = http.get(f"/api/instances/{sent.json()['instance_ids'][0]}", "coord.sonservera").json()
    assert instance["process_key"] == "investigacio"
    assert instance["active_elements"] == ["visita_domiciliaria"]
    nobody = http.post("/api/messages", "coord.sonservera",
                       json={"name": "sentencia_judicial", "case_reference": reference, "payload": {}})
    assert nobody.status_code == 404
    assert http.post("/api/messages", "coord.manacor",
                     json={"name": "investigacio_iniciada", "case_reference": reference}).status_code == 404


def test_tokens_expire_and_can_be_revoked(http, manual_clock):
    from datetime import timedelta

    token = http.login("coord.sonservera")
    headers = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/tasks", headers=headers).status_code == 200
    manual_clock.advance(timedelta(hours=9))
    assert http.get("/api/tasks", headers=headers).status_code == 401
    http.tokens.clear()
    fresh = http.login("coord.sonservera")
    headers = {"Authorization": f"Bearer {fresh}"}
    assert http.post("/api/auth/logout", headers=headers).status_code == 204
    assert http.get("/api/tasks", headers=headers).status_code == 401
    wrong = http.post("/api/auth/token", json={"username": "coord.sonservera", "password": "wrong-password"})
    assert wrong.status_code == 401
