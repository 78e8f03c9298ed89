"""Every path of pathways 6 (acolliment), 7 (adopció) and 8 (emancipació).

Runs on its own, printing a report:  cd /work/main && .venv/bin/python tests/diagram_checks_p678.py

Diagrams: acolliment.bpmn, familia_acollidora.bpmn, adopcio.bpmn, sollicitants_adopcio.bpmn and
emancipacio.bpmn. Runs every gateway branch to an end on SpiffWorkflow with the helpers of
tests/diagram_static.py (which also holds the static checks of every diagram), on the manual clock,
filling every form field the scenario leaves out with a plausible value; foster care reviews run
real `revisio` instances. Prints the message(s) each run threw and ended with.
"""
from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta

from diagram_static import CLOCK, COMMUNICATIONS, LANES, T0, Run, attempt, load_spec, manual_clock, reset, summary
from SpiffWorkflow.util.task import TaskState

LANE_TAF, LANE_CAP, LANE_PSI, LANE_TAD, LANE_COM, LANE_JUR, LANE_TEM, LANE_PROF = (LANES[code] for code in (
    "imas_foster_care", "imas_section_head", "imas_psychologist", "imas_adoption", "commission_guardianship",
    "imas_jurist", "imas_emancipation", "imas_case_manager"))
SPECS = {name: load_spec(f"{name}.bpmn") for name in (
    "acolliment", "familia_acollidora", "adopcio", "sollicitants_adopcio", "emancipacio", "revisio")}


def start(process: str, birth: str, label: str) -> Run:
    reset()
    return Run(SPECS[process], {"data_naixement": birth}, label, fill=True)


def recipients() -> list[str]:
    return [c.recipient for c in COMMUNICATIONS]


def ended_at(r: Run) -> str:
    """The end event a run without hand-off ended at."""
    return [t.task_spec.name for t in r.wf.get_tasks(state=TaskState.COMPLETED) if t.task_spec.name.startswith("fi_")][0]


def revisio_chain(payload: dict, birth: str, reviews: int) -> dict:
    """Runs `reviews` instances of the `revisio` process, chained by revisio_programada; returns the
    revisions_finalitzades payload."""
    current = payload
    for n in range(1, reviews + 1):
        r = Run(SPECS["revisio"], {"data_naixement": birth}, f"revisio {n}", fill=True)
        r.send("revisio_programada", current)
        assert r.timers(), "revisio does not wait on its timer"
        CLOCK.advance(timedelta(days=190))
        r.fire_timers()
        last = n == reviews
        r.complete("revisio_imas", LANE_PROF, continuar_revisions=not last,
                   resultat="objectius_assolits" if last else "en_curs")
        (name, current), = r.ended()
        assert name == ("revisions_finalitzades" if last else "revisio_programada"), name
    print(f"      (revisio.bpmn ran {reviews} review instance(s), chained by revisio_programada)")
    return current


def run_acolliment(tipus: str, urgencia_mesura: str | None = None, use_revisio: bool = False) -> Run:
    birth = "2019-06-10"
    r = start("acolliment", birth, f"acolliment {tipus}")
    assert r.waiting_messages() == ["inici_acolliment"], r.waiting_messages()
    r.send("inici_acolliment", {"mesura": "acolliment_familiar"})
    for round_ in (1, 2):
        r.complete("p6_proposta_acoplament", LANE_TAF, tipus_acolliment=tipus, familia_extensa=tipus == "permanent",
                   codi_expedient_familia="FA-2025-014")
        r.complete("p6_resolucio_formalitzacio", LANE_CAP, compensacio_economica=True)
        assert COMMUNICATIONS[-1].recipient == "Fiscalia de Menors", COMMUNICATIONS
        # the review chain is handed to `revisio`: one throw, then wait
        (name, payload), = [e for e in r.events if e[0] == "revisio_programada"][-1:]
        # Emergency care is reviewed more often (2 months), so its decision comes within its 6 months.
        ambit = "urgencia" if tipus == "urgencia" else "imas"
        assert payload == {"ambit": ambit, "numero": 1, "data_naixement": birth}, payload
        assert r.waiting_messages() == ["revisions_finalitzades"], r.waiting_messages()
        assert r.ready() == []
        result = revisio_chain(payload, birth, 2) if use_revisio else \
            {"resultat": "objectius_assolits", "ambit": "imas"}
        r.send("revisions_finalitzades", result)
        assert r.data()["revisions"] == result
        if tipus != "urgencia":
            break
        r.complete("p6_decidir_mesura_urgencia", LANE_CAP, mesura_seguent=urgencia_mesura)
        if urgencia_mesura not in ("acolliment_temporal", "acolliment_permanent"):
            break
        assert r.ready() == ["p6_proposta_acoplament"], r.ready()   # new matching and formalisation
        tipus = urgencia_mesura.split("_")[1]
        assert round_ == 1
    r.complete("p6_tancar_acolliment", LANE_TAF, motiu_fi="retorn_familia" if tipus != "permanent" else "majoria_edat")
    return r


def run_familia(idonia: bool) -> Run:
    r = start("familia_acollidora", "2019-06-10", "familia_acollidora")
    r.complete("p6_sessio_informativa", LANE_TAF, modalitat_interes="temporal", nombre_assistents=2)
    r.complete("p6_sollicitud_familia", LANE_TAF, codi_expedient_familia="FA-2025-020", familia_extensa=False)
    r.complete("p6_formacio_familia", LANE_TAF, hores_formacio=24)
    r.complete("p6_valoracio_idoneitat", LANE_PSI, idonia=idonia, modalitat_idonia="temporal")
    assert recipients() == ([] if idonia else ["Família"]), COMMUNICATIONS
    return r


def run_adopcio(declarada: bool, constituida: bool | None = None) -> Run:
    r = start("adopcio", "2023-01-20", "adopcio")
    assert r.waiting_messages() == ["inici_adopcio"], r.waiting_messages()
    r.send("inici_adopcio", {"mesura": "adopcio"})
    r.complete("p7_proposta_adoptabilitat", LANE_TAD)
    r.complete("p7_declaracio_adoptabilitat", LANE_COM, adoptabilitat_declarada=declarada)
    if declarada:
        r.complete("p7_assignar_familia", LANE_TAD, codi_expedient_sollicitants="AD-2024-007", idoneitat_vigent=True)
        r.complete("p7_resolucio_guarda_adoptiva", LANE_CAP, data_resolucio_guarda="2025-03-03")
        props = r.ready_task("p7_proposta_jutjat").task_spec.extensions["properties"]
        assert props["due_in"] == "P3M" and props["clock_stop"] == "adoption_proposal", props
        CLOCK.advance(timedelta(days=60))
        r.complete("p7_proposta_jutjat", LANE_JUR, jutjat="Jutjat de Primera Instància núm. 3 de Palma")
        assert recipients() == ["Fiscalia de Menors", "Jutjat de família"], COMMUNICATIONS
        assert r.waiting_messages() == ["sentencia_judicial"], r.waiting_messages()
        r.send("sentencia_judicial", {"adopcio_constituida": constituida})
        if constituida:
            assert COMMUNICATIONS[-1].subject == "Conservació de l'expedient d'origen durant 50 anys", COMMUNICATIONS
            r.complete("p7_seguiment_postadoptiu", LANE_TAD, resultat_seguiment="adaptacio_adequada")
    return r


def run_sollicitants(idonia: bool) -> Run:
    r = start("sollicitants_adopcio", "2019-06-10", "sollicitants_adopcio")
    r.complete("p7_sessio_informativa_adopcio", LANE_TAD, nombre_sollicitants=2,
               codi_expedient_sollicitants="AD-2025-031")
    r.complete("p7_formacio_sollicitants", LANE_TAD, hores_formacio_adopcio=30)
    r.complete("p7_declaracio_idoneitat", LANE_PSI, idonia=idonia)
    assert recipients() == ([] if idonia else ["Sol·licitants"]), COMMUNICATIONS
    return r


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def birthday_timer(r: Run, title: str, birthday: date, then: str, say) -> None:
    """The instance waits on the timer `title` due at the birthday's midnight (UTC): not fired the second
    before nor at the due instant (SpiffWorkflow fires when due < now), fired a second later."""
    timers = r.timers()
    assert timers == [(title, "TimeDateEventDefinition", f"{birthday.isoformat()}T00:00:00+00:00")], timers
    say(f"waits on timer '{title}' due {timers[0][2]}")
    for moment, ready, what in ((f"{birthday - timedelta(days=1)}T23:59:59", [], "the day before: still waiting"),
                                (f"{birthday}T00:00:00", [], "exactly the due instant: not yet (Spiff needs due < now)"),
                                (f"{birthday}T00:00:01", [then], f"the birthday: {then} ready")):
        CLOCK.set(at(moment))
        r.fire_timers()
        assert r.ready() == ready, (moment, r.ready())
        say(f"{CLOCK.now():%Y-%m-%d %H:%M:%S} ({what})")


def run_emancipacio(birth: str, consent: bool, expect_wait_until: str | None, verbose: bool = False) -> Run:
    """Start on T0 (2025-03-03 09:00 UTC). If expect_wait_until is given, the young person is under 16
    and the path must wait until that date; the 18th birthday timer must fire exactly on its date."""
    r = start("emancipacio", birth, f"emancipacio {birth}")
    r.send("inici_emancipacio", {"mesura": "emancipacio"})
    b = date.fromisoformat(birth)
    sixteen = date(b.year + 16, b.month, b.day) if (b.month, b.day) != (2, 29) else date(b.year + 16, 2, 28)
    eighteen = date(b.year + 18, b.month, b.day) if (b.month, b.day) != (2, 29) else date(b.year + 18, 2, 28)

    def say(msg):
        if verbose:
            print(f"      {msg}")

    if expect_wait_until:
        assert sixteen.isoformat() == expect_wait_until
        assert r.ready() == [], r.ready()
        say(f"{T0:%Y-%m-%d %H:%M} start, age 15:")
        birthday_timer(r, "Compleix 16 anys", sixteen, "p8_consentiment", say)
    else:
        assert r.ready() == ["p8_consentiment"], (r.ready(), r.timers())
    r.complete("p8_consentiment", LANE_TEM, consentiment=consent)
    if not consent:
        return r
    r.complete("p8_pla_autonomia", LANE_TEM, objectiu_principal="formacio")
    CLOCK.advance(timedelta(days=30))
    r.complete("p8_admissio_programa", LANE_TEM, programa="pis_autonomia")
    say(f"{CLOCK.now():%Y-%m-%d} programme admission:")
    birthday_timer(r, "Compleix 18 anys", eighteen, "p8_suport_post18", say)
    r.complete("p8_suport_post18", LANE_TEM, data_sortida_centre=eighteen.isoformat(), ajuda_economica=True,
               xarxa_emancipacio=True)
    (name, kind, due), = r.timers()
    assert kind == "DurationTimerEventDefinition" and datetime.fromisoformat(due) == \
        at(f"{eighteen.replace(year=eighteen.year + 1).isoformat()}T00:00:01"), due
    say(f"follow-up timer 'Un any de seguiment' due {due}")
    CLOCK.set(datetime.fromisoformat(due) - timedelta(seconds=1))
    r.fire_timers()
    assert r.ready() == [], r.ready()
    CLOCK.set(datetime.fromisoformat(due) + timedelta(seconds=1))
    r.fire_timers()
    r.complete("p8_tancar_seguiment", LANE_TEM, situacio_final="autonomia_assolida")
    return r


def run_emancipacio_late() -> Run:
    """17 years 11 months at the start; the 18th birthday passes before the programme admission:
    the timeDate is then in the past and SpiffWorkflow fires it at once, without a refresh."""
    r = start("emancipacio", "2007-03-20", "emancipacio late")
    r.send("inici_emancipacio", {"mesura": "emancipacio"})
    r.complete("p8_consentiment", LANE_TEM, consentiment=True)
    r.complete("p8_pla_autonomia", LANE_TEM)
    CLOCK.set(at("2025-04-02T10:00:00"))
    r.complete("p8_admissio_programa", LANE_TEM)
    assert r.ready() == ["p8_suport_post18"] and r.timers() == [], (r.ready(), r.timers())
    r.complete("p8_suport_post18", LANE_TEM)
    CLOCK.advance(timedelta(days=367))
    r.fire_timers()
    r.complete("p8_tancar_seguiment", LANE_TEM, situacio_final="xarxa_govern")
    return r


def main() -> int:
    print("== runs")
    rv = ["revisio_programada"]
    with manual_clock():
        attempt("acolliment temporal (revisions amb revisio.bpmn)",
                lambda: run_acolliment("temporal", use_revisio=True), rv + ["acolliment_finalitzat"])
        attempt("acolliment permanent", lambda: run_acolliment("permanent"), rv + ["acolliment_finalitzat"])
        attempt("acolliment d'urgència > acolliment permanent (nova formalització)",
                lambda: run_acolliment("urgencia", urgencia_mesura="acolliment_permanent"),
                rv + rv + ["acolliment_finalitzat"])
        attempt("acolliment d'urgència > retorn a la família",
                lambda: run_acolliment("urgencia", urgencia_mesura="retorn_familia"), rv + ["acolliment_finalitzat"])
        for idonia in (True, False):
            r = attempt(f"familia_acollidora idònia={idonia}", lambda idonia=idonia: run_familia(idonia), [])
            if r:
                print(f"      ended at {ended_at(r)}; communications {COMMUNICATIONS}")
        attempt("adopcio constituïda", lambda: run_adopcio(True, True), ["adopcio_constituida"])
        attempt("adopcio no constituïda (sentència)", lambda: run_adopcio(True, False), ["adopcio_no_constituida"])
        attempt("adopcio: adoptabilitat no declarada", lambda: run_adopcio(False), ["adopcio_no_constituida"])
        for idonia in (True, False):
            r = attempt(f"sollicitants_adopcio idonis={idonia}", lambda idonia=idonia: run_sollicitants(idonia), [])
            if r:
                print(f"      ended at {ended_at(r)}; communications {COMMUNICATIONS}")
        print("  emancipacio, 15 anys i 10 mesos (nascut 2009-05-03, inici 2025-03-03):")
        attempt("emancipacio 15a10m: espera als 16, consent, 18 anys, seguiment d'1 any",
                lambda: run_emancipacio("2009-05-03", True, "2025-05-03", verbose=True), ["emancipacio_finalitzada"])
        attempt("emancipacio 16 anys fets avui, no consent", lambda: run_emancipacio("2009-03-03", False, None),
                ["emancipacio_rebutjada"])
        attempt("emancipacio 17 anys, consent", lambda: run_emancipacio("2008-01-15", True, None),
                ["emancipacio_finalitzada"])
        attempt("emancipacio 17 anys i 11 mesos, 18 complerts abans de l'admissió", run_emancipacio_late,
                ["emancipacio_finalitzada"])
    return summary()


if __name__ == "__main__":
    sys.exit(main())
