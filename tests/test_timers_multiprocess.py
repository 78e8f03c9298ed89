"""Exactly-once timers across processes, on PostgreSQL.

Two API servers (`camins serve`) and two workers (`camins worker`) share one database and one
simulated time (CAMINS_CLOCK_FILE). A thousand instances each wait on a user task with an
interrupting one-hour boundary timer. The clock moves past the hour: the workers lease the timers
in small batches and fire them while caseworkers complete some of the same tasks through both
servers, so a timer and a completion race on the same instance. One worker is killed with
SIGKILL in the middle of a batch; its leases hold until the clock moves past their expiry, and
then the other worker fires what it left. In the end every instance finished exactly once: by its
timer or by its task, never both, never neither, nothing written twice, no incident, no 5xx.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select, text

from engine import clock
from engine.bundle import BundleFile
from engine.clock import FileClock
from engine.db import throwaway_postgres_database
from engine.models import HistoryEvent, HumanTask, Incident, Instance, Timer
from tasks.bench.timers import review_within_an_hour
from workflows.orgunits import find_unit
from workflows.service import Camins

from .conftest import PG_SERVER, START, Http, _prepare, require_postgres
from .processes import start_server, start_worker

# Starts servers or workers as subprocesses: under pytest-xdist, on one worker with the others that do.
pytestmark = pytest.mark.xdist_group("processes")

TIMERS = 1000
BATCH = 50
LEASE = timedelta(seconds=60)  # of simulated time
CREATE_BATCH = 100  # instances created per transaction
CLIENT_THREADS_PER_SERVER = 2
CLIENT_ATTEMPTS = 60  # per client thread
MIN_CLIENT_RESULTS = 40  # the victim is not killed before the caseworkers have made this many attempts
CASEWORKER = "ts.sonservera"  # Treballador/a social of Son Servera, where the case is
PROCESS_KEY = "espera_timer"
DUE = START + timedelta(hours=1)
PROBLEM = "application/problem+json"
# Generous bounds for a loaded 2-core machine: these catch a hang, not a slow run.
DRAIN_SECONDS = 300

FORM = b"""{"type": "default", "id": "Form_revisar", "schemaVersion": 16, "components": [
 {"type": "textfield", "key": "nota", "label": "Nota", "id": "Field_nota", "validate": {"required": true}}]}"""

DIAGRAM = review_within_an_hour(PROCESS_KEY, "Revisar abans d'una hora")


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away PostgreSQL database for this module only (the race needs row locks and SKIP LOCKED)."""
    require_postgres()
    with throwaway_postgres_database(PG_SERVER, "timers") as url:
        _prepare(url)
        yield url


@pytest.fixture
def shared_clock(tmp_path):
    """One simulated time for this process and every subprocess; the previous clock is put back."""
    previous = clock.get_clock()
    shared = FileClock(str(tmp_path / "now"))
    shared.set(START)
    clock.set_clock(shared)
    yield shared
    clock.set_clock(previous)


def _create_instances(camins: Camins, count: int) -> tuple[str, dict[int, str]]:
    """One case holding `count` instances, each waiting at its task; instance id → task id."""
    engine = camins.engine
    engine.deploy([BundleFile("espera.bpmn", DIAGRAM.encode()), BundleFile("forms/revisar.form", FORM)], "analista")
    with camins.db.write() as session:  # the case without the notification pathway and its own tasks and timers
        case = camins._new_case(session, find_unit("Son Servera"),
                                {"given_name": "Aina", "family_name": "Ferrer Pons"}, "analista")
        reference = case.reference
    # Created and advanced in batches: each instance is written and taken to its first wait state in
    # the same transaction, as a message start does (Engine._start_by_message).
    for start in range(0, count, CREATE_BATCH):
        with camins.db.write() as session:
            definition = engine.latest_definition(session, PROCESS_KEY)
            for _ in range(min(CREATE_BATCH, count - start)):
                instance = engine.create_instance(session, definition, reference, None, "analista")
                engine._step_in(session, instance, {"kind": "advance"}, "analista")
    with camins.db.read() as session:
        tasks = dict(session.execute(select(HumanTask.instance_id, HumanTask.id)
                                     .where(HumanTask.process_key == PROCESS_KEY)).all())
    return reference, tasks


def _scalar(db_engine, query):
    with db_engine.connect() as conn:
        return conn.execute(query).scalar()


class Clients:
    """Caseworkers completing the same tasks the workers fire, through both API servers."""

    def __init__(self, servers, tasks: dict[int, str], db_engine):
        self.tasks = tasks
        self.db_engine = db_engine
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tried: set[int] = set()
        self.results: list[tuple[int, str, str, int, str]] = []  # instance, kind, server, status, content type
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(server, seed), daemon=True)
                        for seed, server in enumerate(s for s in servers for _ in range(CLIENT_THREADS_PER_SERVER))]

    def start(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        assert not self.errors, self.errors

    def _pick(self, rng: random.Random, kind: str) -> int | None:
        """An instance to complete: one whose timer is leased right now (the tightest race), one whose
        timer has already fired (must be refused cleanly), or any other (likely to win)."""
        with self.db_engine.connect() as conn:
            if kind == "leased":
                rows = conn.execute(text("SELECT instance_id FROM timer WHERE lease_owner IS NOT NULL")).scalars()
            elif kind == "fired":
                rows = conn.execute(text("SELECT instance_id FROM history WHERE event = 'timer_fired' "
                                         "ORDER BY id DESC LIMIT 200")).scalars()
            else:
                rows = conn.execute(text("SELECT instance_id FROM timer WHERE lease_owner IS NULL")).scalars()
            candidates = list(rows)
        rng.shuffle(candidates)
        with self.lock:
            for instance_id in candidates:
                if instance_id not in self.tried:
                    self.tried.add(instance_id)
                    return instance_id
        return None

    def _run(self, server, seed: int) -> None:
        rng = random.Random(seed)
        http = Http(server.base)
        try:
            http.login(CASEWORKER)
            for attempt in range(CLIENT_ATTEMPTS):
                if self.stop.is_set():
                    return
                kind = ("leased", "leased", "fired", "other")[attempt % 4]
                instance_id = self._pick(rng, kind)
                if instance_id is None:
                    time.sleep(0.02)
                    continue
                response = http.post(f"/api/tasks/{self.tasks[instance_id]}/complete", CASEWORKER,
                                     json={"data": {"nota": f"revisat per {seed}"}})
                with self.lock:
                    self.results.append((instance_id, kind, server.base, response.status_code,
                                         response.headers.get("Content-Type", "")))
        except BaseException as err:  # reported by join()
            self.errors.append(err)


def _logs(processes) -> str:
    """The processes' logs without the scheduler's "skipped: maximum number of running instances" lines."""
    parts = []
    for process in processes:
        lines = [line for line in process.log_tail(200_000).splitlines() if "maximum number of running" not in line]
        first_error = next((n for n, line in enumerate(lines) if "Traceback" in line), None)
        shown = lines[-40:] if first_error is None else [*lines[max(first_error - 2, 0):first_error + 60], "...",
                                                         *lines[-10:]]
        parts.append(f"--- {process.log_path.name}\n" + "\n".join(shown))
    return "\n".join(parts)


def _wait(condition, seconds: float, what: str, processes=()) -> None:
    """Poll `condition`; fail at once when a process logged a traceback (say, a worker's failed run)."""
    deadline = time.monotonic() + seconds
    next_look = time.monotonic() + 1
    while not condition():
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{_logs(processes)}")
        if now > next_look:
            next_look = now + 1
            if any("Traceback" in p.log_tail(10_000_000) for p in processes):
                raise AssertionError(f"a process failed while waiting for {what}\n{_logs(processes)}")
        time.sleep(0.02)


def test_a_thousand_timers_fire_exactly_once_across_processes_and_a_killed_worker_loses_nothing(
        pg_url, shared_clock, tmp_path):
    camins = Camins(pg_url)
    db = create_engine(pg_url, pool_size=8)
    processes = []
    try:
        _reference, tasks = _create_instances(camins, TIMERS)
        assert len(tasks) == TIMERS
        assert _scalar(db, select(func.count()).select_from(Timer)) == TIMERS
        assert _scalar(db, select(func.min(Timer.due_at))) == DUE == _scalar(db, select(func.max(Timer.due_at)))

        servers = [start_server(pg_url, tmp_path, workers=1, clock_file=shared_clock.path) for _ in range(2)]
        processes += servers
        workers = [start_worker(pg_url, tmp_path, clock_file=shared_clock.path, poll=0.2, batch=BATCH,
                                lease=LEASE.total_seconds(), name=f"worker-{n}") for n in range(2)]
        processes += workers
        _wait(lambda: all("polling every" in w.log_tail() for w in workers), 60, "the workers", processes)
        time.sleep(1)  # both have polled a few times: nothing is due yet
        assert _scalar(db, select(func.count()).select_from(Timer).where(Timer.lease_owner.is_not(None))) == 0

        fired_count = select(func.count()).select_from(HistoryEvent).where(HistoryEvent.event == "timer_fired")
        victim, survivor = workers
        victim_leases = (select(func.count()).select_from(Timer)
                         .where(Timer.lease_owner.like(f"%:{victim.pid}:%")))

        # Past due: the workers fire, the caseworkers complete tasks through both servers.
        firing_at = DUE + timedelta(minutes=1)
        shared_clock.set(firing_at)
        started = time.monotonic()
        clients = Clients(servers, tasks, db).start()

        # The caseworkers have their go while a quarter of the timers fire.
        _wait(lambda: (len(clients.results) >= MIN_CLIENT_RESULTS or not clients.running())
              and _scalar(db, fired_count) >= TIMERS // 4, DRAIN_SECONDS, "the caseworkers", processes)
        clients.stop.set()
        clients.join()

        # SIGKILL the victim in the middle of a batch: it has fired part of it and holds leases on the rest
        # (a few at least, so that it cannot finish the batch between the look and the kill).
        _wait(lambda: 5 <= _scalar(db, victim_leases) < BATCH, DRAIN_SECONDS, "the victim to be mid-batch",
              processes)
        victim.kill()
        time.sleep(1)  # its connections are gone and what they had not committed is rolled back
        with db.connect() as conn:
            orphans = dict(conn.execute(select(Timer.instance_id, Timer.lease_until)
                                        .where(Timer.lease_owner.like(f"%:{victim.pid}:%"))).all())
        assert 0 < len(orphans) < BATCH, f"the victim held {len(orphans)} leases when it was killed"
        assert set(orphans.values()) == {firing_at + LEASE}

        # The survivor fires everything else but respects the dead worker's leases until they expire.
        others = select(func.count()).select_from(Timer).where(Timer.instance_id.not_in(list(orphans)))
        _wait(lambda: _scalar(db, others) == 0, DRAIN_SECONDS, "the survivor to fire the rest", processes)
        time.sleep(1)  # several more polls of the survivor
        with db.connect() as conn:
            left = set(conn.execute(select(Timer.instance_id)).scalars())
        assert left == set(orphans), "a lease of the killed worker was taken before it expired"

        # Past the lease expiry: the survivor takes the orphaned leases over.
        takeover_at = firing_at + LEASE + timedelta(minutes=1)
        shared_clock.set(takeover_at)
        _wait(lambda: _scalar(db, select(func.count()).select_from(Timer)) == 0, DRAIN_SECONDS,
              "the orphaned timers to fire", processes)
        seconds = time.monotonic() - started
        assert survivor.alive(), _logs([survivor])

        # A task whose timer already fired is refused cleanly, on either server.
        with db.connect() as conn:
            timed_out = list(conn.execute(select(HistoryEvent.instance_id)
                                          .where(HistoryEvent.event == "timer_fired").limit(10)).scalars())
        late_clients = [Http(server.base) for server in servers]
        late = [late_clients[n % 2].post(f"/api/tasks/{tasks[instance_id]}/complete", CASEWORKER,
                                         json={"data": {"nota": "massa tard"}})
                for n, instance_id in enumerate(timed_out)]
        assert [r.status_code for r in late] == [409] * len(late), [r.text for r in late]
        assert all(r.headers["Content-Type"].startswith(PROBLEM) for r in late)

        taken_over = _verify(db, tasks, clients, orphans, takeover_at)
        for process in processes:
            log = process.log_tail(10_000_000)
            assert "Traceback" not in log and "unexpected error" not in log, _logs([process])

        fired = _scalar(db, fired_count)
        outcomes = Counter(r[3] for r in clients.results)
        races = Counter(r[3] for r in clients.results if r[1] == "leased")
        print(f"\ntimers={TIMERS} fired={fired} completed_by_clients={outcomes[200]} "
              f"refused_to_clients={outcomes[409]} (races on leased timers: task won {races[200]}, "
              f"timer won {races[409]}) orphaned_leases_taken_over={taken_over} "
              f"seconds_to_fire_all={seconds:.1f} rate={fired / seconds:.1f}/s")
    finally:
        for process in processes:
            process.kill()
        camins.close()
        db.dispose()


def _verify(db, tasks: dict[int, str], clients: Clients, orphans: dict, takeover_at) -> int:
    """Check the database and the clients' answers; returns how many orphaned leases the survivor fired."""
    with db.connect() as conn:
        per_instance: dict[int, Counter] = {instance_id: Counter() for instance_id in tasks}
        for instance_id, event in conn.execute(select(HistoryEvent.instance_id, HistoryEvent.event)
                                               .where(HistoryEvent.instance_id.in_(list(tasks)))):
            per_instance[instance_id][event] += 1
        instances = conn.execute(select(Instance.id, Instance.status, Instance.version, Instance.active_elements,
                                        Instance.ended_at).where(Instance.process_key == PROCESS_KEY)).all()
        task_states = dict(conn.execute(select(HumanTask.instance_id, HumanTask.state)
                                        .where(HumanTask.process_key == PROCESS_KEY)).all())
        incidents = conn.execute(select(func.count()).select_from(Incident)).scalar()
        takeovers = dict(conn.execute(select(HistoryEvent.instance_id, HistoryEvent.at)
                                      .where(HistoryEvent.event == "timer_fired",
                                             HistoryEvent.instance_id.in_(list(orphans)))).all())
        remaining = conn.execute(select(func.count()).select_from(Timer)).scalar()

    assert remaining == 0
    assert incidents == 0
    # Nothing written twice: every event at most once per instance.
    doubled = {(i, event): n for i, events in per_instance.items() for event, n in events.items() if n > 1}
    assert not doubled, doubled
    # Exactly one winner per instance: its timer or its task, never both, never neither.
    by_timer = {i for i in tasks if per_instance[i]["timer_fired"]}
    by_task = {i for i in tasks if per_instance[i]["task_completed"]}
    assert not by_timer & by_task, sorted(by_timer & by_task)[:10]
    assert by_timer | by_task == set(tasks), sorted(set(tasks) - by_timer - by_task)[:10]
    for instance_id in tasks:
        expected = {"instance_started", "task_ready", "instance_completed"}
        expected |= {"timer_fired", "task_cancelled"} if instance_id in by_timer else {"task_claimed",
                                                                                       "task_completed"}
        assert set(per_instance[instance_id]) == expected, (instance_id, per_instance[instance_id])
        assert task_states[instance_id] == ("cancelled" if instance_id in by_timer else "completed")
    # Every instance ended, in exactly two steps (the start and the one winner): nothing half written.
    assert len(instances) == len(tasks)
    for instance_id, status, version, active, ended_at in instances:
        assert (status, version, active) == ("completed", 3, []) and ended_at is not None, instance_id

    # What the caseworkers were told matches what happened.
    statuses = Counter(r[3] for r in clients.results)
    assert set(statuses) <= {200, 409}, statuses
    assert all(r[4].startswith(PROBLEM) for r in clients.results if r[3] == 409)
    assert {r[0] for r in clients.results if r[3] == 200} == by_task
    assert {r[0] for r in clients.results if r[3] == 409} <= by_timer
    assert all(r[3] == 409 for r in clients.results if r[1] == "fired")
    assert statuses[200] > 0 and {r[2] for r in clients.results if r[3] == 200} == \
        {r[2] for r in clients.results}, "both servers completed tasks"

    # The dead worker's leases were fired by the survivor once they expired (unless a caseworker won).
    assert set(takeovers) == set(orphans) - by_task
    assert takeovers and set(takeovers.values()) == {takeover_at}
    return len(takeovers)
