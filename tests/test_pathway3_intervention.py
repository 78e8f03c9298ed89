"""Pathway 3, municipal risk intervention, with its chained reviews, over HTTP."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from engine.models import Timer

from .scenario import Case

REFERRAL = {"gravetat": "moderat", "puntuacio": 7, "retornat_per_imas": False}


def _start(http, camins, birth_date="2015-04-01") -> Case:
    case = Case(http, camins, "Manacor", birth_date)
    [instance_id] = case.send("derivacio_intervencio_municipal", REFERRAL)
    assert case.instances("intervencio")[0].id == instance_id
    case.do("elaborar_projecte_intervencio")
    case.do("proposar_conveni")
    return case


def _review(case, manual_clock, *, keep_going: bool, result: str = "en_curs", months: int = 6) -> None:
    element = "revisio_municipal"
    # Nothing to review before the interval has passed.
    assert case.wait(manual_clock, timedelta(days=months * 30 - 10)) == 0
    assert element not in case.open_elements()
    case.wait(manual_clock, timedelta(days=15))
    case.do(element, continuar_revisions=keep_going, resultat=result)


def test_agreement_reviews_and_closure(http, camins, manual_clock):
    case = _start(http, camins)
    case.send("consentiment_familia", {"acord": True})
    case.do("signar_conveni")
    _review(case, manual_clock, keep_going=True)
    _review(case, manual_clock, keep_going=False, result="objectius_assolits")
    case.do("tancar_cas")
    assert case.thrown()[-1] == "intervencio_tancada"
    assert case.view()["status"] == "closed"
    assert [i.status for i in case.instances("revisio")] == ["completed", "completed"]
    clocks = case.clocks()
    # Two six-monthly reviews took the project just past its 12 months (art. 114.2.c): the clock says so.
    assert clocks["intervention_project"]["status"] == "late"


def test_refusal_allegations_risk_declared_then_referral_to_imas(http, camins, manual_clock):
    case = _start(http, camins)
    case.send("negativa_familia", {"motiu": "no accepta"})
    case.do("iniciar_procediment_risc")
    case.send("al_legacions_presentades", {"presentades": True})
    case.do("proposta_declaracio_risc", proposa_declarar_risc=True)
    case.do("resolucio_declaracio_risc", declaracio_risc=True)
    _review(case, manual_clock, keep_going=False, result="sense_millora")
    case.do("proposar_derivacio_imas")
    assert "derivacio_proteccio_imas" in case.thrown()
    assert case.view()["status"] in ("imas_protection",)
    communications = [c["recipient"] for c in case.view()["communications"]]
    assert communications.count("Família") >= 2  # procedure opened, risk declared


def test_no_answer_no_allegations_risk_not_declared(http, camins, manual_clock):
    case = _start(http, camins)
    case.wait(manual_clock, timedelta(days=31))  # the family never answers
    case.do("iniciar_procediment_risc")
    case.wait(manual_clock, timedelta(days=16))  # no allegations within 15 days
    clocks = case.clocks()
    assert clocks["risk_allegations"]["status"] in ("met", "late")
    case.do("proposta_declaracio_risc", proposa_declarar_risc=False)
    case.do("resolucio_declaracio_risc", declaracio_risc=False)
    assert case.thrown()[-1] == "intervencio_tancada"


def test_review_cadence_switches_from_three_to_six_months_at_age_three(http, camins, manual_clock):
    # 2 years 10 months old on 20 November 2026.
    case = _start(http, camins, birth_date="2024-01-20")
    case.send("consentiment_familia", {})
    case.do("signar_conveni")

    def next_review_due():
        with camins.db.read() as session:
            return session.scalar(select(Timer.due_at).where(Timer.status == "waiting",
                                                             Timer.instance_id == case.instances("revisio")[-1].id))

    first = next_review_due()
    assert (first - manual_clock.now()).days in range(89, 93)  # 3 months: under 3
    case.wait(manual_clock, first - manual_clock.now() + timedelta(minutes=1))
    case.do("revisio_municipal", continuar_revisions=True, resultat="en_curs")
    second = next_review_due()
    assert (second - manual_clock.now()).days in range(180, 185)  # 6 months: turned 3 meanwhile


def test_state_stays_bounded_over_forty_review_cycles(http, camins, manual_clock):
    case = _start(http, camins)
    case.send("consentiment_familia", {})
    case.do("signar_conveni")
    sizes = {}
    for cycle in range(1, 41):
        case.wait(manual_clock, timedelta(days=200))
        case.do("revisio_municipal", continuar_revisions=True, resultat="en_curs")
        if cycle in (2, 40):
            [pathway] = case.instances("intervencio")
            waiting_review = case.instances("revisio")[-1]
            sizes[cycle] = (len(pathway.state), len(waiting_review.state))
    assert sizes[40][0] <= 2 * sizes[2][0] and sizes[40][1] <= 2 * sizes[2][1], sizes
    print(json.dumps({"state_bytes_after_2_cycles": sizes[2], "after_40": sizes[40]}))
