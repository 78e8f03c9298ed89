"""Background work: fire due timers exactly once, deliver pending messages.

Timers are rows with a due time. A worker leases a batch (FOR UPDATE SKIP
LOCKED on PostgreSQL), fires each through a normal engine step that deletes
the row in the same transaction, so a timer fires once however many workers
run; a worker that dies leaves leases that expire, and another takes over.
APScheduler only decides when to look; the database is the source of truth.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from engine import clock
from engine.clock import SystemClock
from engine.errors import IncidentOpened

log = logging.getLogger(__name__)


class TimerWorker:
    def __init__(self, engine, batch_size: int = 100, lease: timedelta = timedelta(minutes=5),
                 owner: str | None = None):
        self.engine = engine
        self.batch_size = batch_size
        self.lease = lease
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stalled_checked_at = None

    def run_once(self) -> int:
        """Fire every timer due now; returns how many fired."""
        fired = 0
        while True:
            ids = self.engine.acquire_due_timers(self.owner, self.batch_size, self.lease)
            if not ids:
                break
            for timer_id in ids:
                try:
                    if self.engine.fire_timer(timer_id, self.owner):
                        fired += 1
                except IncidentOpened as err:
                    log.warning("timer %s opened incident %s", timer_id, err.incident_id)
                except Exception:
                    # A database hiccup on one timer must not hold back the rest of the batch; this
                    # one keeps its lease and is fired again once the lease expires.
                    log.exception("timer %s could not be fired; it is retried after its lease", timer_id)
            if len(ids) < self.batch_size:
                break
        self.engine.deliver_pending_outbox()
        now = clock.now()
        # Stalled instances are rare (a crash between two transactions): look once a minute, not every poll.
        if self._stalled_checked_at is None or now - self._stalled_checked_at >= timedelta(minutes=1):
            self._stalled_checked_at = now
            self.engine.advance_stalled_instances()
        return fired


def build_scheduler(engine, poll_seconds: float = 5.0, blocking: bool = False, daily_hour: int = 6,
                    housekeeping=(), batch_size: int = 100, lease: timedelta = timedelta(minutes=5)):
    """Polling plus a date trigger at the next due time (real clock only) plus daily housekeeping.

    `housekeeping` callables (e.g. the legal-clock escalation of the domain) run on every poll.
    """
    worker = TimerWorker(engine, batch_size=batch_size, lease=lease)
    scheduler = (BlockingScheduler if blocking else BackgroundScheduler)(timezone="UTC")

    def tick():
        try:
            count = worker.run_once()
            if count:
                log.info("fired %d timers", count)
        except Exception:  # a database hiccup must not kill the scheduler thread
            log.exception("timer run failed")
        for job in housekeeping:
            try:
                job()
            except Exception:
                log.exception("housekeeping job %s failed", getattr(job, "__name__", job))
        _schedule_next_due()

    def _schedule_next_due():
        if not isinstance(clock.get_clock(), SystemClock):
            return  # a manual clock moves by itself; polling picks it up
        due = engine.next_timer_due()
        if due is not None and due > clock.now():
            scheduler.add_job(tick, "date", run_date=due, id="next-due-timer", replace_existing=True)

    scheduler.add_job(tick, "interval", seconds=poll_seconds, id="poll-timers", max_instances=1, coalesce=True)
    scheduler.add_job(tick, "cron", hour=daily_hour, id="daily-clock-check", max_instances=1, coalesce=True)
    scheduler.worker = worker
    scheduler.tick = tick
    return scheduler
