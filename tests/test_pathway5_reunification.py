"""Pathway 5, family reunification, over HTTP; and a whole journey from the notification to the return home."""
from __future__ import annotations

from datetime import datetime, timedelta

from workflows.demo import SEVERITY_SCORES

from .conftest import START
from .pathway_driver import task_in_inbox
from .scenario import Case, thrown_payloads

HAND_OFF = {"mesura": "reunificacio"}


def _open(case: Case, process_key: str) -> list[str]:
    """The open tasks of one pathway of the case, as the case page shows them."""
    return sorted(t["element_id"] for t in case.view()["open_tasks"] if t["process_key"] == process_key)


def _instance(case: Case, instance_id: int) -> dict:
    response = case.http.get(f"/api/instances/{instance_id}", case.supervisor)
    assert response.status_code == 200, response.text
    return response.json()


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _programme(http, camins, birth_date="2015-04-01") -> Case:
    """A fresh case handed to reunification; the programme is set and the first review is scheduled."""
    case = Case(http, camins, "Manacor", birth_date)
    [instance_id] = case.send("inici_reunificacio", HAND_OFF)
    [reunificacio] = case.instances("reunificacio")
    assert reunificacio.id == instance_id
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("family_reunification", "tutela")
    assert _open(case, "reunificacio") == ["p5_programa_reunificacio"]
    task_in_inbox(http, "cm.llevant", case.reference, "p5_programa_reunificacio")
    limit = case.clocks()["temporary_measure_limit"]
    assert limit["status"] == "on_time" and limit["due_at"].startswith("2028-11-20")  # 2 years (art. 146)
    case.do("p5_programa_reunificacio", regim_visites="supervisades_punt_trobada", intervencio_psicoterapeutica=True)
    assert case.thrown()[-1] == "revisio_programada"
    [review] = case.instances("revisio")
    assert review.parent_instance_id == reunificacio.id
    assert _open(case, "reunificacio") == []
    return case


def _review(case: Case, manual_clock, *, keep_going: bool, result: str = "en_curs") -> None:
    """Wait for the scheduled review (whatever its interval) and do it as the IMAS professional of reference."""
    [timer] = _instance(case, case.instances("revisio")[-1].id)["timers"]
    assert "revisio_imas" not in _open(case, "revisio")
    case.wait(manual_clock, _at(timer["due_at"]) - manual_clock.now() + timedelta(hours=1))
    task_in_inbox(case.http, "cm.llevant", case.reference, "revisio_imas")
    case.do("revisio_imas", continuar_revisions=keep_going, resultat=result)


def _recipients(case: Case) -> list[str]:
    return [c["recipient"] for c in case.view()["communications"]]


def _follow_up_year(case: Case, manual_clock) -> None:
    """The year of follow-up after the return (art. 149.4): closing is offered only when it is over."""
    followup = case.clocks()["post_return_followup"]
    assert followup["status"] == "on_time"
    one_year = _at(followup["due_at"])
    assert one_year - _at(followup["started_at"]) in (timedelta(days=365), timedelta(days=366))
    # A minimum, not a deadline: it is never "at risk", it is simply not over yet.
    assert case.wait(manual_clock, one_year - manual_clock.now() - timedelta(days=60)) == 0
    assert case.clocks()["post_return_followup"]["status"] == "on_time"
    assert case.wait(manual_clock, timedelta(days=59)) == 0
    assert _open(case, "reunificacio") == []
    assert case.wait(manual_clock, timedelta(days=1, hours=1)) == 1
    assert _open(case, "reunificacio") == ["p5_tancar_seguiment"]
    task_in_inbox(case.http, "cm.llevant", case.reference, "p5_tancar_seguiment")


def test_reviews_real_improvement_return_home_and_one_year_follow_up(http, camins, manual_clock):
    case = _programme(http, camins)
    [first] = case.instances("revisio")
    [timer] = _instance(case, first.id)["timers"]
    assert timer["due_at"].startswith("2027-05-20")  # 6 months for a child of 11 (art. 146)
    _review(case, manual_clock, keep_going=True)
    _review(case, manual_clock, keep_going=False, result="objectius_assolits")
    assert [i.status for i in case.instances("revisio")] == ["completed", "completed"]
    assert case.thrown()[-1] == "revisions_finalitzades"

    # The return needs a technical report of real improvement (LO 1/1996 art. 19 bis.3).
    assert _open(case, "reunificacio") == ["p5_informe_millora"]
    task_in_inbox(http, "psi.imas", case.reference, "p5_informe_millora")
    case.do("p5_informe_millora", millora_real=True)
    assert _open(case, "reunificacio") == ["p5_retorn_llar"]
    case.do("p5_retorn_llar", data_retorn=manual_clock.now().date().isoformat())
    assert case.clocks()["temporary_measure_limit"]["status"] == "met"  # back home within the 2 years
    communications = case.view()["communications"]
    assert [c["recipient"] for c in communications] == ["Fiscalia de Menors"]
    assert "Retorn" in communications[0]["subject"]
    assert case.view()["status"] == "family_reunification"  # the follow-up runs inside the pathway

    _follow_up_year(case, manual_clock)
    case.do("p5_tancar_seguiment", resultat_seguiment="estable")
    assert case.thrown()[-1] == "reunificacio_tancada"
    assert thrown_payloads(case, "reunificacio_tancada") == [{"data_retorn": "2027-11-20",
                                                              "resultat_seguiment": "estable"}]
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("closed_reunified", "none")
    assert not [t for t in view["open_tasks"] if t["process_key"] in ("reunificacio", "revisio")]
    assert case.instances("reunificacio")[0].status == "completed"
    followup = case.clocks()["post_return_followup"]
    # The follow-up lasted the year the law asks for (at least 1 year, art. 149.4).
    assert followup["status"] == "met"
    assert _at(followup["stopped_at"]) >= _at(followup["due_at"])


def test_no_real_improvement_permanent_solution_adoption_for_a_toddler(http, camins, manual_clock):
    case = _programme(http, camins, birth_date="2025-01-10")  # 1 year old
    [review] = case.instances("revisio")
    [timer] = _instance(case, review.id)["timers"]
    assert timer["due_at"].startswith("2027-02-20")  # 3 months under age 3 (art. 146)
    _review(case, manual_clock, keep_going=False, result="sense_millora")

    case.do("p5_informe_millora", millora_real=False)
    assert _open(case, "reunificacio") == ["p5_solucio_permanent"]
    task_in_inbox(http, "cap.llevant", case.reference, "p5_solucio_permanent")
    case.do("p5_solucio_permanent", solucio_permanent="adopcio")
    assert case.clocks()["temporary_measure_limit"]["status"] == "met"
    communications = case.view()["communications"]
    assert [c["recipient"] for c in communications] == ["Fiscalia de Menors"]  # LO 1/1996 art. 12.6
    assert "solució permanent" in communications[0]["subject"]
    assert case.thrown()[-1] == "inici_adopcio"
    assert thrown_payloads(case, "inici_adopcio") == [{"mesura": "adopcio"}]
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("adoption", "tutela")
    [reunificacio] = case.instances("reunificacio")
    [adopcio] = [i for i in view["instances"] if i["process_key"] == "adopcio"]
    assert reunificacio.status == "completed" and adopcio["parent_instance_id"] == reunificacio.id
    assert "p5_retorn_llar" not in (reunificacio.completed_elements or [])


def test_two_years_without_return_permanent_foster_care(http, camins, manual_clock):
    case = _programme(http, camins)
    for _ in range(3):  # 6-monthly reviews, the programme goes on
        _review(case, manual_clock, keep_going=True)
    assert case.clocks()["temporary_measure_limit"]["status"] == "on_time"
    two_years = START.replace(year=START.year + 2)
    case.wait(manual_clock, two_years - timedelta(days=100) - manual_clock.now())
    assert case.clocks()["temporary_measure_limit"]["status"] == "at_risk"
    assert _open(case, "reunificacio") == []

    # The limit of temporary measures (art. 146) interrupts the programme: a permanent solution is due.
    case.wait(manual_clock, two_years + timedelta(hours=1) - manual_clock.now())
    assert _open(case, "reunificacio") == ["p5_solucio_permanent"]
    assert case.clocks()["temporary_measure_limit"]["status"] == "breached"
    case.do("p5_solucio_permanent", solucio_permanent="acolliment_permanent")
    assert case.clocks()["temporary_measure_limit"]["status"] == "late"
    assert _recipients(case) == ["Fiscalia de Menors"]
    assert case.thrown()[-1] == "inici_acolliment"
    assert thrown_payloads(case, "inici_acolliment") == [{"mesura": "acolliment_familiar",
                                                          "tipus_acolliment": "permanent"}]
    view = case.view()
    assert (view["status"], view["legal_status"]) == ("foster_care", "tutela")
    [reunificacio] = case.instances("reunificacio")
    [acolliment] = [i for i in view["instances"] if i["process_key"] == "acolliment"]
    assert reunificacio.status == "completed" and acolliment["parent_instance_id"] == reunificacio.id
    assert "p5_informe_millora" not in (reunificacio.completed_elements or [])


def test_two_year_limit_ends_the_reviews_of_the_programme(http, camins, manual_clock):
    case = _programme(http, camins)
    for _ in range(3):
        _review(case, manual_clock, keep_going=True)
    case.wait(manual_clock, START.replace(year=START.year + 2) + timedelta(hours=1) - manual_clock.now())
    case.do("p5_solucio_permanent", solucio_permanent="acolliment_permanent")
    assert case.thrown()[-1] == "inici_acolliment"
    # The programme is over: its review chain is cancelled with it, so no review task of an ended
    # programme reaches a professional, and no stray result reaches the foster-care pathway.
    assert [i.status for i in case.instances("revisio") if i.status in ("created", "running")] == []
    assert "cancelled" in [i.status for i in case.instances("revisio")]
    assert not any(e.startswith("revisio_") for e in case.open_elements())


def test_journey_from_notification_to_return_home(http, camins, manual_clock):
    case = Case(http, camins, "Son Servera", "2016-09-09")
    assert case.view()["status"] == "notified"
    statuses = []

    # Pathway 1: detection.
    case.do("registre_notificacio")
    case.do("valorar_urgencia", perill_immediat=False)
    statuses.append(case.view()["status"])
    # Pathway 2: investigation, graded severe; IMAS accepts.
    case.do("visita_domiciliaria")
    case.do("informe_social")
    case.do("informe_educatiu")
    case.do("valoracio_gravetat", **SEVERITY_SCORES["greu"])
    case.do("validar_valoracio", valoracio_validada=True)
    case.do("decisio_imas", imas_accepta=True)
    view = case.view()
    statuses.append(view["status"])
    assert view["severity"] == "greu"

    # Pathway 4: IMAS protection, hearing held, desemparament declared, reunification chosen.
    assert _open(case, "proteccio") == ["p4_diligencies_previes"]
    case.wait(manual_clock, timedelta(days=7))
    case.do("p4_diligencies_previes")
    case.do("p4_instruccio")
    case.wait(manual_clock, timedelta(days=6))
    case.send("audiencia_celebrada", {"compareixenca": True})
    case.do("p4_proposta_comissio", sentit_proposta="declarar_desemparament")
    case.do("p4_resolucio_comissio", desemparament_declarat=True)
    case.do("p4_pip")
    case.do("p4_mesura", mesura="reunificacio")
    view = case.view()
    statuses.append(view["status"])
    assert view["legal_status"] == "tutela"

    # Pathway 5: programme, one review, improvement, return home, a year of follow-up.
    case.do("p5_programa_reunificacio")
    _review(case, manual_clock, keep_going=False, result="objectius_assolits")
    case.do("p5_informe_millora", millora_real=True)
    case.do("p5_retorn_llar", data_retorn=manual_clock.now().date().isoformat())
    _follow_up_year(case, manual_clock)
    case.do("p5_tancar_seguiment", resultat_seguiment="estable")
    view = case.view()
    statuses.append(view["status"])
    assert statuses == ["investigation", "imas_protection", "family_reunification", "closed_reunified"]
    assert view["legal_status"] == "none" and view["open_tasks"] == []

    # The case page lists every instance of the journey, each with the instance that started it.
    instances = view["instances"]
    by_key = {i["process_key"]: i for i in instances}
    assert [i["process_key"] for i in instances] == ["deteccio", "investigacio", "proteccio", "reunificacio",
                                                     "revisio"]
    assert by_key["deteccio"]["parent_instance_id"] is None
    assert by_key["investigacio"]["parent_instance_id"] == by_key["deteccio"]["id"]
    assert by_key["proteccio"]["parent_instance_id"] == by_key["investigacio"]["id"]
    assert by_key["reunificacio"]["parent_instance_id"] == by_key["proteccio"]["id"]
    assert by_key["revisio"]["parent_instance_id"] == by_key["reunificacio"]["id"]
    assert all(i["status"] == "completed" for i in instances), instances
    assert case.thrown() == ["investigacio_iniciada", "derivacio_proteccio_imas", "inici_reunificacio",
                             "revisio_programada", "revisions_finalitzades", "reunificacio_tancada"]

    recipients = _recipients(case)
    assert "RUMI" in recipients
    assert recipients[-4:] == ["Família", "Família", "Fiscalia de Menors", "Fiscalia de Menors"]
    clocks = {c: r["status"] for c, r in case.clocks().items()}
    for clock_id in ("imas_decision", "imas_prior_inquiries", "guardianship_proposal", "resolution_notice",
                     "protection_plan", "temporary_measure_limit"):
        assert clocks[clock_id] == "met", (clock_id, clocks)
    assert clocks["post_return_followup"] == "met"
