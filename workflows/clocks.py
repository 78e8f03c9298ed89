"""Legal clocks: deadlines with a legal basis, as data.

A diagram attaches a clock to its elements with the properties `clock_start`
(the clock starts when the element is entered), `clock_start_after` (it starts
when the element completes, e.g. "3 months from the resolution") and
`clock_stop` (it stops when the element completes). Durations may depend on the
child's age, computed from the birth date held on the case, never typed by hand.

Most clocks are deadlines: stopping before the due time is "met", after it
"late", and running past it "breached". A few are minimums ("a follow-up of at
least a year"): running past the due time is "met", and stopping before it is
"breached" (ended too early).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from engine.durations import add_duration

MUNICIPAL, IMAS_SECTION = "municipality", "section"
AT_RISK_SHARE = 0.8


@dataclass(frozen=True)
class ClockRule:
    """A duration ('P20D', 'P3M', 'P2Y', 'PT48H'), or one under an age and another from it."""

    duration: str
    age_limit: int | None = None
    duration_from_age: str | None = None

    def describe(self) -> str:
        if self.age_limit is None:
            return self.duration
        return f"{self.duration} under {self.age_limit}, else {self.duration_from_age}"


@dataclass(frozen=True)
class LegalClock:
    id: str
    label: str  # Catalan
    article: str
    rule: ClockRule
    supervisor_level: str  # whose supervisor hears of a breach
    at_risk_share: float = AT_RISK_SHARE
    # False where the diagram escalates a breach itself (a boundary timer), so nobody gets two tasks.
    escalate: bool = True
    # A minimum duration ("at least a year") rather than a deadline.
    minimum: bool = False


def _c(id_, label, article, duration, level, age_limit=None, from_age=None, escalate=True,
       minimum=False) -> LegalClock:
    return LegalClock(id_, label, article, ClockRule(duration, age_limit, from_age), level, escalate=escalate,
                      minimum=minimum)


CATALOGUE: dict[str, LegalClock] = {c.id: c for c in [
    # Pathway 2 escalates this one with its own 20-day boundary timer.
    _c("imas_decision", "Decisió de l'IMAS sobre la derivació", "Llei 9/2019 art. 120.1", "P20D", IMAS_SECTION,
       escalate=False),
    _c("risk_allegations", "Al·legacions de la família en el procediment de risc", "Llei 9/2019 art. 110.4",
       "P15D", MUNICIPAL),
    _c("risk_proposal", "Proposta a la Comissió de Declaració de Risc", "Llei 9/2019 art. 111", "P10D", MUNICIPAL),
    _c("risk_procedure", "Durada del procediment de declaració de risc", "Llei 9/2019 art. 101", "P6M", MUNICIPAL),
    _c("intervention_project", "Durada del projecte d'intervenció (prorrogable 6 mesos)",
       "Llei 9/2019 art. 114.2.c", "P12M", MUNICIPAL),
    _c("municipal_review", "Revisió del projecte d'intervenció", "Llei 9/2019 art. 117", "P3M", MUNICIPAL,
       age_limit=3, from_age="P6M"),
    _c("imas_prior_inquiries", "Diligències prèvies de l'IMAS", "Llei 9/2019 art. 124.3", "P1M", IMAS_SECTION),
    _c("guardianship_proposal", "Proposta a la Comissió de Desemparament i Tutela", "Llei 9/2019 art. 129",
       "P10D", IMAS_SECTION),
    _c("resolution_notice", "Notificació de la resolució", "Llei 9/2019 art. 132.1; CC art. 172.1", "PT48H",
       IMAS_SECTION),
    _c("urgent_diligences", "Diligències de la guarda provisional", "Llei 9/2019 art. 142", "P15D", IMAS_SECTION),
    _c("protection_plan", "Pla individual de protecció (PIP)", "Llei 9/2019 art. 148.1", "P1M", IMAS_SECTION),
    _c("measure_review", "Revisió de la mesura de protecció", "Llei 9/2019 art. 146", "P3M", IMAS_SECTION,
       age_limit=3, from_age="P6M"),
    _c("residential_under_6", "Acolliment residencial d'un infant menor de 6 anys", "LO 1/1996 art. 21.3", "P3M",
       IMAS_SECTION),
    _c("parents_challenge", "Termini dels progenitors per impugnar la resolució", "CC art. 172.2; Llei 9/2019 "
       "art. 136", "P2Y", IMAS_SECTION),
    _c("court_opposition", "Oposició judicial a la resolució", "LEC art. 780", "P2M", IMAS_SECTION),
    _c("temporary_measure_limit", "Límit de les mesures temporals", "Llei 9/2019 art. 146; LO 1/1996 art. 12.6",
       "P2Y", IMAS_SECTION),
    _c("post_return_followup", "Seguiment després del retorn a la família (mínim)", "Llei 9/2019 art. 149.4",
       "P1Y", IMAS_SECTION, minimum=True),
    _c("foster_fiscalia", "Tramesa de l'acolliment a la Fiscalia", "Llei 9/2019 art. 157.5", "P1M", IMAS_SECTION),
    _c("emergency_foster_limit", "Durada de l'acolliment d'urgència", "Llei 9/2019 art. 155.5", "P6M",
       IMAS_SECTION),
    _c("temporary_foster_limit", "Durada de l'acolliment temporal", "Llei 9/2019 art. 155.5", "P2Y", IMAS_SECTION),
    _c("permanent_foster_review", "Revisió de l'acolliment permanent (primer any)", "Llei 9/2019 art. 146", "P6M",
       IMAS_SECTION),
    _c("adoption_proposal", "Proposta d'adopció al jutjat (prorrogable fins a 1 any)",
       "Llei 9/2019 art. 146; CC art. 176 bis", "P3M", IMAS_SECTION),
    _c("post_care_followup", "Seguiment després de deixar el centre (mínim)", "Llei 9/2019 art. 184.1", "P1Y",
       IMAS_SECTION, minimum=True),
]}


def age_on(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def due_at(clock: LegalClock, started_at: datetime, birth_date: date | None) -> datetime:
    rule = clock.rule
    duration = rule.duration
    if rule.age_limit is not None and birth_date is not None and \
            age_on(birth_date, started_at.date()) >= rule.age_limit:
        duration = rule.duration_from_age
    return add_duration(started_at, duration)


def at_risk_at(clock: LegalClock, started_at: datetime, due: datetime) -> datetime:
    return started_at + (due - started_at) * clock.at_risk_share


def status(clock: LegalClock | None, now: datetime, due: datetime, risk_from: datetime,
           stopped_at: datetime | None) -> str:
    if clock is not None and clock.minimum:
        if stopped_at is not None:
            return "met" if stopped_at >= due else "breached"
        return "met" if now >= due else "on_time"
    if stopped_at is not None:
        return "met" if stopped_at <= due else "late"
    if now >= due:
        return "breached"
    if now >= risk_from:
        return "at_risk"
    return "on_time"


CLOCK_PROPERTIES = ("clock_start", "clock_start_after", "clock_stop")


def clock_ids(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]
