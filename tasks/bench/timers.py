"""`timers`: many timers falling due together, fired by real worker processes.

What is measured, on a fresh database:

1. **Seeding.** A tiny diagram of our own (a user task with an interrupting boundary timer, as a
   deadline on a caseworker's task; firing it cancels the task and ends the instance) is deployed,
   ONE instance is created and advanced through the engine to its wait, and its rows are read back:
   the instance (its SpiffWorkflow state) and its projections (`human_task`, `timer`, `history`).
   The wanted number of clones is then bulk-inserted: in each clone every task UUID of the template
   is replaced by a fresh one (in the state JSON and in the projection rows alike), so each clone is
   exactly what the engine would have written for its own instance. Every timer is due at the same
   moment. Before anything is timed, three clones and the template are fired in this process and
   checked (each loads, fires once, cancels its task and completes), so that a broken clone cannot
   pass for a fast worker.

2. **Time.** Two `camins worker` processes (the realistic deployment, and two workers are what make
   exactly-once worth checking) share one simulated time through `CAMINS_CLOCK_FILE`. While the
   timers are seeded and counted as pending, the file holds a moment one minute before they are
   due. To fire, the file is removed: every process then reads the real clock, which is far past
   the due moment (timers are due a day in the simulated past), so the shared clock crosses the due
   moment at the real instant `t0` the file is removed, and every timer "becomes due" at `t0`. The
   workers write `timer_fired` history with that real clock, so a timer's lag is its
   `history.at − t0`: it includes the workers noticing (their poll interval), queueing behind the
   other timers and the firing step itself. `seconds_to_fire_all` is the largest lag (the last
   `timer_fired` row; the bench also polls until no timer row remains) and `fired_per_s` is
   `count / seconds_to_fire_all`.

3. **Worker memory.** Resident memory (VmRSS from /proc) of each worker is read after it has polled
   for a while with no timer in the database (`worker_rss_idle_mib`). Its peak (VmHWM) is then reset
   (`/proc/PID/clear_refs`; start-up peaks higher than any of this, as argon2 hashes a dummy password
   at import) and read again once the `count` timers were seeded and the workers have polled over
   them, not yet due, for a few seconds (`worker_rss_pending_mib`: the *peak* over seeding and
   polling, so a poll that loaded the pending timers and let them go again would still show).
   `memory_ratio` = pending peak / idle RSS, for the worker where it is largest: the target is that
   pending timers are never loaded into memory. The peak while firing is reported beside it
   (`worker_rss_peak_firing_mib`).

4. **Exactly once.** Every seeded instance has exactly one `timer_fired` row and one
   `instance_completed` row, is completed with its task cancelled, no timer row remains, no incident
   was opened and no worker logged a traceback.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, text

from engine import clock
from engine.bundle import BundleFile
from engine.clock import FileClock
from engine.models import HistoryEvent, HumanTask, Incident, Instance, Timer
from tasks.worker import TimerWorker

from . import BenchRun

PROCESS_KEY = "bench_termini"
WORKERS = 2
POLL_SECONDS = 0.2
BATCH = 100
LEASE_SECONDS = 300
SEED_BATCH = 2000          # clones per transaction
SANITY_CLONES = 3          # fired before anything is timed, not counted
PENDING_POLL_SECONDS = 3.0  # the workers poll over the pending timers this long before their memory is read

ROOT = Path(__file__).resolve().parents[2]
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

FORM = b"""{"type": "default", "id": "Form_revisar", "schemaVersion": 16, "components": [
 {"type": "textfield", "key": "nota", "label": "Nota", "id": "Field_nota"}]}"""


def review_within_an_hour(process_key: str, name: str) -> str:
    """A diagram with one user task, `revisar`, and a one-hour interrupting timer `termini` on it.

    The timer benchmark fires its timers; tests/test_timers_multiprocess.py races them against workers.
    """
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="defs_{process_key}"
  targetNamespace="http://camins">
  <bpmn:collaboration id="collab"><bpmn:participant id="pool" processRef="{process_key}" /></bpmn:collaboration>
  <bpmn:process id="{process_key}" name="{name}" isExecutable="true">
    <bpmn:laneSet id="lanes"><bpmn:lane id="lane_ts" name="Treballador/a social">
      <bpmn:flowNodeRef>inici</bpmn:flowNodeRef><bpmn:flowNodeRef>revisar</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>termini</bpmn:flowNodeRef><bpmn:flowNodeRef>fi_revisat</bpmn:flowNodeRef>
      <bpmn:flowNodeRef>fi_vencut</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>
    <bpmn:startEvent id="inici"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:userTask id="revisar" name="Revisar">
      <bpmn:extensionElements><spiffworkflow:properties>
        <spiffworkflow:property name="form" value="forms/revisar.form" />
      </spiffworkflow:properties></bpmn:extensionElements>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:userTask>
    <bpmn:boundaryEvent id="termini" name="Termini" attachedToRef="revisar" cancelActivity="true">
      <bpmn:outgoing>f3</bpmn:outgoing>
      <bpmn:timerEventDefinition id="ted_termini">
        <bpmn:timeDuration xsi:type="bpmn:tFormalExpression">"PT1H"</bpmn:timeDuration>
      </bpmn:timerEventDefinition>
    </bpmn:boundaryEvent>
    <bpmn:endEvent id="fi_revisat"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:endEvent id="fi_vencut"><bpmn:incoming>f3</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="inici" targetRef="revisar" />
    <bpmn:sequenceFlow id="f2" sourceRef="revisar" targetRef="fi_revisat" />
    <bpmn:sequenceFlow id="f3" sourceRef="termini" targetRef="fi_vencut" />
  </bpmn:process>
</bpmn:definitions>
"""


DIAGRAM = review_within_an_hour(PROCESS_KEY, "Revisar abans del termini")

_TABLES = (Instance.__table__, HumanTask.__table__, Timer.__table__, HistoryEvent.__table__)


def measure(run: BenchRun) -> dict:
    count = run.sizes["timers"]
    mib = 2 ** 20
    with run.fresh_database("timers") as url:
        clock_path = run.workdir / f"timers-clock-{uuid.uuid4().hex[:8]}"
        shared = FileClock(str(clock_path))
        # Timers are due a day in the (real) past, so that removing the clock file makes them due at once.
        started = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        due = started + timedelta(hours=1)
        shared.set(started)
        previous = clock.get_clock()
        clock.set_clock(shared)
        camins = run.camins(url, deploy=False, users=False)
        workers: list[_Worker] = []
        try:
            template = _template(camins)
            assert template.due == due, (template.due, due)
            seeder = _Seeder(camins, template)
            seeder.seed(range(template.instance_id + 1, template.instance_id + 1 + SANITY_CLONES))
            _sanity_check(camins, shared, template, due + timedelta(minutes=1))
            shared.set(due - timedelta(minutes=1))

            workers = [_Worker(url, clock_path, run.workdir / f"timers-worker-{n}.log").start()
                       for n in range(WORKERS)]
            for worker in workers:
                worker.wait_polling()
            idle = [w.settled_rss() for w in workers]
            # The peak so far is the start-up's (argon2 hashes a dummy password at import, 64 MiB): reset it,
            # so that the peaks below are those of the pending and the firing phases.
            peak_reset = all([w.reset_peak() for w in workers])
            run.say(f"  workers idle with no timers: {_mib(idle)}")

            first = template.instance_id + 1 + SANITY_CLONES
            ids = range(first, first + count)
            seed_started = time.monotonic()
            seeder.seed(ids, say=run.say)
            seed_seconds = time.monotonic() - seed_started
            with camins.db.read() as session:
                pending = session.scalar(select(func.count()).select_from(Timer).where(Timer.due_at == due))
            assert pending == count, (pending, count)
            run.say(f"  seeded {count} timers in {seed_seconds:.1f} s; the workers poll over them")
            time.sleep(PENDING_POLL_SECONDS)
            for w in workers:
                w.check_alive()
            # Pending memory: the peak (VmHWM) since the idle reading, i.e. over the seeding and the polls
            # over the pending timers, which catches a poll that loads them and frees them again; the
            # current RSS if the kernel would not reset the peak.
            pending_rss = [w.peak_rss() if peak_reset else w.rss() for w in workers]
            run.say(f"  workers with {count} timers pending: {_mib(pending_rss)}")
            for w in workers:
                w.reset_peak()

            # Fire: the shared clock jumps to the real time, past the due moment.
            t0 = datetime.now(UTC)
            clock_path.unlink()
            fire_started = time.monotonic()
            _wait_until_fired(camins, workers, count, run)
            polled_seconds = time.monotonic() - fire_started
            peaks = [w.peak_rss() for w in workers]
            run.say(f"  workers' peak while firing: {_mib(peaks)}")
            result = _verify(camins, ids, t0, workers)
        finally:
            for worker in workers:
                worker.stop()
            camins.close()
            clock.set_clock(previous)
            clock_path.unlink(missing_ok=True)

    # memory_ratio: pending (peak since idle) / idle (current RSS), for the worker where it is largest.
    ratios = [p / i for p, i in zip(pending_rss, idle, strict=True)]
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    seconds = result["seconds_to_fire_all"]
    return {"timers": {
        "count": count,
        "fired": result["fired"],
        "exactly_once": result["exactly_once"],
        "seconds_to_fire_all": round(seconds, 2),
        "fired_per_s": round(result["fired"] / seconds, 1) if seconds > 0 else None,
        "lag_p50_s": round(result["lag_p50_s"], 3),
        "lag_p99_s": round(result["lag_p99_s"], 3),
        "worker_rss_idle_mib": round(idle[worst] / mib, 1),
        "worker_rss_pending_mib": round(pending_rss[worst] / mib, 1),
        "memory_ratio": round(ratios[worst], 3),
        "worker_rss_peak_firing_mib": round(max(peaks) / mib, 1),
        "seed_seconds": round(seed_seconds, 1),
        # How it was measured, and what went wrong if exactly_once is false.
        "workers": WORKERS,
        "batch": BATCH,
        "peak_since_idle": peak_reset,
        "seconds_until_no_timer_left": round(polled_seconds, 1),
        "problems": result["problems"],
    }}


def _mib(values: list[int]) -> str:
    return ", ".join(f"{v / 2 ** 20:.1f} MiB" for v in values)


# ---------------------------------------------------------------------------- the template
class _Template:
    def __init__(self, instance_id: int, rows: dict, due: datetime):
        self.instance_id = instance_id
        self.rows = rows  # table name → [row dict]
        self.due = due
        state = rows["instance"][0]["state"]
        # The state split around its task UUIDs: odd items are UUIDs, put back fresh in each clone.
        self.state_parts = re.split(f"({_UUID.pattern})", state)
        self.state_uuids = _UUID.findall(state)
        self.uuids = sorted(set(self.state_uuids))


def _template(camins) -> _Template:
    """Deploy the diagram and take one instance through the engine to its wait; read its rows back."""
    engine = camins.engine
    engine.deploy([BundleFile("bench_termini.bpmn", DIAGRAM.encode()), BundleFile("forms/revisar.form", FORM)],
                  "bench")
    with camins.db.write() as session:
        definition = engine.latest_definition(session, PROCESS_KEY)
        instance_id = engine.create_instance(session, definition, "BENCH-T-0", None, "bench").id
    engine.advance(instance_id, "bench")
    rows = {}
    with camins.db.read() as session:
        for table in _TABLES:
            column = table.c.id if table.name == "instance" else table.c.instance_id
            rows[table.name] = [dict(r._mapping) for r in session.execute(select(table).where(column == instance_id))]
    assert [len(rows[t.name]) for t in _TABLES] == [1, 1, 1, 2], {k: len(v) for k, v in rows.items()}
    return _Template(instance_id, rows, rows["timer"][0]["due_at"])


def _swap(value, fresh: dict):
    """`value` with every template UUID replaced by its fresh one (strings, and inside JSON)."""
    if isinstance(value, str):
        return fresh.get(value, value)
    if isinstance(value, dict):
        return {k: _swap(v, fresh) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, fresh) for v in value]
    return value


class _Seeder:
    """Bulk-inserts clones of the template instance with its projection rows, in batches."""

    def __init__(self, camins, template: _Template):
        self.camins = camins
        self.template = template

    def _clone(self, instance_id: int, out: dict) -> None:
        t = self.template
        fresh = {u: str(uuid.uuid4()) for u in t.uuids}
        parts = list(t.state_parts)
        parts[1::2] = [fresh[u] for u in t.state_uuids]
        business_key = f"BENCH-T-{instance_id}"
        for name, rows in t.rows.items():
            for row in rows:
                clone = {k: _swap(v, fresh) for k, v in row.items() if k != "state"}
                if name == "instance":
                    clone["id"] = instance_id
                    clone["state"] = "".join(parts)
                else:
                    clone["instance_id"] = instance_id
                    if name == "history":
                        del clone["id"]
                if "business_key" in clone:
                    clone["business_key"] = business_key
                out[name].append(clone)

    def seed(self, ids: range, say=None) -> None:
        total = len(ids)
        next_report = 0.1
        done = 0
        for start in range(0, total, SEED_BATCH):
            batch = ids[start:start + SEED_BATCH]
            out = {t.name: [] for t in _TABLES}
            for instance_id in batch:
                self._clone(instance_id, out)
            with self.camins.db.write_engine.begin() as conn:
                for table in _TABLES:  # parents first
                    conn.execute(insert(table), out[table.name])
            done += len(batch)
            if say and done / total >= next_report and done < total:
                say(f"  seeding timers: {done}/{total}")
                next_report += 0.1
        if not self.camins.db.is_sqlite:
            with self.camins.db.write_engine.begin() as conn:
                conn.execute(text("SELECT setval(pg_get_serial_sequence('instance', 'id'), "
                                  "(SELECT max(id) FROM instance))"))
                # What autovacuum's autoanalyze does after a bulk load (when it is on: the test server here
                # runs without it). With no statistics at all the planner leases timers by sorting every
                # due row (~80 ms for 100,000) instead of walking ix_timer_due_at (0.2 ms).
                conn.execute(text("ANALYZE instance, human_task, timer, history"))


def _sanity_check(camins, shared: FileClock, template: _Template, past_due: datetime) -> None:
    """The template and the first clones load, fire once, cancel their task and complete."""
    ids = list(range(template.instance_id, template.instance_id + 1 + SANITY_CLONES))
    engine = camins.engine
    with camins.db.read() as session:
        for instance_id in ids[1:]:
            instance = session.get(Instance, instance_id)
            cached = engine.specs.get(instance.definition)
            workflow = engine.serializer.loads(instance.state, cached.spec, cached.subprocess_specs,
                                               engine.script_engine)
            timer = session.scalar(select(Timer).where(Timer.instance_id == instance_id))
            task = session.scalar(select(HumanTask).where(HumanTask.instance_id == instance_id))
            waiting = workflow.get_task_from_id(uuid.UUID(timer.id))
            ready = workflow.get_task_from_id(uuid.UUID(task.id))
            assert waiting.task_spec.bpmn_id == "termini" and ready.task_spec.bpmn_id == "revisar", instance_id
            assert len({str(t.id) for t in workflow.get_tasks()} & set(template.uuids)) == 0, instance_id
    shared.set(past_due)
    fired = TimerWorker(engine, owner="bench-sanity").run_once()
    assert fired == len(ids), (fired, ids)
    with camins.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Timer)) == 0
        for instance_id in ids:
            instance = session.get(Instance, instance_id)
            task = session.scalar(select(HumanTask).where(HumanTask.instance_id == instance_id))
            events = session.scalars(select(HistoryEvent.event).where(HistoryEvent.instance_id == instance_id)
                                     .order_by(HistoryEvent.id)).all()
            assert (instance.status, instance.active_elements, task.state) == ("completed", [], "cancelled"), \
                instance_id
            assert sorted(events) == ["instance_completed", "instance_started", "task_cancelled", "task_ready",
                                      "timer_fired"], (instance_id, events)


# ----------------------------------------------------------------------------- the workers
class _Worker:
    """A `camins worker` subprocess on the shared clock file."""

    def __init__(self, url: str, clock_path: Path, log_path: Path):
        self.url = url
        self.clock_path = clock_path
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> _Worker:
        env = {**os.environ, "CAMINS_DATABASE_URL": self.url, "CAMINS_CLOCK_FILE": str(self.clock_path),
               "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "worker", "--poll", str(POLL_SECONDS), "--batch", str(BATCH),
                 "--lease", str(LEASE_SECONDS)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"worker exited with {self.popen.returncode}:\n{self.log()[-3000:]}")

    def wait_polling(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "polling every" not in self.log():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not polling after {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def _status(self, key: str) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} for worker {self.popen.pid}")

    def rss(self) -> int:
        return self._status("VmRSS")

    def settled_rss(self, timeout: float = 60.0) -> int:
        """RSS once the worker has polled a while and it stopped moving (first polls open connections, ...)."""
        time.sleep(PENDING_POLL_SECONDS)
        readings = [self.rss()]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            self.check_alive()
            readings.append(self.rss())
            if len(readings) >= 5 and max(readings[-5:]) - min(readings[-5:]) < 2 ** 18:  # 2 s within 256 KiB
                break
        return readings[-1]

    def peak_rss(self) -> int:
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        """Reset the kernel's VmHWM of the worker (Linux: 5 → clear_refs); False when not allowed."""
        try:
            Path(f"/proc/{self.popen.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=20)


def _wait_until_fired(camins, workers: list[_Worker], count: int, run: BenchRun) -> None:
    """Poll the database until no timer row remains; fail if a worker dies or nothing moves for long."""
    last_left, last_change = count, time.monotonic()
    next_report = time.monotonic() + 10
    while True:
        time.sleep(0.5)
        with camins.db.read() as session:
            left = session.scalar(select(func.count()).select_from(Timer))
        now = time.monotonic()
        if left == 0:
            return
        for worker in workers:
            worker.check_alive()
        if left != last_left:
            last_left, last_change = left, now
        elif now - last_change > 120:
            raise RuntimeError(f"{left} timers left and none fired for 120 s:\n{workers[0].log()[-3000:]}")
        if now >= next_report:
            run.say(f"  firing: {count - left}/{count}")
            next_report = now + 10


# ---------------------------------------------------------------------------- verification
def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def _verify(camins, ids: range, t0: datetime, workers: list[_Worker]) -> dict:
    lo, hi = ids.start, ids.stop - 1
    problems = []
    with camins.db.read() as session:
        fired_at = session.execute(select(HistoryEvent.instance_id, HistoryEvent.at)
                                   .where(HistoryEvent.event == "timer_fired",
                                          HistoryEvent.instance_id.between(lo, hi))).all()
        completed_events = session.scalar(select(func.count(func.distinct(HistoryEvent.instance_id)))
                                          .where(HistoryEvent.event == "instance_completed",
                                                 HistoryEvent.instance_id.between(lo, hi)))
        completed_rows = session.scalar(select(func.count()).select_from(HistoryEvent)
                                        .where(HistoryEvent.event == "instance_completed",
                                               HistoryEvent.instance_id.between(lo, hi)))
        statuses = dict(session.execute(select(Instance.status, func.count()).where(Instance.id.between(lo, hi))
                                        .group_by(Instance.status)).all())
        task_states = dict(session.execute(select(HumanTask.state, func.count())
                                           .where(HumanTask.instance_id.between(lo, hi))
                                           .group_by(HumanTask.state)).all())
        timers_left = session.scalar(select(func.count()).select_from(Timer))
        incidents = session.scalar(select(func.count()).select_from(Incident))
    count = len(ids)
    per_instance: dict[int, int] = {}
    for instance_id, _at in fired_at:
        per_instance[instance_id] = per_instance.get(instance_id, 0) + 1
    twice = sum(1 for n in per_instance.values() if n > 1)
    if twice:
        problems.append(f"{twice} timers fired more than once")
    if len(per_instance) != count:
        problems.append(f"{count - len(per_instance)} timers never fired")
    if completed_events != count or completed_rows != count:
        problems.append(f"instance_completed: {completed_rows} rows for {completed_events} of {count} instances")
    if statuses != {"completed": count}:
        problems.append(f"instance statuses {statuses}")
    if task_states != {"cancelled": count}:
        problems.append(f"task states {task_states}")
    if timers_left:
        problems.append(f"{timers_left} timer rows left")
    if incidents:
        problems.append(f"{incidents} incidents")
    for n, worker in enumerate(workers):
        if "Traceback" in worker.log():
            problems.append(f"worker {n} logged a traceback")
    lags = [(at - t0).total_seconds() for _instance_id, at in fired_at]
    return {
        "fired": len(per_instance),
        "exactly_once": not problems,
        "problems": problems,
        "seconds_to_fire_all": max(lags) if lags else float("nan"),
        "lag_p50_s": _percentile(lags, 0.5),
        "lag_p99_s": _percentile(lags, 0.99),
    }

