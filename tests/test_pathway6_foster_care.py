"""Pathway 6, foster care (acolliment familiar), over HTTP: the child's side (`acolliment`, with its
reviews through the chained `revisio` process) and the family's side (`familia_acollidora`)."""
from __future__ import annotations

from datetime import datetime, timedelta

from engine.durations import add_months

from .pathway_driver import inbox
from .scenario import Case, instance_view, start_process, thrown_payloads

FISCALIA = "Fiscalia de Menors"


def _start(http, camins, birth_date: str, measure: str) -> Case:
    case = Case(http, camins, "Manacor", birth_date)
    [instance_id] = case.send("inici_acolliment", {"mesura": measure})
    [pathway] = case.instances("acolliment")
    assert pathway.id == instance_id and pathway.status == "running"
    # The foster-care technician of IMAS proposes the matching; nothing else of the pathway is open.
    assert "p6_proposta_acoplament" in case.open_elements()
    assert [t["element_id"] for t in inbox(http, "acolliment.imas", case.reference)] == ["p6_proposta_acoplament"]
    return case


def _formalise(case: Case, manual_clock, *, kind: str, kinship: bool, days_to_sign: int = 0) -> None:
    """Matching proposal, then the section head signs the formalisation (art. 158), sent to the Fiscalia."""
    fiscalia_before = _fiscalia_communications(case)
    case.do("p6_proposta_acoplament", tipus_acolliment=kind, familia_extensa=kinship)
    assert "p6_resolucio_formalitzacio" in case.open_elements()
    runs_before = [c for c in case.clocks().values() if c["clock_id"] == "foster_fiscalia"]
    if days_to_sign:
        case.wait(manual_clock, timedelta(days=days_to_sign))
    case.do("p6_resolucio_formalitzacio")
    assert len(_fiscalia_communications(case)) == len(fiscalia_before) + 1
    assert "formalització de l'acolliment" in _fiscalia_communications(case)[-1]["subject"]
    # The month for the Fiscalia (art. 157.5) runs from the signed resolution; it is sent at once.
    sent = case.clocks()["foster_fiscalia"]
    assert sent["article"] == "Llei 9/2019 art. 157.5"
    assert sent["status"] == "met" and sent["stopped_at"] is not None
    assert [r["id"] for r in runs_before] != [sent["id"]]
    started = datetime.fromisoformat(sent["started_at"])
    assert datetime.fromisoformat(sent["due_at"]) - started in (timedelta(days=d) for d in (28, 29, 30, 31))


def _fiscalia_communications(case: Case) -> list[dict]:
    return [c for c in case.view()["communications"] if c["recipient"] == FISCALIA]


def _next_review_due(case: Case) -> datetime:
    review = case.instances("revisio")[-1]
    assert review.status == "running"
    [timer] = [t for t in instance_view(case, review.id)["timers"] if t["status"] == "waiting"]
    assert timer["element_id"] == "espera_revisio"
    return datetime.fromisoformat(timer["due_at"])


def _review(case: Case, manual_clock, *, months: int, keep_going: bool, result: str = "en_curs") -> None:
    """One IMAS review of the measure (art. 146): nothing to do before it is due, then the case manager's task."""
    due = _next_review_due(case)
    assert due == add_months(manual_clock.now(), months)  # calendar months from the previous step
    assert case.wait(manual_clock, due - manual_clock.now() - timedelta(days=1)) == 0
    assert "revisio_imas" not in case.open_elements()
    assert case.wait(manual_clock, timedelta(days=1, minutes=1)) == 1
    # The review is the child's IMAS case manager's (Llevant section for Manacor).
    assert "revisio_imas" in [t["element_id"] for t in inbox(case.http, "cm.llevant", case.reference)]
    assert "revisio_imas" not in [t["element_id"] for t in inbox(case.http, "cm.ponent", case.reference)]
    case.do("revisio_imas", continuar_revisions=keep_going, resultat=result)


def _close(case: Case, reason: str) -> dict:
    [pathway] = case.instances("acolliment")
    assert instance_view(case, pathway.id)["active_elements"] == ["p6_tancar_acolliment"]
    case.do("p6_tancar_acolliment", motiu_fi=reason)
    assert case.thrown()[-1] == "acolliment_finalitzat"
    view = case.view()
    assert view["status"] == "foster_care_ended"
    assert [i["status"] for i in view["instances"] if i["process_key"] == "acolliment"] == ["completed"]
    assert not [e for e in case.open_elements() if e.startswith("p6_") or e.startswith("revisio")]
    return thrown_payloads(case, "acolliment_finalitzat")[-1]


def test_permanent_non_kin_foster_care_reviewed_twice_then_closed(http, camins, manual_clock):
    case = _start(http, camins, "2015-04-01", "acolliment_permanent")  # 11 years old
    _formalise(case, manual_clock, kind="permanent", kinship=False, days_to_sign=10)
    # Permanent foster care starts its reviews; no emergency limit runs.
    assert case.thrown() == ["revisio_programada"]
    assert "emergency_foster_limit" not in case.clocks()
    [pathway] = case.instances("acolliment")
    assert instance_view(case, pathway.id)["active_elements"] == ["revisions_acolliment_finalitzades"]

    _review(case, manual_clock, months=6, keep_going=True)
    assert [i.status for i in case.instances("revisio")] == ["completed", "running"]
    assert instance_view(case, pathway.id)["active_elements"] == ["revisions_acolliment_finalitzades"]
    _review(case, manual_clock, months=6, keep_going=False, result="objectius_assolits")
    assert [i.status for i in case.instances("revisio")] == ["completed", "completed"]
    assert case.thrown() == ["revisio_programada", "revisio_programada", "revisions_finalitzades"]

    payload = _close(case, "majoria_edat")
    assert payload["tipus_acolliment"] == "permanent" and payload["familia_extensa"] is False
    assert payload["motiu_fi"] == "majoria_edat"
    # One formalisation, one communication to the Fiscalia, within its month.
    assert len(_fiscalia_communications(case)) == 1
    assert case.clocks()["foster_fiscalia"]["status"] == "met"


def test_temporary_kinship_foster_care_of_a_toddler_is_reviewed_every_three_months(http, camins, manual_clock):
    case = _start(http, camins, "2024-06-01", "acolliment_temporal")  # 2 years 5 months old
    _formalise(case, manual_clock, kind="temporal", kinship=True)
    # Under 3: the IMAS review comes after 3 months (art. 146), not 6.
    _review(case, manual_clock, months=3, keep_going=False, result="objectius_assolits")
    payload = _close(case, "retorn_familia")
    assert payload["tipus_acolliment"] == "temporal" and payload["familia_extensa"] is True
    assert payload["motiu_fi"] == "retorn_familia"


def test_emergency_foster_care_then_permanent_kinship_foster_care(http, camins, manual_clock):
    case = _start(http, camins, "2025-02-10", "acolliment_urgencia")  # 1 year 9 months old
    _formalise(case, manual_clock, kind="urgencia", kinship=False)
    emergency = case.clocks()["emergency_foster_limit"]
    assert emergency["status"] == "on_time" and emergency["article"] == "Llei 9/2019 art. 155.5"
    assert emergency["due_at"].startswith("2027-05-20")  # 6 months (art. 155.5)
    [pathway] = case.instances("acolliment")
    assert instance_view(case, pathway.id)["active_elements"] == ["revisions_urgencia_finalitzades"]

    # Emergency care is reviewed every 2 months, whatever the age, so a decision fits in its 6.
    _review(case, manual_clock, months=2, keep_going=False, result="en_curs")
    assert case.clocks()["emergency_foster_limit"]["status"] == "on_time"
    case.do("p6_decidir_mesura_urgencia", mesura_seguent="acolliment_permanent")
    assert case.clocks()["emergency_foster_limit"]["status"] == "met"
    # A new matching, this time with the extended family, and a new formalisation sent to the Fiscalia.
    assert "p6_proposta_acoplament" in case.open_elements()
    _formalise(case, manual_clock, kind="permanent", kinship=True)
    assert len(_fiscalia_communications(case)) == 2
    assert [c["clock_id"] for c in http.get(f"/api/cases/{case.reference}/clocks", case.supervisor).json()[
        "items"]].count("foster_fiscalia") == 2
    _review(case, manual_clock, months=3, keep_going=False, result="objectius_assolits")
    payload = _close(case, "canvi_mesura")
    assert payload["tipus_acolliment"] == "permanent" and payload["familia_extensa"] is True
    assert [i.status for i in case.instances("revisio")] == ["completed", "completed"]


def test_emergency_foster_care_ends_with_another_measure(http, camins, manual_clock):
    case = _start(http, camins, "2025-08-15", "acolliment_urgencia")  # 1 year 3 months old
    _formalise(case, manual_clock, kind="urgencia", kinship=True)
    _review(case, manual_clock, months=2, keep_going=False, result="sense_millora")
    # The decision takes time: past 80 % of the six months the supervisor sees the limit at risk.
    manual_clock.advance(timedelta(days=90))
    assert case.clocks()["emergency_foster_limit"]["status"] == "at_risk"
    case.do("p6_decidir_mesura_urgencia", mesura_seguent="adopcio")
    assert case.clocks()["emergency_foster_limit"]["status"] == "met"
    payload = _close(case, "adopcio")
    assert payload["tipus_acolliment"] == "urgencia" and payload["motiu_fi"] == "adopcio"
    assert len(_fiscalia_communications(case)) == 1


def test_emergency_foster_care_of_a_four_year_old_can_be_decided_within_six_months(http, camins, manual_clock):
    case = _start(http, camins, "2022-09-01", "acolliment_urgencia")  # 4 years 2 months old
    _formalise(case, manual_clock, kind="urgencia", kinship=False)
    due = _next_review_due(case)
    case.wait(manual_clock, due - manual_clock.now() + timedelta(minutes=1))
    case.do("revisio_imas", continuar_revisions=False, resultat="en_curs")
    assert "p6_decidir_mesura_urgencia" in case.open_elements()
    assert case.clocks()["emergency_foster_limit"]["status"] == "on_time"  # 2 of its 6 months gone


def test_fiscalia_month_runs_from_the_formalisation_resolution(http, camins, manual_clock):
    case = _start(http, camins, "2015-04-01", "acolliment_permanent")
    case.do("p6_proposta_acoplament", tipus_acolliment="permanent", familia_extensa=False)
    manual_clock.advance(timedelta(days=40))  # signed 40 days after the proposal, sent the same day
    case.do("p6_resolucio_formalitzacio")
    assert _fiscalia_communications(case)[-1]["sent_at"] is not None
    assert case.clocks()["foster_fiscalia"]["status"] == "met"


def _family_side(case: Case) -> int:
    started = start_process(case, "familia_acollidora")
    assert started["status"] == "running" and started["active_elements"] == ["p6_sessio_informativa"]
    case.do("p6_sessio_informativa")
    case.do("p6_sollicitud_familia", tipus_sollicitat="permanent")
    case.do("p6_formacio_familia", hores_formacio=24)
    # Suitability (art. 157) is the IMAS psychologist's, not the foster-care technician's.
    assert [t["element_id"] for t in inbox(case.http, "psi.imas", case.reference)] == ["p6_valoracio_idoneitat"]
    assert "p6_valoracio_idoneitat" not in [t["element_id"] for t in inbox(case.http, "acolliment.imas",
                                                                          case.reference)]
    return started["id"]


def test_foster_family_trained_and_found_suitable(http, camins, manual_clock):
    case = Case(http, camins, "Son Servera", "2016-03-03")
    instance_id = _family_side(case)
    case.do("p6_valoracio_idoneitat", idonia=True, modalitat_idonia="permanent")
    detail = instance_view(case, instance_id)
    assert detail["status"] == "completed" and "fi_familia_disponible" in detail["completed_elements"]
    view = case.view()
    assert view["communications"] == []  # nothing to tell a suitable family
    assert view["status"] == "notified"  # the family side hands nothing on to the child's case
    assert case.thrown() == []


def test_foster_family_found_unsuitable_is_told(http, camins, manual_clock):
    case = Case(http, camins, "Son Servera", "2016-03-03")
    instance_id = _family_side(case)
    case.do("p6_valoracio_idoneitat", idonia=False)
    detail = instance_view(case, instance_id)
    assert detail["status"] == "completed" and "fi_familia_no_idonia" in detail["completed_elements"]
    [sent] = case.view()["communications"]
    assert sent["recipient"] == "Família" and "no idoneïtat" in sent["subject"]
    assert case.view()["status"] == "notified" and case.thrown() == []
