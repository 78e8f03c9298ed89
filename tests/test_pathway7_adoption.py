"""Pathway 7, national adoption, over HTTP: the child's side (`adopcio`) with its legal clock and the court
ruling as a message, and the applicants' side (`sollicitants_adopcio`)."""
from __future__ import annotations

from datetime import datetime, timedelta

from .pathway_driver import inbox
from .scenario import Case, instance_view, start_process, thrown_payloads


def _start(http, camins, birth_date: str = "2023-05-05") -> Case:
    case = Case(http, camins, "Manacor", birth_date)
    [instance_id] = case.send("inici_adopcio", {"mesura": "adopcio"})
    [pathway] = case.instances("adopcio")
    assert pathway.id == instance_id and pathway.status == "running"
    assert [t["element_id"] for t in inbox(http, "adopcions.imas", case.reference)] == ["p7_proposta_adoptabilitat"]
    case.do("p7_proposta_adoptabilitat")
    # Adoptability is declared by the Comissió de Desemparament i Tutela, not by the technician.
    assert [t["element_id"] for t in inbox(http, "comissio.tutela", case.reference)] == ["p7_declaracio_adoptabilitat"]
    return case


def _no_ruling_accepted_yet(case: Case) -> None:
    response = case.http.post("/api/messages", case.supervisor,
                              json={"name": "sentencia_judicial", "case_reference": case.reference,
                                    "payload": {"adopcio_constituida": True}})
    assert response.status_code == 404, response.text


def _guarda_with_a_view_to_adoption(case: Case, manual_clock) -> dict:
    """Adoptable, a waiting family assigned, the section head resolves the guarda; returns the jurist's task."""
    case.do("p7_declaracio_adoptabilitat", adoptabilitat_declarada=True)
    case.do("p7_assignar_familia", idoneitat_vigent=True)
    case.do("p7_resolucio_guarda_adoptiva")
    [fiscalia] = case.view()["communications"]
    assert fiscalia["recipient"] == "Fiscalia de Menors" and "guarda amb finalitat d'adopció" in fiscalia["subject"]
    running = case.clocks()["adoption_proposal"]
    assert running["status"] == "on_time" and running["article"] == "Llei 9/2019 art. 146; CC art. 176 bis"
    assert running["due_at"].startswith("2027-02-20")  # 3 months after 20 November 2026
    [task] = inbox(case.http, "jur.imas", case.reference)
    assert task["element_id"] == "p7_proposta_jutjat" and not task["overdue"]
    # The jurist's task is due in three months too.
    assert datetime.fromisoformat(task["due_at"]) - manual_clock.now() in (timedelta(days=d) for d in range(89, 93))
    _no_ruling_accepted_yet(case)  # no ruling can arrive before there is a proposal
    return task


def _propose_to_the_judge(case: Case) -> None:
    case.do("p7_proposta_jutjat")
    court = [c for c in case.view()["communications"] if c["recipient"] == "Jutjat de família"]
    assert [c["subject"] for c in court] == ["Proposta d'adopció"]
    [pathway] = case.instances("adopcio")
    detail = instance_view(case, pathway.id)
    assert detail["active_elements"] == ["sentencia_judicial"]
    assert [m["name"] for m in detail["messages"]] == ["sentencia_judicial"]


def test_adoption_constituted_after_an_on_time_proposal_and_followed_up(http, camins, manual_clock):
    case = _start(http, camins)
    _guarda_with_a_view_to_adoption(case, manual_clock)
    manual_clock.advance(timedelta(days=60))
    assert case.clocks()["adoption_proposal"]["status"] == "on_time"
    _propose_to_the_judge(case)
    assert case.clocks()["adoption_proposal"]["status"] == "met"

    manual_clock.advance(timedelta(days=120))
    [pathway_id] = case.send("sentencia_judicial", {"adopcio_constituida": True}, user="jur.imas")
    assert pathway_id == case.instances("adopcio")[0].id
    # The origin records are kept for 50 years (art. 190.1); then the post-adoption follow-up.
    archive = case.view()["communications"][-1]
    assert archive["recipient"] == "Arxiu d'adopcions de l'IMAS" and "50 anys" in archive["subject"]
    assert "adopcio_constituida" not in case.thrown()
    assert [t["element_id"] for t in inbox(http, "adopcions.imas", case.reference)] == ["p7_seguiment_postadoptiu"]
    case.do("p7_seguiment_postadoptiu", resultat_seguiment="adaptacio_adequada")

    assert case.thrown()[-1] == "adopcio_constituida"
    view = case.view()
    assert view["status"] == "closed_adopted" and view["legal_status"] == "none"
    assert [i["status"] for i in view["instances"] if i["process_key"] == "adopcio"] == ["completed"]
    payload = thrown_payloads(case, "adopcio_constituida")[-1]
    assert payload["adopcio_constituida"] is True and payload["resultat_seguiment"] == "adaptacio_adequada"
    assert [c["recipient"] for c in view["communications"]] == [
        "Fiscalia de Menors", "Jutjat de família", "Arxiu d'adopcions de l'IMAS"]


def test_late_proposal_and_court_refuses_adoption(http, camins, manual_clock):
    case = _start(http, camins)
    _guarda_with_a_view_to_adoption(case, manual_clock)
    manual_clock.advance(timedelta(days=80))
    assert case.clocks()["adoption_proposal"]["status"] == "at_risk"
    manual_clock.advance(timedelta(days=20))
    assert case.clocks()["adoption_proposal"]["status"] == "breached"
    [task] = inbox(http, "jur.imas", case.reference)
    assert task["overdue"] is True
    # The section head of Llevant (Manacor's section) sees the breached clock; Ponent does not.
    breached = http.get("/api/clocks?status=breached", "cap.llevant").json()["items"]
    assert [(c["case_reference"], c["clock_id"]) for c in breached] == [(case.reference, "adoption_proposal")]
    assert http.get("/api/clocks?status=breached", "cap.ponent").json()["items"] == []
    _propose_to_the_judge(case)
    assert case.clocks()["adoption_proposal"]["status"] == "late"

    case.send("sentencia_judicial", {"adopcio_constituida": False}, user="jur.imas")
    assert case.thrown()[-1] == "adopcio_no_constituida"
    assert thrown_payloads(case, "adopcio_no_constituida")[-1]["motiu"] == "sentencia_desfavorable"
    view = case.view()
    assert view["status"] == "adoption_not_constituted"
    assert "Arxiu d'adopcions de l'IMAS" not in [c["recipient"] for c in view["communications"]]
    assert not [e for e in case.open_elements() if e.startswith("p7_")]
    assert [i["status"] for i in view["instances"] if i["process_key"] == "adopcio"] == ["completed"]


def test_adoptability_not_declared(http, camins, manual_clock):
    case = _start(http, camins)
    case.do("p7_declaracio_adoptabilitat", adoptabilitat_declarada=False)
    assert case.thrown() == ["adopcio_no_constituida"]
    assert thrown_payloads(case, "adopcio_no_constituida")[-1]["motiu"] == "adoptabilitat_no_declarada"
    view = case.view()
    assert view["status"] == "adoption_not_constituted"
    assert view["communications"] == []
    assert "adoption_proposal" not in case.clocks()  # no guarda, no 3-month clock
    assert not [e for e in case.open_elements() if e.startswith("p7_")]
    _no_ruling_accepted_yet(case)


def test_adoption_proposal_clock_runs_from_the_guarda_resolution(http, camins, manual_clock):
    case = _start(http, camins)
    case.do("p7_declaracio_adoptabilitat", adoptabilitat_declarada=True)
    case.do("p7_assignar_familia", idoneitat_vigent=True)
    manual_clock.advance(timedelta(days=40))  # the section head signs the guarda 40 days later
    case.do("p7_resolucio_guarda_adoptiva")
    signed = manual_clock.now()
    manual_clock.advance(timedelta(days=80))  # within the jurist's three months
    [task] = inbox(http, "jur.imas", case.reference)
    assert not task["overdue"]
    case.do("p7_proposta_jutjat")
    clock = case.clocks()["adoption_proposal"]
    assert clock["started_at"] == signed.isoformat() and clock["status"] == "met"


def _applicants(case: Case) -> int:
    started = start_process(case, "sollicitants_adopcio")
    assert started["status"] == "running" and started["active_elements"] == ["p7_sessio_informativa_adopcio"]
    case.do("p7_sessio_informativa_adopcio", nombre_sollicitants=2)
    case.do("p7_formacio_sollicitants", hores_formacio_adopcio=30)
    # Suitability is declared by the IMAS psychologist before any proposal (CC 176.3).
    assert [t["element_id"] for t in inbox(case.http, "psi.imas", case.reference)] == ["p7_declaracio_idoneitat"]
    assert inbox(case.http, "adopcions.imas", case.reference) == []
    return started["id"]


def test_applicants_declared_suitable_join_the_waiting_list(http, camins, manual_clock):
    case = Case(http, camins, "Inca", "2020-01-01")
    instance_id = _applicants(case)
    case.do("p7_declaracio_idoneitat", idonia=True)
    detail = instance_view(case, instance_id)
    assert detail["status"] == "completed" and "fi_llista_espera" in detail["completed_elements"]
    view = case.view()
    assert view["communications"] == [] and view["status"] == "notified" and case.thrown() == []


def test_applicants_declared_unsuitable_are_told(http, camins, manual_clock):
    case = Case(http, camins, "Inca", "2020-01-01")
    instance_id = _applicants(case)
    case.do("p7_declaracio_idoneitat", idonia=False)
    detail = instance_view(case, instance_id)
    assert detail["status"] == "completed" and "fi_sollicitants_no_idonis" in detail["completed_elements"]
    [sent] = case.view()["communications"]
    assert sent["recipient"] == "Sol·licitants" and sent["subject"] == "Declaració de no idoneïtat per adoptar"
    assert case.view()["status"] == "notified" and case.thrown() == []
