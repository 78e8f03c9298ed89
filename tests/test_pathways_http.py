"""A notification travels through detection and assessment to every outcome, over HTTP."""
from __future__ import annotations

import pytest
from sqlalchemy import delete, select

from workflows.demo import SEVERITY_SCORES
from workflows.models import Membership, User

from .pathway_driver import case, notify, task_in_inbox, who_sees, work

OUTCOME = {
    "sense_risc": ("valoracio_sense_risc", "closed_no_risk"),
    "lleu": ("derivacio_intervencio_municipal", "municipal_intervention"),
    "moderat": ("derivacio_intervencio_municipal", "municipal_intervention"),
    "greu": ("derivacio_proteccio_imas", "imas_protection"),
    "desemparament": ("derivacio_proteccio_imas", "imas_protection"),
}


NEXT_PATHWAY = {"sense_risc": [], "lleu": ["intervencio"], "moderat": ["intervencio"], "greu": ["proteccio"],
                "desemparament": ["proteccio"]}


def _through_assessment(http, reference: str, severity: str) -> None:
    work(http, "adm.sonservera", reference, "registre_notificacio")
    work(http, "ts.sonservera", reference, "valorar_urgencia")
    work(http, "ts.sonservera", reference, "visita_domiciliaria")
    work(http, "ts.sonservera", reference, "informe_social")
    work(http, "es.sonservera", reference, "informe_educatiu")
    work(http, "ts.sonservera", reference, "valoracio_gravetat", SEVERITY_SCORES[severity])
    work(http, "coord.sonservera", reference, "validar_valoracio")


@pytest.mark.parametrize("severity", list(OUTCOME))
def test_notification_reaches_each_severity_outcome(http, severity):
    reference = notify(http)
    _through_assessment(http, reference, severity)
    if severity in ("greu", "desemparament"):
        work(http, "intake.imas", reference, "decisio_imas")
    message, status = OUTCOME[severity]

    view = case(http, "coord.sonservera", reference)
    assert view["status"] == status
    assert view["severity"] == severity
    deteccio, investigacio, *handed_on = view["instances"]
    assert (deteccio["process_key"], investigacio["process_key"]) == ("deteccio", "investigacio")
    assert deteccio["status"] == investigacio["status"] == "completed"
    assert investigacio["parent_instance_id"] == deteccio["id"]
    # The outcome starts the next pathway of the journey (none after "no risk").
    assert [i["process_key"] for i in handed_on] == NEXT_PATHWAY[severity]
    assert all(i["parent_instance_id"] == investigacio["id"] for i in handed_on)
    thrown = [h["detail"]["name"] for h in view["history"] if h["event"] == "message_thrown"]
    assert thrown == ["investigacio_iniciada", message]
    assert {t["process_key"] for t in view["open_tasks"]} == set(NEXT_PATHWAY[severity])
    recipients = [c["recipient"] for c in view["communications"]]
    assert "RUMI" in recipients


def test_each_task_lands_only_in_the_right_inbox(http):
    reference = notify(http, "Son Servera")
    expected = [
        ("registre_notificacio", ["adm.sonservera"]),
        ("valorar_urgencia", ["ts.sonservera"]),
        ("visita_domiciliaria", ["ts.sonservera"]),
    ]
    for element_id, users in expected:
        assert who_sees(http, reference) == {element_id: users}
        work(http, users[0], reference, element_id)
    # Parallel reports: each in its own professional's inbox.
    assert who_sees(http, reference) == {"informe_social": ["ts.sonservera"], "informe_educatiu": ["es.sonservera"]}
    work(http, "ts.sonservera", reference, "informe_social")
    work(http, "es.sonservera", reference, "informe_educatiu")
    # The assessor is the referent now: continuity sends the grading straight to them.
    assert who_sees(http, reference) == {"valoracio_gravetat": ["ts.sonservera"]}
    work(http, "ts.sonservera", reference, "valoracio_gravetat", SEVERITY_SCORES["greu"])
    assert who_sees(http, reference) == {"validar_valoracio": ["coord.sonservera"]}
    work(http, "coord.sonservera", reference, "validar_valoracio")
    # Severe: the IMAS intake team, island-wide, and nobody in the municipality.
    assert who_sees(http, reference) == {"decisio_imas": ["intake.imas", "intake2.imas"]}


def test_urgent_path_goes_to_imas_intake(http):
    reference = notify(http, "Inca")
    work(http, "adm.inca", reference, "registre_notificacio")
    work(http, "ts.inca", reference, "valorar_urgencia", {"perill_immediat": True, "justificacio": "Lesions."})
    assert who_sees(http, reference) == {"assumir_guarda_provisional": ["intake.imas", "intake2.imas"]}
    task = task_in_inbox(http, "intake.imas", reference, "assumir_guarda_provisional")
    assert task["due_at"].startswith("2026-11-21")  # due in one day (art. 142)
    work(http, "intake.imas", reference, "assumir_guarda_provisional")
    view = case(http, "coord.inca", reference)
    assert view["status"] == "urgent_protection"
    assert view["legal_status"] == "guarda_provisional"
    assert [i["process_key"] for i in view["instances"]] == ["deteccio", "proteccio"]


def test_rejected_validation_returns_to_the_assessor(http):
    reference = notify(http)
    work(http, "adm.sonservera", reference, "registre_notificacio")
    work(http, "ts.sonservera", reference, "valorar_urgencia")
    work(http, "ts.sonservera", reference, "visita_domiciliaria")
    work(http, "ts.sonservera", reference, "informe_social")
    work(http, "es.sonservera", reference, "informe_educatiu")
    work(http, "ts.sonservera", reference, "valoracio_gravetat", SEVERITY_SCORES["lleu"])
    work(http, "coord.sonservera", reference, "validar_valoracio", {"valoracio_validada": False})
    assert who_sees(http, reference) == {"valoracio_gravetat": ["ts.sonservera"]}
    work(http, "ts.sonservera", reference, "valoracio_gravetat", SEVERITY_SCORES["moderat"])
    work(http, "coord.sonservera", reference, "validar_valoracio")
    assert case(http, "coord.sonservera", reference)["severity"] == "moderat"


@pytest.fixture
def social_worker_also_coordinator(camins):
    """ts.manacor also coordinates Manacor for one test; users outlive a test, so the role is taken back."""
    camins.add_membership("ts.manacor", "sscb_coordinator", "Manacor")
    yield
    with camins.db.write() as session:
        user_id = session.scalar(select(User.id).where(User.username == "ts.manacor"))
        session.execute(delete(Membership).where(Membership.user_id == user_id,
                                                 Membership.role == "sscb_coordinator"))


def test_four_eyes_the_assessor_cannot_validate(http, camins, social_worker_also_coordinator):
    reference = notify(http, "Manacor")
    for element_id, user in [("registre_notificacio", "adm.manacor"), ("valorar_urgencia", "ts.manacor"),
                             ("visita_domiciliaria", "ts.manacor"), ("informe_social", "ts.manacor"),
                             ("informe_educatiu", "es.manacor"), ("valoracio_gravetat", "ts.manacor")]:
        work(http, user, reference, element_id)
    task = task_in_inbox(http, "coord.manacor", reference, "validar_valoracio")
    refused = http.post(f"/api/tasks/{task['id']}/complete", "ts.manacor", json={"data": {"valoracio_validada": True}})
    assert refused.status_code == 422
    assert "four eyes" in refused.json()["detail"]
    assert http.post(f"/api/tasks/{task['id']}/claim", "ts.manacor").status_code == 422
    work(http, "coord.manacor", reference, "validar_valoracio")


def test_notifier_submits_and_can_read_nothing(http):
    reference = notify(http)
    assert http.get(f"/api/cases/{reference}", "notificant.escola").status_code == 404
    assert http.get("/api/tasks", "notificant.escola").status_code == 403
    assert http.get("/api/definitions", "notificant.escola").status_code == 403
    instance_id = case(http, "coord.sonservera", reference)["instances"][0]["id"]
    assert http.get(f"/api/instances/{instance_id}", "notificant.escola").status_code == 404


def test_case_outside_territory_is_not_found_and_reads_are_logged(http, camins):
    reference = notify(http, "Son Servera")
    assert http.get(f"/api/cases/{reference}", "coord.inca").status_code == 404
    assert http.get(f"/api/cases/{reference}", "ts.manacor").status_code == 404
    # In scope but with no task on the case yet: need-to-know says no.
    assert http.get(f"/api/cases/{reference}", "es.sonservera").status_code == 404
    assert http.get(f"/api/cases/{reference}", "coord.sonservera").status_code == 200
    from sqlalchemy import select

    from workflows.models import AccessLog
    with camins.db.read() as session:
        rows = session.execute(select(AccessLog.username, AccessLog.action)
                               .where(AccessLog.case_reference == reference)).all()
    assert ("coord.sonservera", "read_case") in rows
    assert not any(user == "coord.inca" for user, _ in rows)


def test_bad_submission_names_the_field_and_changes_nothing(http):
    reference = notify(http)
    task = task_in_inbox(http, "adm.sonservera", reference, "registre_notificacio")
    before = case(http, "coord.sonservera", reference)
    missing = http.post(f"/api/tasks/{task['id']}/complete", "adm.sonservera",
                        json={"data": {"data_recepcio": "2026-11-20"}})
    assert missing.status_code == 422
    assert missing.headers["Content-Type"].startswith("application/problem+json")
    assert "canal" in missing.json()["errors"]
    wrong_type = http.post(f"/api/tasks/{task['id']}/complete", "adm.sonservera",
                           json={"data": {"canal": "telefon", "data_recepcio": 20261120}})
    assert wrong_type.status_code == 422
    assert "data_recepcio" in wrong_type.json()["errors"]
    unknown = http.post(f"/api/tasks/{task['id']}/complete", "adm.sonservera",
                        json={"data": {"canal": "telefon", "data_recepcio": "2026-11-20", "hack": 1}})
    assert unknown.status_code == 422 and "hack" in unknown.json()["errors"]
    after = case(http, "coord.sonservera", reference)
    assert [t["id"] for t in after["open_tasks"]] == [task["id"]]
    assert [h["event"] for h in after["history"]] == [h["event"] for h in before["history"]]


def test_bad_notification_is_rejected_and_nothing_is_written(http, camins):
    bad = http.post("/api/notifications", "notificant.escola", json={
        "municipality": "Atlantis", "child": {"given_name": "A", "family_name": "B", "birth_date": "2015-01-01"},
        "reporter": {"kind": "school"}, "description": "x"})
    assert bad.status_code == 422 and "municipality" in bad.json()["errors"]
    typed = http.post("/api/notifications", "notificant.escola", json={
        "municipality": "Manacor", "child": {"given_name": "A", "family_name": "B", "birth_date": "yesterday"},
        "reporter": {"kind": "pigeon"}, "description": "x"})
    assert typed.status_code == 422
    assert {"child.birth_date", "reporter.kind"} <= set(typed.json()["errors"])
    from sqlalchemy import func, select

    from workflows.models import Case
    with camins.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 0


def test_message_for_unknown_case_is_rejected(http, camins):
    response = http.post("/api/messages", "coord.sonservera",
                         json={"name": "investigacio_iniciada", "case_reference": "EXP-2026-999999", "payload": {}})
    assert response.status_code == 404
    from sqlalchemy import func, select

    from engine.models import Instance
    with camins.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


def test_completing_a_task_twice_concurrently_one_wins(http, camins):
    import threading

    reference = notify(http)
    task = task_in_inbox(http, "adm.sonservera", reference, "registre_notificacio")
    http.login("adm.sonservera")
    barrier = threading.Barrier(2)
    results = []

    def attempt():
        barrier.wait()
        response = http.post(f"/api/tasks/{task['id']}/complete", "adm.sonservera",
                             json={"data": {"canal": "telefon", "data_recepcio": "2026-11-20"}})
        results.append(response.status_code)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409]
    view = case(http, "coord.sonservera", reference)
    completed = [h for h in view["history"] if h["event"] == "task_completed"]
    assert len(completed) == 1
    instance = http.get(f"/api/instances/{view['instances'][0]['id']}", "coord.sonservera").json()
    assert instance["version_counter"] == 3  # created (1), advanced (2), one completion (3)
    assert "registre_notificacio" in instance["completed_elements"]


def test_openapi_and_docs_are_served(http):
    spec = http.get("/api/openapi.json").json()
    for path in ["/api/auth/token", "/api/notifications", "/api/tasks", "/api/tasks/{task_id}/complete",
                 "/api/cases/{reference}", "/api/instances/{instance_id}", "/api/instances", "/api/definitions",
                 "/api/definitions/validate", "/api/messages"]:
        assert path in spec["paths"], path
    assert http.get("/api/docs").status_code == 200
    unauthenticated = http.get("/api/tasks")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["Content-Type"].startswith("application/problem+json")


def test_no_personal_data_reaches_the_logs(http, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    reference = notify(http)
    _through_assessment(http, reference, "greu")
    case(http, "coord.sonservera", reference)
    logged = "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records)
    assert caplog.records, "the scenario should have logged something (HTTP access at least)"
    for personal in ("Aina", "Ferrer Pons", "2015-04-01", "Absències", "CEIP Son Servera"):
        assert personal not in logged


def test_imas_returns_the_case_to_the_municipality(http):
    reference = notify(http)
    _through_assessment(http, reference, "greu")
    work(http, "intake.imas", reference, "decisio_imas", {"imas_accepta": False})
    view = case(http, "coord.sonservera", reference)
    assert view["status"] == "municipal_intervention"
    assert [i["process_key"] for i in view["instances"]] == ["deteccio", "investigacio", "intervencio"]


def test_twenty_days_without_imas_decision_escalates_inside_the_pathway(http, camins, manual_clock):
    from datetime import timedelta

    from tasks.worker import TimerWorker

    reference = notify(http)
    _through_assessment(http, reference, "desemparament")
    manual_clock.advance(timedelta(days=20, minutes=1))
    assert TimerWorker(camins.engine).run_once() == 1
    assert who_sees(http, reference, ["cap.llevant", "cap.ponent", "intake.imas"]) == {
        "decisio_imas": ["intake.imas"], "revisar_termini_vencut": ["cap.llevant"]}
    work(http, "cap.llevant", reference, "revisar_termini_vencut")
    work(http, "intake.imas", reference, "decisio_imas")
    assert case(http, "coord.sonservera", reference)["status"] == "imas_protection"
