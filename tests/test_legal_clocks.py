"""Legal clocks: started and stopped by the diagram, at risk, breached, escalated to the supervisor."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from workflows import clocks

from .pathway_driver import task_in_inbox, to_imas_decision, work


def _clock(http, user, reference, clock_id):
    response = http.get(f"/api/cases/{reference}/clocks", user)
    assert response.status_code == 200, response.text
    matches = [c for c in response.json()["items"] if c["clock_id"] == clock_id]
    assert len(matches) == 1, response.json()
    return matches[0]


def test_imas_decision_clock_on_time_at_risk_breached(http, camins, manual_clock):
    reference = to_imas_decision(http)
    clock = _clock(http, "coord.sonservera", reference, "imas_decision")
    assert clock["status"] == "on_time" and clock["article"] == "Llei 9/2019 art. 120.1"
    assert clock["due_at"].startswith("2026-12-10")  # 20 days after 20 November

    manual_clock.advance(timedelta(days=17))  # 85 % of the time gone
    assert _clock(http, "coord.sonservera", reference, "imas_decision")["status"] == "at_risk"
    at_risk = http.get("/api/clocks?status=at_risk", "cap.llevant").json()["items"]
    assert [c["case_reference"] for c in at_risk] == [reference]

    manual_clock.advance(timedelta(days=4))
    assert _clock(http, "coord.sonservera", reference, "imas_decision")["status"] == "breached"
    breached = http.get("/api/clocks?status=breached", "cap.llevant").json()["items"]
    assert [c["clock_id"] for c in breached] == ["imas_decision"]
    # Pathway 2 escalates this breach with its own boundary timer: no second task from the clock.
    assert camins.escalate_breached_clocks() == 0
    history = http.get(f"/api/cases/{reference}", "coord.sonservera").json()["history"]
    assert [h["detail"]["clock_id"] for h in history if h["event"] == "clock_breached"] == ["imas_decision"]
    # Deciding stops the clock, late.
    work(http, "intake.imas", reference, "decisio_imas")
    assert _clock(http, "coord.sonservera", reference, "imas_decision")["status"] == "late"


def test_imas_clock_breach_goes_to_the_section_head(http, camins, manual_clock):
    from .scenario import Case

    case = Case(http, camins, "Manacor")
    case.send("derivacio_proteccio_imas", {"gravetat": "greu", "puntuacio": 12})
    assert case.clocks()["imas_prior_inquiries"]["status"] == "on_time"
    manual_clock.advance(timedelta(days=32))  # prior inquiries take at most a month (art. 124.3)
    assert case.clocks()["imas_prior_inquiries"]["status"] == "breached"
    assert camins.escalate_breached_clocks() == 1
    assert camins.escalate_breached_clocks() == 0  # once only
    task_in_inbox(http, "cap.llevant", case.reference, "escalacio_seccio")
    assert http.get(f"/api/tasks?case={case.reference}", "cap.ponent").json()["items"] == []
    history = case.view()["history"]
    assert [h["detail"]["clock_id"] for h in history if h["event"] == "clock_breached"] == ["imas_prior_inquiries"]
    case.do("escalacio_seccio", accio="reclamar")


def test_clock_met_on_time(http, manual_clock):
    reference = to_imas_decision(http)
    manual_clock.advance(timedelta(days=3))
    work(http, "intake.imas", reference, "decisio_imas")
    clock = _clock(http, "coord.sonservera", reference, "imas_decision")
    assert clock["status"] == "met" and clock["stopped_at"] is not None


def test_clocks_are_need_to_know_and_scoped(http):
    reference = to_imas_decision(http)
    assert http.get(f"/api/cases/{reference}/clocks", "coord.inca").status_code == 404
    assert http.get("/api/clocks", "ts.sonservera").status_code == 403
    assert http.get("/api/clocks", "cap.ponent").json()["total"] == 0
    assert http.get("/api/clocks", "cap.llevant").json()["total"] == 1


def test_every_deadline_of_the_domain_is_in_the_catalogue_with_its_article():
    expected = {
        "imas_decision": "art. 120.1", "risk_allegations": "art. 110.4", "risk_proposal": "art. 111",
        "risk_procedure": "art. 101", "intervention_project": "art. 114.2.c", "municipal_review": "art. 117",
        "imas_prior_inquiries": "art. 124.3", "guardianship_proposal": "art. 129", "resolution_notice": "art. 132.1",
        "urgent_diligences": "art. 142", "protection_plan": "art. 148.1", "measure_review": "art. 146",
        "residential_under_6": "art. 21.3", "parents_challenge": "art. 172.2", "court_opposition": "art. 780",
        "temporary_measure_limit": "art. 146", "post_return_followup": "art. 149.4", "foster_fiscalia": "art. 157.5",
        "emergency_foster_limit": "art. 155.5", "temporary_foster_limit": "art. 155.5",
        "adoption_proposal": "176 bis", "post_care_followup": "art. 184.1",
    }
    for clock_id, article in expected.items():
        assert article in clocks.CATALOGUE[clock_id].article, clock_id


@pytest.mark.parametrize("birth, start, due", [
    (date(2024, 1, 10), datetime(2026, 11, 20, tzinfo=UTC), "2027-02-20"),  # 2 y 10 m: 3 months
    (date(2023, 11, 1), datetime(2026, 11, 20, tzinfo=UTC), "2027-05-20"),  # just turned 3: 6 months
])
def test_review_cadence_depends_on_age_when_the_clock_starts(birth, start, due):
    assert clocks.due_at(clocks.CATALOGUE["municipal_review"], start, birth).date().isoformat() == due


def test_unknown_clock_in_a_diagram_is_refused_at_deploy(http):
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "bpmn" / "escalacio.bpmn").read_text()
    broken = source.replace('<spiffworkflow:property name="due_in" value="P2D" />',
                            '<spiffworkflow:property name="clock_start" value="termini_inventat" />', 1)
    form = (Path(__file__).resolve().parent.parent / "bpmn" / "forms" / "escalacio_revisar.form").read_bytes()
    response = http.post("/api/definitions/validate", "analista",
                         files=[("files", ("escalacio.bpmn", broken.encode(), "application/xml")),
                                ("files", ("escalacio_revisar.form", form, "application/json"))])
    assert response.status_code == 422
    assert any("termini_inventat" in p["message"] for p in response.json()["problems"])


def test_municipal_clock_breach_goes_to_the_municipal_coordinator(http, camins, manual_clock):
    from .scenario import Case

    case = Case(http, camins, "Manacor")
    case.send("derivacio_intervencio_municipal", {"gravetat": "moderat", "puntuacio": 7, "retornat_per_imas": False})
    case.do("elaborar_projecte_intervencio")
    case.do("proposar_conveni")
    case.send("negativa_familia", {})
    case.do("iniciar_procediment_risc")
    case.send("al_legacions_presentades", {})
    # The proposal to the commission is due in 10 days (art. 111); nobody writes it.
    manual_clock.advance(timedelta(days=11))
    assert case.clocks()["risk_proposal"]["status"] == "breached"
    assert camins.escalate_breached_clocks() == 1
    assert "escalacio_municipal" in case.open_elements()
    task_in_inbox(http, "coord.manacor", case.reference, "escalacio_municipal")
    assert http.get(f"/api/tasks?case={case.reference}", "coord.sonservera").json()["items"] == []
    case.do("escalacio_municipal", accio="reclamar")
    case.do("proposta_declaracio_risc", proposa_declarar_risc=False)
    assert case.clocks()["risk_proposal"]["status"] == "late"
