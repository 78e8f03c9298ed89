"""Pathway 4, IMAS protection, over HTTP: both ways in, the hearing, the commission, the PIP and the measure."""
from __future__ import annotations

from datetime import timedelta

import pytest

from workflows.demo import SEVERITY_SCORES

from .pathway_driver import inbox, task_in_inbox
from .scenario import Case, thrown_payloads

# What the investigation sends when IMAS accepts a severe case (investigacio.bpmn, fi_proteccio_imas).
REFERRAL = {"gravetat": "greu", "puntuacio": 14, "data_decisio_imas": "2026-11-20"}


def _open(case: Case, process_key: str) -> list[str]:
    """The open tasks of one pathway of the case, as the case page shows them."""
    return sorted(t["element_id"] for t in case.view()["open_tasks"] if t["process_key"] == process_key)


def _recipients(case: Case) -> list[str]:
    return [c["recipient"] for c in case.view()["communications"]]


def _instance(case: Case, instance_id: int) -> dict:
    response = case.http.get(f"/api/instances/{instance_id}", case.supervisor)
    assert response.status_code == 200, response.text
    return response.json()


def _referred(http, camins, municipality="Manacor", birth_date="2015-04-01") -> Case:
    case = Case(http, camins, municipality, birth_date)
    [instance_id] = case.send("derivacio_proteccio_imas", REFERRAL)
    [proteccio] = case.instances("proteccio")
    assert proteccio.id == instance_id
    assert _open(case, "proteccio") == ["p4_diligencies_previes"]
    return case


def _investigated(case: Case, severity: str) -> None:
    """Detection and investigation as in pathways 1 and 2; IMAS accepts the referral."""
    case.do("registre_notificacio")
    case.do("valorar_urgencia", perill_immediat=False)
    case.do("visita_domiciliaria")
    case.do("informe_social")
    case.do("informe_educatiu")
    case.do("valoracio_gravetat", **SEVERITY_SCORES[severity])
    case.do("validar_valoracio", valoracio_validada=True)
    case.do("decisio_imas", imas_accepta=True)
    assert case.thrown()[-1] == "derivacio_proteccio_imas"
    assert _open(case, "proteccio") == ["p4_diligencies_previes"]


def _declared(case: Case) -> None:
    """Ordinary route, hearing held, desemparament declared: the PIP is open."""
    case.do("p4_diligencies_previes")
    case.do("p4_instruccio")
    case.send("audiencia_celebrada", {"compareixenca": True})
    case.do("p4_proposta_comissio", sentit_proposta="declarar_desemparament")
    case.do("p4_resolucio_comissio", desemparament_declarat=True)
    assert _open(case, "proteccio") == ["p4_pip"]


def _hand_off(case: Case, process_key: str) -> dict:
    """The single instance of `process_key`, started by the protection instance, as the case page lists it."""
    [proteccio] = case.instances("proteccio")
    listed = [i for i in case.view()["instances"] if i["process_key"] == process_key]
    assert len(listed) == 1, listed
    assert listed[0]["parent_instance_id"] == proteccio.id
    assert listed[0]["status"] in ("created", "running")
    assert proteccio.status == "completed"
    return listed[0]


def test_ordinary_route_hearing_held_desemparament_declared_then_reunification(http, camins, manual_clock):
    case = _referred(http, camins, "Manacor")
    view = case.view()
    assert (view["status"], view["severity"], view["legal_status"]) == ("imas_protection", "greu", "none")
    # Manacor belongs to the Llevant section: its professional of reference has the task, Ponent does not.
    task = task_in_inbox(http, "cm.llevant", case.reference, "p4_diligencies_previes")
    assert task["due_at"].startswith("2026-12-20")  # 1 month (art. 124.3)
    assert inbox(http, "cm.ponent", case.reference) == []
    inquiries = case.clocks()["imas_prior_inquiries"]
    assert inquiries["status"] == "on_time" and inquiries["due_at"].startswith("2026-12-20")
    assert inquiries["article"] == "Llei 9/2019 art. 124.3"

    assert case.wait(manual_clock, timedelta(days=10)) == 0
    case.do("p4_diligencies_previes")
    assert case.clocks()["imas_prior_inquiries"]["status"] == "met"
    assert _open(case, "proteccio") == ["p4_instruccio"]
    task_in_inbox(http, "jur.imas", case.reference, "p4_instruccio")
    case.do("p4_instruccio")

    # Waiting for the parents' hearing, with a 15-day deadline: no task for anyone meanwhile.
    [proteccio] = case.instances("proteccio")
    waiting = _instance(case, proteccio.id)
    assert [m["name"] for m in waiting["messages"]] == ["audiencia_celebrada"]
    [hearing_deadline] = waiting["timers"]
    assert hearing_deadline["due_at"].startswith("2026-12-15")  # 15 days to hold the hearing
    assert _open(case, "proteccio") == []
    case.wait(manual_clock, timedelta(days=5))
    assert case.send("audiencia_celebrada", {"compareixenca": True}) == [proteccio.id]
    assert _instance(case, proteccio.id)["timers"] == []  # the hearing won the race
    assert _open(case, "proteccio") == ["p4_proposta_comissio"]
    proposal = case.clocks()["guardianship_proposal"]
    assert proposal["status"] == "on_time" and proposal["due_at"].startswith("2026-12-15")  # 10 days (art. 129)
    task = task_in_inbox(http, "cap.llevant", case.reference, "p4_proposta_comissio")
    assert task["due_at"].startswith("2026-12-15")

    case.wait(manual_clock, timedelta(days=3))
    case.do("p4_proposta_comissio", sentit_proposta="declarar_desemparament")
    assert case.clocks()["guardianship_proposal"]["status"] == "met"
    task_in_inbox(http, "comissio.tutela", case.reference, "p4_resolucio_comissio")
    case.do("p4_resolucio_comissio", desemparament_declarat=True)

    # The family is notified at once (48 hours, art. 132.1) and told of its right to oppose; the Fiscalia is informed.
    communications = case.view()["communications"]
    assert [c["recipient"] for c in communications] == ["Família", "Família", "Fiscalia de Menors"]
    assert "desemparament" in communications[0]["subject"]
    assert "LEC art. 780" in communications[1]["subject"]
    assert "desemparament" in communications[2]["subject"]
    # Declared: IMAS holds the tutela from now on, whatever measure follows (art. 130).
    assert case.view()["legal_status"] == "tutela"
    clocks = case.clocks()
    assert clocks["resolution_notice"]["status"] == "met"
    assert clocks["protection_plan"]["status"] == "on_time"
    assert clocks["protection_plan"]["due_at"].startswith("2027-01-08")  # 1 month (art. 148.1)
    assert _open(case, "proteccio") == ["p4_pip"]
    task_in_inbox(http, "cm.llevant", case.reference, "p4_pip")

    case.wait(manual_clock, timedelta(days=20))
    case.do("p4_pip")
    assert case.clocks()["protection_plan"]["status"] == "met"
    case.do("p4_mesura", mesura="reunificacio")

    assert case.thrown()[-1] == "inici_reunificacio"
    assert thrown_payloads(case, "inici_reunificacio") == [{"mesura": "reunificacio"}]
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("family_reunification", "tutela")
    _hand_off(case, "reunificacio")
    assert _open(case, "proteccio") == []
    assert _open(case, "reunificacio") == ["p5_programa_reunificacio"]
    # No clock of the pathway is left running.
    assert {c: r["status"] for c, r in case.clocks().items()} == {
        "imas_prior_inquiries": "met", "guardianship_proposal": "met", "resolution_notice": "met",
        "protection_plan": "met", "temporary_measure_limit": "on_time"}


def test_no_hearing_within_fifteen_days_not_declared_back_to_the_municipality(http, camins, manual_clock):
    case = _referred(http, camins, "Inca")
    # Inca belongs to the Ponent section.
    task_in_inbox(http, "cm.ponent", case.reference, "p4_diligencies_previes")
    assert inbox(http, "cm.llevant", case.reference) == []

    case.wait(manual_clock, timedelta(days=26))
    assert case.clocks()["imas_prior_inquiries"]["status"] == "at_risk"
    case.wait(manual_clock, timedelta(days=9))
    assert case.clocks()["imas_prior_inquiries"]["status"] == "breached"
    case.do("p4_diligencies_previes")
    assert case.clocks()["imas_prior_inquiries"]["status"] == "late"
    case.do("p4_instruccio")

    # The parents never come: nothing happens before the 15 days of the hearing are over.
    assert case.wait(manual_clock, timedelta(days=14)) == 0
    assert _open(case, "proteccio") == []
    assert case.wait(manual_clock, timedelta(days=2)) == 1
    assert _open(case, "proteccio") == ["p4_incompareixenca"]
    task_in_inbox(http, "jur.imas", case.reference, "p4_incompareixenca")
    case.do("p4_incompareixenca", citacio_acreditada=True)

    # The proposal reaches the commission after 11 days: the 10-day clock says so.
    task_in_inbox(http, "cap.ponent", case.reference, "p4_proposta_comissio")
    case.wait(manual_clock, timedelta(days=11))
    assert case.clocks()["guardianship_proposal"]["status"] == "breached"
    overdue = task_in_inbox(http, "cap.ponent", case.reference, "p4_proposta_comissio")
    assert overdue["overdue"] is True
    case.do("p4_proposta_comissio", sentit_proposta="no_declarar")
    assert case.clocks()["guardianship_proposal"]["status"] == "late"
    case.do("p4_resolucio_comissio", desemparament_declarat=False)

    # Not declared: the section head returns the case to the municipal services; the Fiscalia is informed.
    assert _open(case, "proteccio") == ["p4_retorn_municipal"]
    task_in_inbox(http, "cap.ponent", case.reference, "p4_retorn_municipal")
    case.do("p4_retorn_municipal", gravetat_retorn="moderat")
    communications = case.view()["communications"]
    assert [c["recipient"] for c in communications] == ["Fiscalia de Menors"]
    assert "no declaració" in communications[0]["subject"]
    assert case.thrown()[-1] == "derivacio_intervencio_municipal"
    assert thrown_payloads(case, "derivacio_intervencio_municipal") == [
        {"gravetat": "moderat", "puntuacio": 14, "retornat_per_imas": True}]
    view = case.view()
    assert (view["status"], view["severity"], view["legal_status"]) == ("municipal_intervention", "moderat", "none")
    _hand_off(case, "intervencio")
    assert _open(case, "intervencio") == ["elaborar_projecte_intervencio"]
    task_in_inbox(http, "ts.inca", case.reference, "elaborar_projecte_intervencio")
    # Nothing was declared: no notice, no PIP, no clock of a measure; the municipal project's clock runs.
    assert {c: r["status"] for c, r in case.clocks().items()} == {
        "imas_prior_inquiries": "late", "guardianship_proposal": "late", "intervention_project": "on_time"}


def test_urgent_route_diligences_late_no_residential_care_under_three_then_adoption(http, camins, manual_clock):
    case = Case(http, camins, "Son Servera", "2025-06-01")  # 1 year old
    # Immediate danger at detection: IMAS assumes the provisional guardianship and the urgent route starts.
    case.do("registre_notificacio")
    case.do("valorar_urgencia", perill_immediat=True)
    case.do("assumir_guarda_provisional", data_guarda="2026-11-20", mesura_immediata="acolliment_urgencia")
    assert case.thrown() == ["proteccio_urgent"]
    [deteccio] = case.instances("deteccio")
    [proteccio] = case.instances("proteccio")
    assert proteccio.parent_instance_id == deteccio.id and deteccio.status == "completed"
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("urgent_protection", "guarda_provisional")
    # The urgent route starts with the diligences of the provisional guardianship, no prior inquiries.
    assert _open(case, "proteccio") == ["p4_diligencies_urgents"]
    task = task_in_inbox(http, "intake.imas", case.reference, "p4_diligencies_urgents")
    assert task["due_at"].startswith("2026-12-05")  # 15 days (art. 142)
    clocks = case.clocks()
    assert set(clocks) == {"urgent_diligences"}
    assert clocks["urgent_diligences"]["due_at"].startswith("2026-12-05")

    case.wait(manual_clock, timedelta(days=13))
    assert case.clocks()["urgent_diligences"]["status"] == "at_risk"
    case.wait(manual_clock, timedelta(days=3))
    assert case.clocks()["urgent_diligences"]["status"] == "breached"
    case.do("p4_diligencies_urgents", recurs_guarda="acolliment_urgencia")
    assert case.clocks()["urgent_diligences"]["status"] == "late"

    # Straight to the commission: no instruction, no hearing.
    assert _open(case, "proteccio") == ["p4_proposta_comissio"]
    case.do("p4_proposta_comissio", sentit_proposta="declarar_desemparament")
    case.do("p4_resolucio_comissio", desemparament_declarat=True)
    assert _recipients(case)[-3:] == ["Família", "Família", "Fiscalia de Menors"]
    case.do("p4_pip")

    # No residential care under 3 (LO 1/1996 art. 21.3): the choice comes back.
    case.do("p4_mesura", mesura="acolliment_residencial")
    assert _open(case, "proteccio") == ["p4_mesura"]
    assert "revisio_programada" not in case.thrown()
    assert case.instances("revisio") == []
    assert case.view()["status"] == "urgent_protection"

    case.do("p4_mesura", mesura="adopcio")
    assert case.thrown()[-1] == "inici_adopcio"
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("adoption", "tutela")
    _hand_off(case, "adopcio")


def test_emancipation_only_from_sixteen_computed_at_each_choice(http, camins, manual_clock):
    # Turns 16 tomorrow.
    case = _referred(http, camins, "Manacor", "2010-11-21")
    _declared(case)
    case.do("p4_pip")
    case.do("p4_mesura", mesura="emancipacio")
    assert _open(case, "proteccio") == ["p4_mesura"]
    assert "inici_emancipacio" not in case.thrown()
    assert case.instances("emancipacio") == []

    # The age is computed again at each choice, from the birth date on the case: tomorrow it is allowed.
    case.wait(manual_clock, timedelta(days=1))
    case.do("p4_mesura", mesura="emancipacio")
    assert case.thrown()[-1] == "inici_emancipacio"
    assert case.view()["status"] == "emancipation"
    _hand_off(case, "emancipacio")


@pytest.mark.parametrize("mesura, message, status, process_key", [
    ("acolliment_familiar", "inici_acolliment", "foster_care", "acolliment"),
    ("adopcio", "inici_adopcio", "adoption", "adopcio"),
])
def test_each_family_measure_hands_on_to_its_pathway(http, camins, manual_clock, mesura, message, status,
                                                      process_key):
    case = _referred(http, camins, "Palma", "2019-02-10")
    _declared(case)
    case.do("p4_pip")
    case.do("p4_mesura", mesura=mesura)
    thrown = case.thrown()
    assert thrown[-1] == message
    assert thrown_payloads(case, message) == [{"mesura": mesura}]
    assert [m for m in thrown if m.startswith("inici_")] == [message]
    view = case.view()
    assert (view["status"], view["legal_status"]) == (status, "tutela")
    started = _hand_off(case, process_key)
    assert any(t["instance_id"] == started["id"] for t in view["open_tasks"]), view["open_tasks"]


def test_residential_care_from_three_with_imas_reviews_then_reunification(http, camins, manual_clock):
    # Turns 3 on the day the measure is chosen: residential care is allowed, reviews every 6 months.
    case = Case(http, camins, "Manacor", "2023-11-20")
    _investigated(case, "greu")
    assert case.view()["status"] == "imas_protection"
    _declared(case)
    case.do("p4_pip")
    case.do("p4_mesura", mesura="acolliment_residencial")
    assert case.thrown()[-1] == "revisio_programada"
    assert thrown_payloads(case, "revisio_programada") == [
        {"ambit": "imas", "numero": 1, "data_naixement": "2023-11-20"}]
    [proteccio] = case.instances("proteccio")
    [first] = case.instances("revisio")
    assert first.parent_instance_id == proteccio.id
    assert proteccio.status == "running"
    assert case.view()["status"] == "imas_protection"
    [timer] = _instance(case, first.id)["timers"]
    assert timer["element_id"] == "espera_revisio"
    assert timer["due_at"].startswith("2027-05-20")  # 6 months: the child is 3 (art. 146)

    assert case.wait(manual_clock, timedelta(days=170)) == 0
    assert _open(case, "revisio") == []
    assert case.wait(manual_clock, timedelta(days=12)) == 1
    task_in_inbox(http, "cm.llevant", case.reference, "revisio_imas")
    case.do("revisio_imas", continuar_revisions=True, resultat="en_curs")
    first, second = case.instances("revisio")
    assert first.status == "completed" and second.parent_instance_id == first.id
    assert case.instances("proteccio")[0].status == "running"

    case.wait(manual_clock, timedelta(days=185))
    case.do("revisio_imas", continuar_revisions=False, resultat="objectius_assolits")
    assert case.thrown()[-2:] == ["revisions_finalitzades", "inici_reunificacio"]
    assert thrown_payloads(case, "inici_reunificacio") == [{"mesura": "acolliment_residencial"}]
    assert case.view()["legal_status"] == "tutela"
    assert [i.status for i in case.instances("revisio")] == ["completed", "completed"]
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("family_reunification", "tutela")
    _hand_off(case, "reunificacio")
    assert _open(case, "reunificacio") == ["p5_programa_reunificacio"]
