"""Every path of pathway 4 `proteccio` and pathway 5 `reunificacio` (bpmn/proteccio.bpmn, bpmn/reunificacio.bpmn).

Runs on its own and prints a report:  cd /work/main && .venv/bin/python tests/diagram_checks_p45.py

Runs every gateway branch to an end on SpiffWorkflow with the helpers of tests/diagram_static.py
(which also holds the static checks of every diagram): the ordinary and the urgent start, the
hearing or its 15-day timer, the commission's decision, every measure (refused ones loop back to
the choice by the child's age), the reviews, the 2-year limit of a temporary measure and the year
of follow-up after a return home. Prints the path and the messages each run ended with.
"""
from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

from diagram_static import CLOCK, COMMUNICATIONS, LANES, Run, attempt, load_spec, manual_clock, reset, summary

PROF, PSI, JUR, CAP, COM, URG = (LANES[code] for code in (
    "imas_case_manager", "imas_psychologist", "imas_jurist", "imas_section_head", "commission_guardianship",
    "imas_intake"))
DERIVACIO = {"gravetat": "greu", "puntuacio": 11, "data_decisio_imas": "2025-03-01"}
URGENT = {"reporter_kind": "police", "data_guarda": "2025-03-02", "mesura_immediata": "acolliment_urgencia",
          "fiscalia_informada": True}


def birth_for_age(years: int, months: int = 0) -> str:
    """An ISO birth date for a child who is `years` (and `months`) old on the clock's day."""
    today = CLOCK.now().date()
    total = today.year * 12 + today.month - 1 - (years * 12 + months)
    return date(total // 12, total % 12 + 1, min(today.day, 28)).isoformat()


def start(spec, label: str, age: int) -> Run:
    reset()
    return Run(spec, {"data_naixement": birth_for_age(age)}, label)


def recipients() -> list[str]:
    return [c.recipient for c in COMMUNICATIONS]


# --------------------------------------------------------------------------- pathway 4
def run_proteccio(spec, label, *, urgent=False, hearing="held", declared=True, choices=(), age=8,
                  reviews=False) -> Run:
    """choices: the measures chosen in order (refused ones loop back to the choice)."""
    r = start(spec, label, age)
    assert r.waiting_messages() == ["derivacio_proteccio_imas", "proteccio_urgent"], r.waiting_messages()
    r.roundtrip()
    if urgent:
        r.send("proteccio_urgent", URGENT)
        assert r.waiting_messages() == [], f"other start not cancelled: {r.waiting_messages()}"
        assert r.data()["via"] == "urgent" and r.data()["data_guarda"] == "2025-03-02"
        r.complete("p4_diligencies_urgents", URG, {
            "data_fi_diligencies_urgents": "2025-03-14", "recurs_guarda": "acolliment_urgencia",
            "resum_diligencies_urgents": "Diligències fetes"})
    else:
        r.send("derivacio_proteccio_imas", DERIVACIO)
        assert r.waiting_messages() == [], f"other start not cancelled: {r.waiting_messages()}"
        assert r.data()["via"] == "ordinaria" and r.data()["puntuacio"] == 11
        r.complete("p4_diligencies_previes", PROF, {
            "data_fi_diligencies": "2025-03-20", "resum_diligencies": "Informació recollida"})
        r.complete("p4_instruccio", JUR, {"data_incoacio": "2025-03-21", "data_citacio_audiencia": "2025-03-28"})
        assert r.waiting_messages() == ["audiencia_celebrada"], r.waiting_messages()
        (timer, due), = r.waiting_timers()
        # the event-based gateway's task holds the race's timer
        assert timer == "gw_p4_audiencia" and due == CLOCK.now() + timedelta(days=15), (timer, due)
        r.roundtrip()
        r.advance(timedelta(days=14))
        assert r.ready() == [] and r.waiting_messages() == ["audiencia_celebrada"], "hearing timer fired early"
        if hearing == "held":
            r.send("audiencia_celebrada", {"data_audiencia": "2025-03-28", "al_legacions": True})
            assert r.waiting_timers() == [], "the hearing timer survived the message"
        else:
            r.advance(timedelta(days=2))
            assert r.waiting_messages() == [], "the hearing message still waits after the timer"
            r.path.append("<15 dies>")
            r.complete("p4_incompareixenca", JUR, {"data_constatacio": "2025-04-13"})
    r.complete("p4_proposta_comissio", CAP, {
        "sentit_proposta": "declarar_desemparament" if declared else "no_declarar",
        "fonaments_proposta": "Fonaments"})
    r.roundtrip()
    r.complete("p4_resolucio_comissio", COM, {"data_resolucio": "2025-04-20", "desemparament_declarat": declared})
    if not declared:
        assert COMMUNICATIONS == [], COMMUNICATIONS
        r.complete("p4_retorn_municipal", CAP, {"gravetat_retorn": "moderat", "motiu_retorn": "Risc moderat"})
        assert recipients() == ["Fiscalia de Menors"], COMMUNICATIONS
        return r
    assert recipients() == ["Família", "Família", "Fiscalia de Menors"], COMMUNICATIONS
    assert "LEC art. 780" in COMMUNICATIONS[1].subject, COMMUNICATIONS[1]
    assert r.ready() == ["p4_pip"], r.ready()
    assert r.data()["comunicacio_resolucio_familia"]["recipient"] == "Família"
    r.complete("p4_pip", PROF, {"data_pip": "2025-05-10", "objectius_pip": "Objectius"})
    for mesura in choices:
        r.complete("p4_mesura", PROF, {"mesura": mesura, "motivacio_mesura": "Motivació"})
        assert r.data().get("edat") == age, r.data().get("edat")
    if reviews:
        birth = r.start_data["data_naixement"]
        assert [n for n, _ in r.events] == ["revisio_programada"], r.events
        assert r.events[0][1] == {"ambit": "imas", "numero": 1, "data_naixement": birth}, r.events[0]
        assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
        r.roundtrip()
        r.send("revisions_finalitzades", {"resultat": "objectius_assolits", "ambit": "imas"})
    return r


# --------------------------------------------------------------------------- pathway 5
def run_reunificacio(spec, label, *, limit=False, improvement=True, solution=None, age=7) -> Run:
    r = start(spec, label, age)
    assert r.waiting_messages() == ["inici_reunificacio"], r.waiting_messages()
    r.send("inici_reunificacio", {"mesura": "reunificacio"})
    r.complete("p5_programa_reunificacio", PROF, {
        "data_inici_programa": "2025-03-03", "regim_visites": "supervisades_punt_trobada",
        "intervencio_psicoterapeutica": True, "objectius_programa": "Objectius"})
    assert [n for n, _ in r.events] == ["revisio_programada"], r.events
    assert r.events[0][1] == {"ambit": "imas", "numero": 1, "data_naixement": r.start_data["data_naixement"]}
    assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
    (timer, due), = r.waiting_timers()
    assert timer == "p5_limit_dos_anys" and due == datetime(2027, 3, 3, 9, 0, tzinfo=UTC), (timer, due)
    r.roundtrip()
    r.advance(timedelta(days=729))
    assert r.ready() == [] and r.waiting_messages() == ["revisions_finalitzades"], "2-year timer fired early"
    if limit:
        r.advance(timedelta(days=2))
        r.path.append("<2 anys>")
        assert r.waiting_messages() == [], f"revisions_finalitzades still awaited: {r.waiting_messages()}"
        try:
            r.send("revisions_finalitzades", {"resultat": "en_curs", "ambit": "imas"})
        except AssertionError:
            pass
        else:
            raise AssertionError("a late revisions_finalitzades was accepted after the 2-year limit")
    else:
        r.send("revisions_finalitzades", {"resultat": "objectius_assolits" if improvement else "sense_millora",
                                          "ambit": "imas"})
        assert r.waiting_timers() == [], "the 2-year timer survived the message"
        r.complete("p5_informe_millora", PSI, {"data_informe_millora": "2026-09-01", "millora_real": improvement,
                                               "fonaments_informe_millora": "Fonaments"})
    if improvement and not limit:
        r.complete("p5_retorn_llar", PROF, {"data_retorn": "2026-09-15"})
        assert recipients() == ["Fiscalia de Menors"], COMMUNICATIONS
        (timer, due), = r.waiting_timers()
        returned = CLOCK.now()
        assert timer == "p5_seguiment_un_any" and due == returned.replace(year=returned.year + 1), (timer, due)
        r.roundtrip()
        r.advance(due - returned - timedelta(minutes=1))
        assert r.ready() == [], "the follow-up timer fired early"
        r.advance(timedelta(minutes=2))
        r.path.append("<1 any>")
        r.complete("p5_tancar_seguiment", PROF, {"data_tancament_seguiment": "2027-09-20",
                                                 "resultat_seguiment": "estable"})
        return r
    r.complete("p5_solucio_permanent", CAP, {"solucio_permanent": solution, "motivacio_solucio": "Motivació"})
    assert recipients() == ["Fiscalia de Menors"], COMMUNICATIONS
    assert "solució permanent" in COMMUNICATIONS[0].subject
    return r


def record(label, fn, expected, check=None) -> None:
    attempt(label, lambda: fn(label), expected, check)


def payload_is(name, expected):
    def check(r):
        got = [p for n, p in r.events if n == name][-1]
        assert got == expected, (name, got, expected)
    return check


def main() -> int:
    print("== runs")
    P, R = load_spec("proteccio.bpmn"), load_spec("reunificacio.bpmn")
    with manual_clock():
        record("proteccio: ordinària, audiència celebrada, desemparament, reunificació",
               lambda l: run_proteccio(P, l, choices=["reunificacio"]), ["inici_reunificacio"],
               payload_is("inici_reunificacio", {"mesura": "reunificacio"}))
        record("proteccio: ordinària, termini d'audiència vençut, no desemparament",
               lambda l: run_proteccio(P, l, hearing="timer", declared=False), ["derivacio_intervencio_municipal"],
               payload_is("derivacio_intervencio_municipal",
                          {"gravetat": "moderat", "puntuacio": 11, "retornat_per_imas": True}))
        record("proteccio: urgent, desemparament, acolliment familiar",
               lambda l: run_proteccio(P, l, urgent=True, choices=["acolliment_familiar"]), ["inici_acolliment"],
               payload_is("inici_acolliment", {"mesura": "acolliment_familiar"}))
        record("proteccio: urgent, no desemparament",
               lambda l: run_proteccio(P, l, urgent=True, declared=False), ["derivacio_intervencio_municipal"],
               payload_is("derivacio_intervencio_municipal",
                          {"gravetat": "moderat", "puntuacio": None, "retornat_per_imas": True}))
        record("proteccio: ordinària, termini vençut, desemparament, adopció",
               lambda l: run_proteccio(P, l, hearing="timer", choices=["adopcio"], age=1), ["inici_adopcio"])
        record("proteccio: emancipació als 17 anys",
               lambda l: run_proteccio(P, l, choices=["emancipacio"], age=17), ["inici_emancipacio"])
        record("proteccio: emancipació als 15 (rebutjada), residencial als 15 amb revisions",
               lambda l: run_proteccio(P, l, choices=["emancipacio", "acolliment_residencial"], age=15, reviews=True),
               ["revisio_programada", "inici_reunificacio"],
               payload_is("inici_reunificacio", {"mesura": "acolliment_residencial"}))
        record("proteccio: residencial als 2 anys (rebutjat), acolliment familiar",
               lambda l: run_proteccio(P, l, urgent=True, choices=["acolliment_residencial", "acolliment_familiar"],
                                       age=2),
               ["inici_acolliment"])
        record("proteccio: residencial just als 3 anys, amb revisions",
               lambda l: run_proteccio(P, l, choices=["acolliment_residencial"], age=3, reviews=True),
               ["revisio_programada", "inici_reunificacio"])
        record("proteccio: emancipació just als 16 anys",
               lambda l: run_proteccio(P, l, urgent=True, choices=["emancipacio"], age=16), ["inici_emancipacio"])

        record("reunificacio: revisions, millora real, retorn i seguiment d'1 any",
               lambda l: run_reunificacio(R, l), ["revisio_programada", "reunificacio_tancada"],
               payload_is("reunificacio_tancada", {"data_retorn": "2026-09-15", "resultat_seguiment": "estable"}))
        record("reunificacio: revisions, sense millora, acolliment permanent",
               lambda l: run_reunificacio(R, l, improvement=False, solution="acolliment_permanent"),
               ["revisio_programada", "inici_acolliment"],
               payload_is("inici_acolliment", {"mesura": "acolliment_familiar", "tipus_acolliment": "permanent"}))
        record("reunificacio: revisions, sense millora, adopció",
               lambda l: run_reunificacio(R, l, improvement=False, solution="adopcio", age=2),
               ["revisio_programada", "inici_adopcio"], payload_is("inici_adopcio", {"mesura": "adopcio"}))
        record("reunificacio: límit de 2 anys sense revisions finalitzades, adopció",
               lambda l: run_reunificacio(R, l, limit=True, solution="adopcio"), ["revisio_programada", "inici_adopcio"])
        record("reunificacio: límit de 2 anys, acolliment permanent",
               lambda l: run_reunificacio(R, l, limit=True, solution="acolliment_permanent"),
               ["revisio_programada", "inici_acolliment"])
    return summary()


if __name__ == "__main__":
    sys.exit(main())
