"""Inbox latency against the size of the `human_task` table.

A caseworker's inbox (`Camins.inbox`: the first page of 50, its count, one access-log row per case
shown) is timed for randomly chosen caseworkers on a fresh database holding `inbox_small` human
tasks and on another holding `inbox_large`. Both hold the same users, one caseworker role in one of
the 53 municipalities each; a share `inbox_open_share` of the tasks is open, spread over the
municipalities and the municipal roles of the bundled pathways, part of them assigned to a
caseworker of their queue; the rest are completed. `inbox_ratio` = p95 large / p95 small. The
queues grow with the table too (about 3 tasks a page at 10,000, a full page of 50 at 1,000,000),
so the ratio holds the cost of a fuller page as well as any cost of the table's size. Both
databases are seeded first and the timed calls then alternate between them, so that a busy moment
of the machine weighs on both figures alike.

The rows are bulk-loaded (executemany on SQLite, COPY on PostgreSQL, secondary indexes built after
the load) from templates taken from the deployed pathways' user tasks, so names, lanes, forms and
properties look like the engine's own. No case rows are written: the inbox reads only `human_task`
and writes `access_log`.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import DateTime, Table, insert, select, text

from engine.db import UTCDateTime
from engine.models import Definition, HumanTask, Instance
from workflows import security
from workflows.demo import principal as demo_principal
from workflows.models import Membership, User
from workflows.orgunits import municipalities
from workflows.roles import MUNICIPALITY, ROLES, role_for_lane
from workflows.service import Camins

from . import BenchRun

SEED = 20261123
BATCH = 10_000
WARMUP = 10
ASSIGNED_SHARE = 0.3   # open tasks already assigned to a caseworker of their queue
DUE_SHARE = 0.6        # tasks with a due date (legal deadline or `due_in`)
# Instance state is never read by the inbox; a small constant stands in for the serialized workflow.
STATE = json.dumps({"bench": True})
_HUMAN_TASK_COLUMNS = ["id", "instance_id", "process_key", "business_key", "element_id", "name", "lane", "role",
                       "org_unit", "assignee", "state", "form", "distinct_from_user", "due_at", "created_at",
                       "claimed_at", "completed_at", "completed_by", "properties"]
_INSTANCE_COLUMNS = ["definition_id", "process_key", "business_key", "status", "state", "serializer_version",
                     "version", "started_at", "updated_at", "ended_at", "started_by", "parent_instance_id",
                     "active_elements", "completed_elements", "taken_flows"]


def measure(run: BenchRun) -> dict:
    sizes = run.sizes
    share, n_users, n_queries = sizes["inbox_open_share"], sizes["inbox_users"], sizes["inbox_queries"]
    with contextlib.ExitStack() as stack:
        small = _Inbox(run, stack, "inbox-small", sizes["inbox_small"], share, n_users)
        large = _Inbox(run, stack, "inbox-large", sizes["inbox_large"], share, n_users)
        # The same caseworkers in the same order on both; the calls alternate between the two
        # databases, so a busy moment of the machine lands on both figures, not on one of them.
        rng = random.Random(SEED + 1)
        usernames = [rng.choice(small.usernames) for _ in range(WARMUP + n_queries)]
        for inbox in (small, large):
            inbox.load_principals(set(usernames))
        for i, name in enumerate(usernames):
            for inbox in (small, large):
                inbox.call(name, timed=i >= WARMUP)
    for inbox in (small, large):
        run.say(f"  {inbox.label}: p50 {inbox.p50_ms} ms, p95 {inbox.p95_ms} ms over {n_queries} inboxes "
                f"({inbox.mean_page_rows} tasks a page)")
    return {
        "inbox_p95_ms_10k": small.p95_ms,
        "inbox_p95_ms_1m": large.p95_ms,
        "inbox_ratio": round(large.p95_ms / small.p95_ms, 3),
        "inbox": {
            "small_rows": small.rows, "large_rows": large.rows, "open_rows_large": large.open_rows,
            "users": n_users, "queries": n_queries,
            "p50_ms_small": small.p50_ms, "p50_ms_large": large.p50_ms,
            "p95_ms_small": small.p95_ms, "p95_ms_large": large.p95_ms,
            "page_rows_small": small.mean_page_rows, "page_rows_large": large.mean_page_rows,
            "seed_seconds_small": small.seed_seconds, "seed_seconds_large": large.seed_seconds,
        },
    }


class _Inbox:
    """One seeded database and the inbox timings taken on it."""

    def __init__(self, run: BenchRun, stack: contextlib.ExitStack, label: str, n_tasks: int, open_share: float,
                 n_users: int):
        self.label, self.rows = label, n_tasks
        url = stack.enter_context(run.fresh_database(label))
        self.camins = run.camins(url, users=False)
        stack.callback(self.camins.close)
        started = time.monotonic()
        seeded = seed_inbox(self.camins, n_tasks, open_share, n_users, run.say)
        prepare_statistics(self.camins)
        self.seed_seconds = round(time.monotonic() - started, 1)
        self.usernames, self.open_rows = seeded.usernames, seeded.open_rows
        run.say(f"  {label}: {n_tasks:,} tasks ({seeded.open_rows:,} open) seeded in {self.seed_seconds} s")
        self.principals: dict = {}
        self.timings: list[float] = []
        self.page_rows: list[int] = []

    def load_principals(self, usernames: set[str]) -> None:
        self.principals = {name: demo_principal(self.camins, name) for name in sorted(usernames)}

    def call(self, username: str, timed: bool) -> None:
        principal = self.principals[username]
        begun = time.perf_counter()
        page = self.camins.inbox(principal)
        elapsed = (time.perf_counter() - begun) * 1000
        if timed:
            self.timings.append(elapsed)
            self.page_rows.append(len(page.items))

    @property
    def p50_ms(self) -> float:
        return round(_percentile(self.timings, 50), 3)

    @property
    def p95_ms(self) -> float:
        return round(_percentile(self.timings, 95), 3)

    @property
    def mean_page_rows(self) -> float:
        return round(sum(self.page_rows) / len(self.page_rows), 1)


def _percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# ---------------------------------------------------------------------------------------- seeding
@dataclass(frozen=True)
class _Template:
    definition_id: int
    process_key: str
    element_id: str
    name: str
    lane: str
    role: str
    form: str | None
    properties_json: str


@dataclass
class Seeded:
    usernames: list[str]
    open_rows: int


def _templates(camins: Camins) -> list[_Template]:
    """The user tasks of the deployed pathways that land in a municipal queue."""
    templates = []
    with camins.db.read() as session:
        for definition in session.scalars(select(Definition).order_by(Definition.id)):
            for element in camins.engine.cached_spec(definition).elements.values():
                role = role_for_lane(element.lane)
                if role and ROLES[role].level == MUNICIPALITY and element.properties.get("form"):
                    templates.append(_Template(definition.id, definition.process_key, element.element_id,
                                               element.name, element.lane, role, element.properties.get("form"),
                                               json.dumps(element.properties)))
    if not templates:
        raise RuntimeError("no deployed user task of a municipal role to model the inbox on")
    return sorted(templates, key=lambda t: (t.process_key, t.element_id))


def seed_inbox(camins: Camins, n_tasks: int, open_share: float, n_users: int, say=print) -> Seeded:
    """Users with one municipal caseworker membership each, one instance per case, `n_tasks` human
    tasks of which `open_share` are open (one per case) and the rest completed."""
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(microsecond=0)
    templates = _templates(camins)
    by_process: dict[str, list[_Template]] = {}
    for template in templates:
        by_process.setdefault(template.process_key, []).append(template)
    processes = sorted(by_process)
    process_weights = [len(by_process[p]) for p in processes]
    towns = [u.code for u in municipalities()]
    roles = sorted({t.role for t in templates})

    # Users: one caseworker role in one municipality each, round-robin over the queues.
    queues = [(role, town) for town in towns for role in roles]
    password_hash = security.hash_password("bench-password-not-for-login")
    users = []
    for i in range(n_users):
        role, town = queues[i % len(queues)]
        users.append({"username": f"bench{i:05d}.{town}", "full_name": f"Bench {i}", "password_hash": password_hash,
                      "active": True, "created_at": now - timedelta(days=400), "_role": role, "_town": town})
    with camins.db.write() as session:
        session.execute(insert(User), [{k: v for k, v in u.items() if not k.startswith("_")} for u in users])
        ids = dict(session.execute(select(User.username, User.id)).all())
        session.execute(insert(Membership), [{"user_id": ids[u["username"]], "role": u["_role"],
                                              "org_unit": u["_town"]} for u in users])
    members: dict[tuple[str, str], list[str]] = {}
    for u in users:
        members.setdefault((u["_role"], u["_town"]), []).append(u["username"])

    # Cases (as instances): each has one open task; completed tasks are spread over the same cases.
    n_open = int(round(n_tasks * open_share))
    n_cases = max(n_open, 1)
    cases = []
    for k in range(n_cases):
        process = rng.choices(processes, process_weights)[0]
        cases.append((process, by_process[process][0].definition_id, rng.choice(towns),
                      f"EXP-{2024 + k % 3}-{k + 1:06d}"))
    say(f"  seeding {n_users:,} users, {n_cases:,} instances, {n_tasks:,} human tasks ...")
    started, updated = now - timedelta(days=120), now - timedelta(days=1)
    with camins.db.write() as session:
        _bulk(session, Instance.__table__, _INSTANCE_COLUMNS, (
            (definition_id, process, reference, "running", STATE, "bench", 5, started, updated, None, None, None,
             "[]", "[]", "[]")
            for process, definition_id, _town, reference in cases))
        instance_ids = dict(session.execute(select(Instance.business_key, Instance.id)).all())

    # Rows in the order they were created, over three years. Tasks are completed in another order than
    # they were created, so the open ones lie among the recent rows: one in three of the newest.
    recent = min(n_tasks, 3 * n_open)
    open_positions = set(rng.sample(range(n_tasks - recent, n_tasks), n_open))
    span = 3 * 365 * 86400

    def tasks() -> Iterator[tuple]:
        """Rows in the order of _HUMAN_TASK_COLUMNS."""
        opened = 0
        for n in range(n_tasks):
            is_open = n in open_positions
            if is_open:
                case, opened = cases[opened], opened + 1
            else:
                case = cases[rng.randrange(n_cases)]
            process, _definition_id, town, reference = case
            template = rng.choice(by_process[process])
            queue = members.get((template.role, town), [])
            created = now - timedelta(seconds=span * (n_tasks - n) // n_tasks + rng.randrange(3600))
            due = created + timedelta(days=rng.randrange(2, 90)) if rng.random() < DUE_SHARE else None
            if is_open:
                assignee = rng.choice(queue) if queue and rng.random() < ASSIGNED_SHARE else None
                state, claimed, done, done_by = "open", created if assignee else None, None, None
            else:
                assignee = done_by = rng.choice(queue) if queue else "former.caseworker"
                state, claimed = "completed", created
                done = created + timedelta(seconds=rng.randrange(3600, 20 * 86400))
            yield (str(uuid.UUID(int=rng.getrandbits(128), version=4)), instance_ids[reference], process, reference,
                   template.element_id, template.name, template.lane, template.role, town, assignee, state,
                   template.form, None, due, created, claimed, done, done_by, template.properties_json)

    with camins.db.write() as session, _indexes_rebuilt_after(session, HumanTask.__table__.name, say):
        loaded = 0
        for batch in _batches(tasks(), BATCH):
            _bulk(session, HumanTask.__table__, _HUMAN_TASK_COLUMNS, batch)
            loaded += len(batch)
            if loaded % 100_000 == 0 or loaded == n_tasks:
                say(f"  {loaded:,} / {n_tasks:,} human tasks")
    return Seeded(sorted(u["username"] for u in users), n_open)


@contextlib.contextmanager
def _indexes_rebuilt_after(session, table: str, say) -> Iterator[None]:
    """Drop the secondary indexes of `table` for a bulk load and create them again afterwards from
    their own DDL, as a restore does: one sort per index instead of a million random inserts."""
    connection = session.connection()
    postgresql = connection.dialect.name == "postgresql"
    if postgresql:
        ddl = connection.execute(text(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i JOIN pg_index x ON x.indexrelid = "
            "(quote_ident(i.schemaname) || '.' || quote_ident(i.indexname))::regclass "
            "WHERE i.schemaname = current_schema() AND i.tablename = :t AND NOT x.indisprimary "
            "AND NOT x.indisunique ORDER BY i.indexname"), {"t": table}).all()
        connection.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
    else:
        ddl = connection.execute(text(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL "
            "ORDER BY name"), {"t": table}).all()
        connection.exec_driver_sql("PRAGMA cache_size = -262144")  # 256 MiB while the indexes are sorted
    for name, _sql in ddl:
        connection.exec_driver_sql(f'DROP INDEX "{name}"')
    yield
    started = time.monotonic()
    for _name, sql in ddl:
        connection.exec_driver_sql(sql)
    if not postgresql:
        connection.exec_driver_sql("PRAGMA cache_size = -2000")  # SQLite's default, as the service runs
    say(f"  {len(ddl)} indexes of {table} built in {time.monotonic() - started:.1f} s")


def _batches(rows, size: int) -> Iterator[list[dict]]:
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bulk(session, table: Table, columns: list[str], rows: Iterable[tuple]) -> None:
    """Insert rows given as tuples in the order of `columns`, with JSON as text and datetimes aware:
    COPY on PostgreSQL; on SQLite an executemany with the datetimes in SQLAlchemy's stored form."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        with connection.connection.dbapi_connection.cursor() as cursor:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        return
    stamps = {i for i, name in enumerate(columns) if isinstance(table.c[name].type, UTCDateTime)}
    as_stored = connection.dialect.type_descriptor(DateTime()).bind_processor(connection.dialect)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    for batch in _batches(rows, BATCH):
        batch = [tuple(_sqlite_stamp(v) if i in stamps and v is not None else v for i, v in enumerate(row))
                 for row in batch]
        sample = next((v for row in batch for i, v in enumerate(row) if i in stamps and v is not None), None)
        if sample is not None:  # the same text SQLAlchemy writes, or comparisons and ordering would be off
            assert sample == as_stored(datetime.fromisoformat(sample)), sample
        connection.exec_driver_sql(sql, batch)


def _sqlite_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def prepare_statistics(camins: Camins) -> None:
    """Planner statistics as a running deployment has them.

    PostgreSQL: what autovacuum does after a bulk load (ANALYZE builds the extended statistics of
    migration e0003, VACUUM the visibility map that lets the count read the index alone). SQLite needs
    nothing: the service never runs ANALYZE, and the inbox plan follows from the shape of the index
    (tests/test_inbox_index.py checks it on a database without sqlite_stat1)."""
    if camins.db.is_sqlite:
        return
    with camins.db.write_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
