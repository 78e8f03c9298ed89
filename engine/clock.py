"""One injectable clock for the engine, SpiffWorkflow's timers and the scheduler.

Tests and simulations move a case years forward in a second by advancing a
`ManualClock`; production uses `SystemClock`. SpiffWorkflow reads the time
through `datetime.now(UTC)` inside its timer module, so `install()`
points that module's `datetime` name at a subclass whose `now()` asks our clock.
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta

import SpiffWorkflow.bpmn.specs.event_definitions.timer as spiff_timer


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: datetime | None = None):
        self._now = start or datetime.now(UTC)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._now = self._now + delta
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment


class FileClock:
    """Reads the current time from a file holding an ISO timestamp.

    Lets separate processes (API, workers) share one simulated time: a test or a
    simulation writes the file, every process reads it. A missing or empty file
    means the real time.
    """

    def __init__(self, path: str):
        self.path = path

    def now(self) -> datetime:
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            text = ""
        if not text:
            return datetime.now(UTC)
        moment = datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def set(self, moment: datetime) -> None:
        # Write then rename: a reader in another process never sees a half-written (empty) file,
        # which it would take for the real time.
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(moment.isoformat())
        os.replace(temporary, self.path)


_current = SystemClock()
# A clock for one thread (or task) only: a scenario run moves its own time without moving the time of
# the requests the same process serves meanwhile.
_local: ContextVar = ContextVar("camins_local_clock", default=None)


def get_clock():
    return _local.get() or _current


def now() -> datetime:
    return get_clock().now()


@contextlib.contextmanager
def local_clock(clock) -> Iterator:
    """Within this block, and in this thread only, the engine and Spiff's timers read `clock`."""
    token = _local.set(clock)
    try:
        yield clock
    finally:
        _local.reset(token)


def set_clock(clock) -> None:
    """Make `clock` the process-wide clock (engine, Spiff timers, scheduler)."""
    global _current
    _current = clock


class _ClockedDatetime(datetime):
    @classmethod
    def now(cls, tz=None):
        moment = now()
        return moment.astimezone(tz) if tz is not None else moment.replace(tzinfo=None)


def install() -> None:
    spiff_timer.datetime = _ClockedDatetime


install()
