"""Every path of pathways 1 `deteccio` and 2 `investigacio` (bpmn/deteccio.bpmn, bpmn/investigacio.bpmn).

Runs on its own, printing a report:  cd /work/main && .venv/bin/python tests/diagram_checks.py

Runs every path to its end on SpiffWorkflow with the helpers of tests/diagram_static.py (which also
holds the static checks of every diagram) and prints the message each run ends with: detection,
urgent or not, hands off to the investigation through the event it threw; the investigation goes
through the severity scale of the DMN table, a rejected validation, the IMAS decision and its
20-day non-interrupting timer.
"""
from __future__ import annotations

import sys
from datetime import timedelta

from diagram_static import CLOCK, COMMUNICATIONS, LANES, Run, attempt, load_spec, manual_clock, reset, summary

ADMIN, TS, ES, COORD, URG, CAP = (LANES[code] for code in (
    "sscb_admin", "sscb_social_worker", "sscb_social_educator", "sscb_coordinator", "imas_intake",
    "imas_section_head"))
DETECCIO = load_spec("deteccio.bpmn")
INVESTIGACIO = load_spec("investigacio.bpmn")


def run_deteccio(urgent: bool, reporter_kind: str, anonymous: bool) -> Run:
    reset()
    r = Run(DETECCIO, {"reporter_kind": reporter_kind, "anonymous": anonymous}, "deteccio")
    r.complete("registre_notificacio", ADMIN, {"canal": "telefon", "data_recepcio": "2025-03-03",
                                               "es_reiteracio": False})
    r.roundtrip()
    r.complete("valorar_urgencia", TS, {"perill_immediat": urgent, "justificacio": "Valoració de prova"})
    if urgent:
        r.complete("assumir_guarda_provisional", URG, {"data_guarda": "2025-03-03",
                                                      "mesura_immediata": "acolliment_urgencia",
                                                      "fiscalia_informada": True})
    assert r.data()["comunicacio_rumi"]["recipient"] == "RUMI", r.data().get("comunicacio_rumi")
    assert [c.recipient for c in COMMUNICATIONS] == ["RUMI"], COMMUNICATIONS
    return r


def assess(r: Run, dims, abandonament=False) -> None:
    keys = ["cura_fisica", "seguretat", "necessitats_emocionals", "educacio", "maltractament"]
    r.complete("valoracio_gravetat", TS, dict(zip(keys, dims, strict=True), abandonament=abandonament))


def run_investigacio(event, dims, expected, abandonament=False, reject_first=None, imas_accepts=None,
                     fire_timer=False) -> Run:
    reset()
    r = Run(INVESTIGACIO, label="investigacio")
    assert r.waiting_messages() == ["investigacio_iniciada"], r.waiting_messages()
    r.send(event)
    assert r.ready() == ["visita_domiciliaria"], r.ready()
    assert "notificacio" in r.data()
    r.complete("visita_domiciliaria", TS, {"data_visita": "2025-03-10", "nombre_visites": 1, "familia_present": True,
                                          "condicions_habitatge": "deficients"})
    assert r.ready() == ["informe_educatiu", "informe_social"], r.ready()
    r.complete("informe_educatiu", ES, {"data_informe_educatiu": "2025-03-12", "escolaritzacio": "absentisme",
                                       "coordinacio_centre_educatiu": True})
    assert "valoracio_gravetat" not in r.ready(), "join fired early"
    r.complete("informe_social", TS, {"data_informe_social": "2025-03-12", "situacio_economica": "precaria",
                                     "xarxa_suport": "limitada"})
    if reject_first is not None:
        assess(r, reject_first)
        r.complete("validar_valoracio", COORD, {"valoracio_validada": False,
                                                "observacions": "Cal revisar les puntuacions"})
    assess(r, dims, abandonament)
    r.roundtrip()
    validar = r.ready_task("validar_valoracio")
    assert validar.task_spec.extensions["properties"]["distinct_from"] == "valoracio_gravetat"
    assert validar.data["gravetat"] == expected, (dims, abandonament, validar.data["gravetat"], expected)
    assert validar.data["puntuacio"] == sum(dims), validar.data["puntuacio"]
    r.complete("validar_valoracio", COORD, {"valoracio_validada": True, "observacions": ""})

    if expected in ("greu", "desemparament"):
        assert r.ready_task("decisio_imas").data["comunicacio_imas"]["recipient"] == "IMAS"
        timers = [t for t in r.timers() if t[1] == "DurationTimerEventDefinition"]
        assert len(timers) == 1, timers
        (timer, due), = r.waiting_timers()
        assert timer == "termini_imas" and due == CLOCK.now() + timedelta(days=20), (timer, due)
        r.fire_timers()
        assert "revisar_termini_vencut" not in r.ready(), "the 20-day timer fired early"
        if fire_timer:
            r.fire_timer("termini_imas")
            r.roundtrip()
            assert r.ready() == ["decisio_imas", "revisar_termini_vencut"], r.ready()   # non-interrupting
            r.complete("revisar_termini_vencut", CAP, {"accio_revisio": "reclamar_decisio",
                                                       "observacions_revisio": ""})
            assert not r.wf.is_completed()
        r.complete("decisio_imas", URG, {"imas_accepta": imas_accepts, "data_decisio_imas": "2025-04-01",
                                         "motiu_decisio": ""})
    return r


def main() -> int:
    print("== runs")
    with manual_clock():
        attempt("deteccio urgent", lambda: run_deteccio(True, "police", False), ["proteccio_urgent"])
        detection = attempt("deteccio no urgent", lambda: run_deteccio(False, "school", True),
                            ["investigacio_iniciada"])
        if detection is None:
            return summary()
        handoff = detection.thrown[0]

        cases = [
            ("sense risc", dict(dims=[0, 0, 0, 0, 0], expected="sense_risc"), "valoracio_sense_risc"),
            ("sense risc (puntuació 2, cap dimensió > 1)", dict(dims=[1, 1, 0, 0, 0], expected="sense_risc"),
             "valoracio_sense_risc"),
            ("lleu per puntuació", dict(dims=[1, 1, 1, 0, 0], expected="lleu"), "derivacio_intervencio_municipal"),
            ("lleu per dimensió", dict(dims=[2, 0, 0, 0, 0], expected="lleu"), "derivacio_intervencio_municipal"),
            ("moderat, validació rebutjada una vegada",
             dict(dims=[2, 2, 1, 1, 0], expected="moderat", reject_first=[0, 0, 0, 0, 0]),
             "derivacio_intervencio_municipal"),
            ("greu per puntuació, IMAS accepta", dict(dims=[3, 2, 2, 2, 2], expected="greu", imas_accepts=True),
             "derivacio_proteccio_imas"),
            ("greu per dimensió, IMAS retorna", dict(dims=[3, 0, 0, 0, 0], expected="greu", imas_accepts=False),
             "derivacio_intervencio_municipal"),
            ("desemparament, termini de 20 dies vençut, IMAS accepta",
             dict(dims=[1, 0, 0, 0, 0], abandonament=True, expected="desemparament", imas_accepts=True,
                  fire_timer=True), "derivacio_proteccio_imas"),
            ("desemparament, termini vençut, IMAS retorna",
             dict(dims=[3, 3, 3, 3, 3], abandonament=True, expected="desemparament", imas_accepts=False,
                  fire_timer=True), "derivacio_intervencio_municipal"),
        ]
        for label, kwargs, message in cases:
            def returned_as_expected(r, kwargs=kwargs, message=message):
                if message == "derivacio_intervencio_municipal":
                    returned = r.events[0][1]["retornat_per_imas"]
                    assert returned is (kwargs.get("imas_accepts") is False), returned

            attempt(f"investigacio {label}", lambda kwargs=kwargs: run_investigacio(handoff, **kwargs), [message],
                    returned_as_expected)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
