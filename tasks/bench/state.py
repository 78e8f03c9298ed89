"""How big a saved instance gets: `state_bytes`, the largest state of each pathway the journeys reach.

Two journeys, driven through the service: a case of serious risk through detection and assessment
to the IMAS decision (with its 20-day boundary timer), and a case through municipal intervention with
review cycles. After every action the largest saved state of each process is kept.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from engine import clock
from engine.clock import ManualClock
from engine.models import Instance
from tasks.worker import TimerWorker
from workflows.demo import SEVERITY_SCORES

from . import BenchRun
from .driver import CaseDriver
from .history import REVIEW, review_cycles_ready

ASSESSMENT = ["registre_notificacio", "valorar_urgencia", "visita_domiciliaria", "informe_social",
              "informe_educatiu"]


def measure(run: BenchRun) -> dict:
    previous = clock.get_clock()
    moment = ManualClock(datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    clock.set_clock(moment)
    largest: dict[str, int] = {}
    try:
        with run.fresh_database("state") as url:
            camins = run.camins(url)
            try:
                def keep_largest():
                    with camins.db.read() as session:
                        for key, size in session.execute(select(Instance.process_key,
                                                                func.max(func.length(Instance.state)))
                                                         .group_by(Instance.process_key)):
                            largest[key] = max(largest.get(key, 0), size)

                serious = CaseDriver(camins, "Son Servera")
                for element in ASSESSMENT:
                    serious.do(element)
                    keep_largest()
                serious.do("valoracio_gravetat", **SEVERITY_SCORES["greu"])
                serious.do("validar_valoracio", valoracio_validada=True)
                keep_largest()
                reviewed = review_cycles_ready(camins)
                worker = TimerWorker(camins.engine)
                for _cycle in range(5):
                    moment.advance(timedelta(days=200))
                    worker.run_once()
                    reviewed.do("revisio_municipal", **REVIEW)
                    keep_largest()
            finally:
                camins.close()
    finally:
        clock.set_clock(previous)
    return {"state_bytes": dict(sorted(largest.items()))}
