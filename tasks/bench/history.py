"""Does a step cost more on a case with a long history? `history_cost_ratio`.

One case goes through municipal risk intervention (`intervencio`) and its chained reviews
(`revisio`): every cycle, six months pass, the worker fires the review timer, and the social worker
completes the review, which answers the pathway and schedules the next review. The cost of a cycle
(the timer firing plus the completion, with the hand-offs they cause) is timed for the first cycles
and again after `history_cycles` of them; the ratio is median late / median early.
"""
from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

from engine import clock
from engine.clock import ManualClock
from tasks.worker import TimerWorker

from . import BenchRun
from .driver import CaseDriver

REFERRAL = {"gravetat": "moderat", "puntuacio": 7, "retornat_per_imas": False}
REVIEW = {"continuar_revisions": True, "resultat": "en_curs"}


def measure(run: BenchRun) -> dict:
    cycles, timed = run.sizes["history_cycles"], run.sizes["history_steps"]
    previous = clock.get_clock()
    moment = ManualClock(datetime(2026, 11, 20, 9, 0, tzinfo=UTC))
    clock.set_clock(moment)
    try:
        with run.fresh_database("history") as url:
            camins = run.camins(url)
            try:
                case = review_cycles_ready(camins)
                worker = TimerWorker(camins.engine)
                costs = []
                for cycle in range(1, cycles + timed + 1):
                    moment.advance(timedelta(days=200))
                    started = time.perf_counter()
                    worker.run_once()
                    case.do("revisio_municipal", **REVIEW)
                    costs.append(time.perf_counter() - started)
                    if cycle % 50 == 0:
                        run.say(f"  {cycle}/{cycles + timed} review cycles")
            finally:
                camins.close()
    finally:
        clock.set_clock(previous)
    early, late = statistics.median(costs[:timed]), statistics.median(costs[-timed:])
    return {"history_cost_ratio": round(late / early, 3),
            "history": {"cycles": cycles, "timed_cycles": timed, "early_cycle_ms": round(early * 1000, 2),
                        "late_cycle_ms": round(late * 1000, 2)}}


def review_cycles_ready(camins) -> CaseDriver:
    """A case in municipal intervention with its agreement signed: reviews come every six months."""
    case = CaseDriver(camins, "Manacor")
    case.send("derivacio_intervencio_municipal", REFERRAL)
    case.do("elaborar_projecte_intervencio")
    case.do("proposar_conveni")
    case.send("consentiment_familia", {})
    case.do("signar_conveni")
    return case
