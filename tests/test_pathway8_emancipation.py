"""Pathway 8, emancipation, over HTTP: opens at 16 with the young person's consent, a timer on the 18th
birthday, post-18 support and a follow-up of at least a year after leaving the centre (art. 184.1)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .pathway_driver import inbox
from .scenario import Case, instance_view, thrown_payloads

# 15 years and 10 months old on 20 November 2026, the first day of every test.
BORN = "2011-01-20"
SIXTEENTH = datetime(2027, 1, 20, tzinfo=UTC)
EIGHTEENTH = datetime(2029, 1, 20, tzinfo=UTC)


def _p8_tasks(case: Case) -> list[str]:
    return [e for e in case.open_elements() if e.startswith("p8_")]


def _timers(case: Case) -> list[tuple[str, str]]:
    [pathway] = case.instances("emancipacio")
    return [(t["element_id"], t["due_at"]) for t in instance_view(case, pathway.id)["timers"]
            if t["status"] == "waiting"]


def _wait_until(case: Case, manual_clock, moment: datetime) -> int:
    return case.wait(manual_clock, moment - manual_clock.now())


def _to_eighteen(http, camins, manual_clock) -> Case:
    """The young person aged 15y10m: nothing until 16, consent, plan, programme, then the 18th birthday."""
    case = Case(http, camins, "Son Servera", BORN)
    [instance_id] = case.send("inici_emancipacio", {"mesura": "emancipacio"})
    assert case.instances("emancipacio")[0].id == instance_id
    # Under 16: the pathway waits for the 16th birthday, computed from the birth date on the case.
    assert _timers(case) == [("espera_setze_anys", SIXTEENTH.isoformat())]
    assert _p8_tasks(case) == [] and inbox(http, "emancipacio.imas", case.reference) == []
    assert _wait_until(case, manual_clock, datetime(2026, 12, 25, tzinfo=UTC)) == 0
    assert _wait_until(case, manual_clock, SIXTEENTH - timedelta(minutes=1)) == 0  # the eve, at 23:59
    assert _p8_tasks(case) == []

    assert _wait_until(case, manual_clock, SIXTEENTH + timedelta(hours=9)) == 1  # the birthday morning
    [task] = inbox(http, "emancipacio.imas", case.reference)
    assert task["element_id"] == "p8_consentiment"
    detail = http.get(f"/api/tasks/{task['id']}", "emancipacio.imas").json()
    assert detail["legal_basis"] == "Llei 9/2019 art. 185; LO 1/1996 art. 22 bis"
    case.do("p8_consentiment", consentiment=True)
    case.do("p8_pla_autonomia", objectiu_principal="formacio")
    case.do("p8_admissio_programa", programa="pis_autonomia")

    # In the programme until the 18th birthday: the timer is on the birthday, not the day before.
    assert _timers(case) == [("espera_divuit_anys", EIGHTEENTH.isoformat())]
    assert _wait_until(case, manual_clock, EIGHTEENTH - timedelta(hours=12)) == 0  # noon of the day before
    assert _p8_tasks(case) == []
    assert "post_care_followup" not in case.clocks()
    assert _wait_until(case, manual_clock, EIGHTEENTH + timedelta(hours=9)) == 1
    assert _p8_tasks(case) == ["p8_suport_post18"]
    return case


def test_fifteen_year_old_opens_at_sixteen_consents_and_is_followed_up_a_year_after_eighteen(
        http, camins, manual_clock):
    case = _to_eighteen(http, camins, manual_clock)
    followup = case.clocks()["post_care_followup"]
    assert followup["article"] == "Llei 9/2019 art. 184.1" and followup["status"] == "on_time"
    assert followup["started_at"] == (EIGHTEENTH + timedelta(hours=9)).isoformat()
    assert followup["due_at"] == (EIGHTEENTH + timedelta(hours=9)).replace(year=2030).isoformat()

    manual_clock.advance(timedelta(days=7))  # leaves the centre a week after turning 18
    case.do("p8_suport_post18", data_sortida_centre="2029-01-27", habitatge_post18="pis_emancipacio",
            xarxa_emancipacio=True)
    left = manual_clock.now()
    assert _timers(case) == [("espera_seguiment", left.replace(year=2030).isoformat())]
    assert _wait_until(case, manual_clock, left.replace(year=2030) - timedelta(days=1)) == 0
    assert _p8_tasks(case) == []
    assert case.thrown() == []  # still in the pathway: no end message yet
    assert _wait_until(case, manual_clock, left.replace(year=2030) + timedelta(minutes=1)) == 1
    assert _p8_tasks(case) == ["p8_tancar_seguiment"]
    case.do("p8_tancar_seguiment", situacio_final="autonomia_assolida")

    assert case.thrown() == ["emancipacio_finalitzada"]
    view = case.view()
    assert view["status"] == "closed_emancipated" and view["legal_status"] == "none"
    assert [i["status"] for i in view["instances"] if i["process_key"] == "emancipacio"] == ["completed"]
    payload = thrown_payloads(case, "emancipacio_finalitzada")[-1]
    assert payload == {"situacio_final": "autonomia_assolida", "data_sortida_centre": "2029-01-27"}
    assert case.clocks()["post_care_followup"]["stopped_at"] == manual_clock.now().isoformat()
    assert _p8_tasks(case) == []


def test_fifteen_year_old_refuses_emancipation_at_sixteen(http, camins, manual_clock):
    case = Case(http, camins, "Son Servera", BORN)
    case.send("inici_emancipacio", {"mesura": "emancipacio"})
    assert _wait_until(case, manual_clock, SIXTEENTH + timedelta(days=3)) == 1
    case.do("p8_consentiment", consentiment=False, data_consentiment="2027-01-23")
    assert case.thrown() == ["emancipacio_rebutjada"]
    assert thrown_payloads(case, "emancipacio_rebutjada") == [{"consentiment": False,
                                                               "data_consentiment": "2027-01-23"}]
    view = case.view()
    assert view["status"] == "emancipation_refused"
    assert [i["status"] for i in view["instances"] if i["process_key"] == "emancipacio"] == ["completed"]
    assert _p8_tasks(case) == [] and case.clocks() == {}


def test_seventeen_year_old_is_asked_for_consent_at_once_and_refuses(http, camins, manual_clock):
    case = Case(http, camins, "Manacor", "2009-03-01")  # 17 years 8 months old
    case.send("inici_emancipacio", {"mesura": "emancipacio"})
    assert _timers(case) == []
    assert [t["element_id"] for t in inbox(http, "emancipacio.imas", case.reference)] == ["p8_consentiment"]
    case.do("p8_consentiment", consentiment=False)
    assert case.thrown() == ["emancipacio_rebutjada"]
    assert case.view()["status"] == "emancipation_refused"


def test_admitted_after_the_eighteenth_birthday_goes_straight_to_post18_support(http, camins, manual_clock):
    case = Case(http, camins, "Manacor", "2008-12-10")  # 18 in twenty days
    case.send("inici_emancipacio", {"mesura": "emancipacio"})
    case.do("p8_consentiment", consentiment=True)
    case.do("p8_pla_autonomia")
    manual_clock.advance(timedelta(days=25))
    case.do("p8_admissio_programa")
    case.wait(manual_clock, timedelta(minutes=1))
    assert _p8_tasks(case) == ["p8_suport_post18"]
    assert case.clocks()["post_care_followup"]["status"] == "on_time"


def test_a_follow_up_closed_right_after_its_year_is_not_a_breach(http, camins, manual_clock):
    case = _to_eighteen(http, camins, manual_clock)
    case.do("p8_suport_post18")
    case.wait(manual_clock, timedelta(days=366))
    assert _p8_tasks(case) == ["p8_tancar_seguiment"]
    assert camins.escalate_breached_clocks() == 0
    case.do("p8_tancar_seguiment")
    assert case.clocks()["post_care_followup"]["status"] == "met"
