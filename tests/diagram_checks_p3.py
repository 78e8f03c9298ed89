"""Every path of pathway 3 `intervencio` and of the review process `revisio` (bpmn/intervencio.bpmn,
bpmn/revisio.bpmn).

Runs on its own, printing a report:  cd /work/main && .venv/bin/python tests/diagram_checks_p3.py

Runs every gateway branch to its end on SpiffWorkflow with the helpers of tests/diagram_static.py
(which also holds the static checks of every diagram), on one manual clock (timers fire by moving
it). Pathway 3 runs drive real `revisio` instances for their reviews: the `revisio_programada`
event thrown by one instance starts the next. Prints the messages each run ends with, the review
intervals around the third birthday, and the serialized size of 40 chained review instances.
"""
from __future__ import annotations

import sys
from datetime import datetime

from diagram_static import (
    CLOCK,
    COMMUNICATIONS,
    LANES,
    SERIALIZER,
    STATE,
    T0,
    Run,
    attempt,
    load_spec,
    manual_clock,
    problem,
    reset,
    summary,
)
from SpiffWorkflow.bpmn import BpmnEvent
from SpiffWorkflow.bpmn.specs.event_definitions.multiple import MultipleEventDefinition
from SpiffWorkflow.util.task import TaskState

TS, COORD, COMISSIO = LANES["sscb_social_worker"], LANES["sscb_coordinator"], LANES["commission_risk"]
INTERVENCIO = load_spec("intervencio.bpmn")
REVISIO = load_spec("revisio.bpmn")
REVIEW_LANE = {"municipal": TS, "imas": LANES["imas_case_manager"]}
REVIEW_TASK = {"municipal": "revisio_municipal", "imas": "revisio_imas"}
ENGINE_NOTES: set[str] = set()


def note_engine_projection(run: Run) -> None:
    """engine/runtime.py projects timers and message subscriptions only from WAITING tasks whose own
    event definition is a Timer/MessageEventDefinition; an event-based gateway waits with a
    MultipleEventDefinition, which it does not look into."""
    for task in run.wf.get_tasks(state=TaskState.WAITING):
        if isinstance(getattr(task.task_spec, "event_definition", None), MultipleEventDefinition):
            ENGINE_NOTES.add(task.task_spec.name)


def months_between(a: datetime, b: datetime) -> int:
    return (b.year - a.year) * 12 + (b.month - a.month)


def age_ym(birth: str, at: datetime) -> str:
    b = datetime.fromisoformat(birth).date()
    months = months_between(datetime(b.year, b.month, 1), datetime(at.year, at.month, 1))
    if at.day < b.day:
        months -= 1
    return f"{months // 12} anys {months % 12} mesos"


def sizes_of(run: Run) -> tuple[int, int]:
    """Bytes of SpiffWorkflow's own serialization and of the spec-free state the engine stores."""
    return len(SERIALIZER.serialize_json(run.wf)), len(STATE.dumps(run.wf))


def review_instance(event, data_naixement, continuar, resultat, sizes=None):
    """One `revisio` instance started by `event`; returns (run, interval in months, thrown event)."""
    run = Run(REVISIO, {"data_naixement": data_naixement}, "revisio")
    assert run.waiting_for() == ["revisio_programada"], run.waiting_for()
    run.send(event)
    scheduled_at = CLOCK.now()
    run.roundtrip()
    if sizes is not None:
        sizes.append(sizes_of(run))
    assert run.ready() == [], run.ready()
    due = run.fire_timer("espera_revisio")
    interval = months_between(scheduled_at, due)
    ambit = event.payload["ambit"]
    run.complete(REVIEW_TASK[ambit], REVIEW_LANE[ambit],
                 {"data_revisio": CLOCK.now().date().isoformat(), "resultat": resultat,
                  "continuar_revisions": continuar, "observacions_revisio": ""})
    if sizes is not None:
        sizes.append(sizes_of(run))
    got = run.ended()
    assert len(got) == 1, got
    expected = "revisio_programada" if continuar else "revisions_finalitzades"
    assert got[0][0] == expected, got
    if continuar:
        assert got[0][1] == {"ambit": ambit, "numero": event.payload["numero"] + 1,
                             "data_naixement": event.payload["data_naixement"]}, got
    else:
        assert got[0][1] == {"resultat": resultat, "ambit": ambit}, got
    return run, interval, run.thrown[0]


def review_chain(event, data_naixement, outcomes, verbose=True):
    """Chain review instances (each started by the previous one's revisio_programada)."""
    ended = []
    for continuar, resultat in outcomes:
        at = CLOCK.now()
        age = age_ym(data_naixement, at)
        _run, interval, event = review_instance(event, data_naixement, continuar, resultat)
        ended.append((event.event_definition.name, event.payload))
        if verbose:
            print(f"      revisió programada el {at.date()} (edat {age}) → interval {interval} mesos → "
                  f"{'continuar' if continuar else 'finalitzar'}: {resultat} → {event.event_definition.name}")
    return event, ended


def first_review(ambit: str, numero: int, birth: str) -> BpmnEvent:
    """The revisio_programada event a pathway would throw."""
    spec_event = REVISIO[0].task_specs["inici_revisio"].event_definition
    return BpmnEvent(spec_event, payload={"ambit": ambit, "numero": numero, "data_naixement": birth})


def run_intervencio(answer, allegations=None, declared=None, reviews=(), birth="2019-06-15") -> Run:
    """answer: 'consentiment' | 'negativa' | 'termini'; allegations: 'presentades' | 'termini'."""
    reset()
    run = Run(INTERVENCIO, {"data_naixement": birth}, f"intervencio {answer}/{allegations}/{declared}")
    assert run.waiting_messages() == ["derivacio_intervencio_municipal"], run.waiting_messages()
    run.send("derivacio_intervencio_municipal", {"gravetat": "moderat", "puntuacio": 6, "retornat_per_imas": False})
    assert run.data()["derivacio"]["gravetat"] == "moderat"
    run.complete("elaborar_projecte_intervencio", TS,
                 {"data_projecte": "2025-03-10", "objectius_projecte": "Millorar la cura i l'escolarització",
                  "durada_prevista_mesos": 12, "recursos_projecte": "Educador/a familiar"})
    run.complete("proposar_conveni", TS, {"data_proposta_conveni": "2025-03-12", "mitja_proposta": "entrevista"})
    run.roundtrip()
    assert run.waiting_for() == ["consentiment_familia", "negativa_familia", 'timer "P30D"'], run.waiting_for()
    note_engine_projection(run)
    if answer == "consentiment":
        run.send("consentiment_familia", {"data": "2025-03-20"})
        assert run.data()["resposta_familia"] == {"data": "2025-03-20"}, run.data()
        run.complete("signar_conveni", TS,
                     {"data_signatura_conveni": "2025-03-21", "compromisos_familia": "Assistència escolar diària",
                      "signen_tots_progenitors": True})
    else:
        if answer == "negativa":
            run.send("negativa_familia", {"data": "2025-03-20"})
        else:
            due = run.fire_timer("gw_resposta_familia")
            assert (due - T0).days == 30, due
        assert not any(t.task_spec.name in ("ev_consentiment_familia", "ev_negativa_familia", "ev_termini_resposta")
                       for t in run.wf.get_tasks(state=TaskState.WAITING)), "race not cancelled"
        run.complete("iniciar_procediment_risc", COORD,
                     {"data_inici_procediment": CLOCK.now().date().isoformat(),
                      "motiu_inici": "negativa_familia" if answer == "negativa" else "sense_resposta",
                      "instructor_designat": True, "fets_procediment": "Rebuig del conveni"})
        assert COMMUNICATIONS[-1].recipient == "Família", COMMUNICATIONS
        opened = CLOCK.now()
        assert run.waiting_for() == ["al_legacions_presentades", 'timer "P15D"'], run.waiting_for()
        note_engine_projection(run)
        if allegations == "presentades":
            run.send("al_legacions_presentades", {"data": "2025-04-01"})
            assert run.data()["al_legacions"] == {"data": "2025-04-01"}, run.data()
        else:
            due = run.fire_timer("gw_al_legacions")
            assert (due - opened).days == 15, due
        run.roundtrip()
        proposal = run.ready_task("proposta_declaracio_risc")
        assert proposal.task_spec.extensions["properties"]["due_in"] == "P10D"
        run.complete("proposta_declaracio_risc", TS,
                     {"data_proposta_comissio": CLOCK.now().date().isoformat(), "al_legacions_valorades": True,
                      "proposa_declarar_risc": declared, "fonaments_proposta": "Informe tècnic"})
        run.complete("resolucio_declaracio_risc", COMISSIO,
                     {"audiencia_progenitors": True, "data_resolucio": CLOCK.now().date().isoformat(),
                      "declaracio_risc": declared, "fonaments_resolucio": ""})
        if declared:
            assert COMMUNICATIONS[-1] == ("Família", "Resolució de declaració de la situació de risc"), COMMUNICATIONS
    if answer == "consentiment" or declared:
        programmed = [e for e in run.thrown if e.event_definition.name == "revisio_programada"]
        assert len(programmed) == 1 and programmed[0].payload == {
            "ambit": "municipal", "numero": 1, "data_naixement": birth}, programmed
        assert run.waiting_for() == ["revisions_finalitzades"], run.waiting_for()
        run.roundtrip()
        finished, chain = review_chain(programmed[0], birth, reviews)
        print(f"      revisions encadenades: {[n for n, _p in chain]}")
        run.send(finished)
        if finished.payload["resultat"] == "objectius_assolits":
            run.complete("tancar_cas", TS,
                         {"data_tancament": CLOCK.now().date().isoformat(), "valoracio_final": "Objectius assolits"})
        else:
            run.complete("proposar_derivacio_imas", COORD,
                         {"data_proposta_derivacio": CLOCK.now().date().isoformat(),
                          "motius_derivacio": "Sense millora després de les revisions"})
    started, stopped = run.clocks()
    print(f"      rellotges iniciats {started}, aturats {stopped}")
    if sorted(set(started)) != sorted(set(stopped)):
        problem(f"{run.label}: clocks started {started} but stopped {stopped}")
    return run


def run_imas_reviews() -> list[tuple[str, dict]]:
    reset()
    _last, chain = review_chain(first_review("imas", 3, "2016-09-01"), "2016-09-01",
                                [(True, "en_curs"), (False, "objectius_assolits")])
    return chain


def run_age_switch() -> list[tuple[str, dict]]:
    """A child aged 2 years 10 months: first interval 3 months, then 6 once they are 3."""
    reset()
    birth = T0.date().replace(year=T0.year - 3, month=T0.month + 2).isoformat()     # T0 is in March
    assert age_ym(birth, T0) == "2 anys 10 mesos", age_ym(birth, T0)
    event = first_review("municipal", 1, birth)
    intervals = []
    for n in range(1, 5):
        at = CLOCK.now()
        age = age_ym(birth, at)
        _run, interval, event = review_instance(event, birth, n < 4, "en_curs" if n < 4 else "objectius_assolits")
        intervals.append(interval)
        print(f"      revisió {n}: programada el {at.date()} amb {age} → interval {interval} mesos")
    if intervals != [3, 6, 6, 6]:
        problem(f"age switch: intervals {intervals}, expected [3, 6, 6, 6]")
    print(f"      intervals {intervals}")
    return [(event.event_definition.name, event.payload)]


def run_forty(ambit="imas") -> list[tuple[str, dict]]:
    reset()
    birth = "2012-01-20"
    event = first_review(ambit, 1, birth)
    rows = []
    for n in range(1, 41):
        sizes = []
        _run, _interval, event = review_instance(event, birth, n < 40, "en_curs" if n < 40 else "sense_millora",
                                                 sizes=sizes)
        rows.append((n, *sizes))
    print("      revisió: bytes BpmnWorkflowSerializer esperant el temporitzador / en acabar "
          "(entre parèntesis, l'estat sense especificació que desa el motor)")
    for n, (wait_full, wait_state), (end_full, end_state) in rows:
        print(f"      {n:2d}: {wait_full} ({wait_state}) / {end_full} ({end_state})")
    for column, label in ((1, "esperant"), (2, "en acabar")):
        full = [r[column][0] for r in rows]
        spread = max(full) - min(full)
        print(f"      {label}: mín {min(full)}, màx {max(full)}, variació {spread} bytes; "
              f"revisió 1 → 40: {full[0]} → {full[-1]}")
        # only digits vary (numero, dates, timestamps) and the last result's wording
        if spread > 64:
            problem(f"review state grows: {label} sizes vary by {spread} bytes over 40 reviews")
    return [(event.event_definition.name, event.payload)]


def main() -> int:
    print("== runs")
    cases = [
        ("acord, revisions (continuar, finalitzar) amb objectius assolits",
         dict(answer="consentiment", reviews=[(True, "en_curs"), (False, "objectius_assolits")]),
         ["revisio_programada", "intervencio_tancada"]),
        ("acord, revisió sense millora: derivació a l'IMAS",
         dict(answer="consentiment", reviews=[(False, "sense_millora")]),
         ["revisio_programada", "derivacio_proteccio_imas"]),
        ("negativa, al·legacions presentades, risc declarat, objectius assolits",
         dict(answer="negativa", allegations="presentades", declared=True,
              reviews=[(True, "en_curs"), (False, "objectius_assolits")]),
         ["revisio_programada", "intervencio_tancada"]),
        ("30 dies sense resposta, 15 dies sense al·legacions, risc declarat, revisió en curs: IMAS",
         dict(answer="termini", allegations="termini", declared=True, reviews=[(False, "en_curs")]),
         ["revisio_programada", "derivacio_proteccio_imas"]),
        ("negativa, al·legacions presentades, risc no declarat",
         dict(answer="negativa", allegations="presentades", declared=False), ["intervencio_tancada"]),
        ("30 dies sense resposta, 15 dies sense al·legacions, risc no declarat",
         dict(answer="termini", allegations="termini", declared=False), ["intervencio_tancada"]),
    ]
    with manual_clock():
        for label, kwargs, expected in cases:
            print(f"  intervencio {label}")
            attempt(f"intervencio {label}", lambda kwargs=kwargs: run_intervencio(**kwargs), expected)
        print("  revisio: àmbit IMAS, continuar i finalitzar")
        attempt("revisio imas (2 instàncies)", run_imas_reviews, ["revisio_programada", "revisions_finalitzades"])
        print("  revisio: canvi d'interval als 3 anys (infant de 2 anys i 10 mesos)")
        attempt("revisio canvi d'interval [3, 6, 6, 6]", run_age_switch, ["revisions_finalitzades"])
        print("  revisio: 40 revisions encadenades, mida serialitzada de cada instància")
        attempt("revisio 40 revisions encadenades", run_forty, ["revisions_finalitzades"])

    if ENGINE_NOTES:
        print(f"  NOTE (engine, not these diagrams): {sorted(ENGINE_NOTES)} wait as ONE task with a "
              "MultipleEventDefinition; engine/runtime.py only projects timers/subscriptions of "
              "Timer/MessageEventDefinition tasks, so it must look into .event_definitions")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
