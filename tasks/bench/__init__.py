"""`camins bench`: how fast the service runs next to SpiffWorkflow's own limit.

Every figure is measured in one run on each database asked for, and every target is a ratio of two
figures of that same run, because machines are noisy. Each measurement gets a fresh database (a
temporary SQLite file, or a scratch PostgreSQL database created beside the one given and dropped
afterwards), so a million inbox rows never slow the step measurements down.

A measurement is a function `measure(run: BenchRun) -> dict` in a module of this package; its keys
go into the JSON as they are. `run.sizes` holds the workload sizes (smaller with --quick).
"""
from __future__ import annotations

import contextlib
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from engine.db import throwaway_postgres_database
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.service import Camins

# Workload sizes: (full, quick). The full sizes are the ones the targets are stated for.
SIZES = {
    "completions": (2000, 80),           # task completions for the raw, engine and HTTP loops
    "http_clients": (4, 4),
    "history_cycles": (200, 6),          # review cycles before the history-cost measurement
    "history_steps": (20, 3),            # cycles timed at the start and after the long history
    "inbox_small": (10_000, 1_000),      # human tasks in the small inbox database
    "inbox_large": (1_000_000, 10_000),  # and in the large one
    "inbox_open_share": (0.1, 0.1),      # share of open tasks (100,000 of 1,000,000)
    "inbox_users": (5_000, 200),
    "inbox_queries": (300, 30),
    "timers": (100_000, 500),
}

# Targets from the performance issue: (key, comparison, bound).
TARGETS = [
    ("engine_vs_raw", ">=", 0.7),
    ("http_vs_raw", ">=", 0.5),
    ("history_cost_ratio", "<=", 1.3),
    ("inbox_ratio", "<=", 2.0),
    ("timers.exactly_once", "==", True),
    ("timers.rate_vs_engine", ">=", 0.5),
    ("timers.memory_ratio", "<=", 1.2),
]


@dataclass
class BenchRun:
    """What a measurement needs: where to put its database, the sizes, a progress line."""

    database: str  # "sqlite" or a PostgreSQL URL
    quick: bool
    workdir: Path
    say: Callable[[str], None] = print
    results: dict = field(default_factory=dict)

    @property
    def sizes(self) -> dict:
        return {name: sizes[1 if self.quick else 0] for name, sizes in SIZES.items()}

    @property
    def is_sqlite(self) -> bool:
        return self.database == "sqlite" or self.database.startswith("sqlite")

    @contextlib.contextmanager
    def fresh_database(self, label: str) -> Iterator[str]:
        """A new, empty database with the schema, for one measurement; removed afterwards."""
        if self.is_sqlite:
            path = self.workdir / f"{label}-{uuid.uuid4().hex[:8]}.db"
            url = f"sqlite:///{path}"
            _upgrade(url)
            try:
                yield url
            finally:
                for suffix in ("", "-wal", "-shm", "-writer.lock"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
            return
        with throwaway_postgres_database(self.database, f"bench_{label}") as url:
            _upgrade(url)
            yield url

    def camins(self, url: str, deploy: bool = True, users: bool = True) -> Camins:
        """The service on `url`, with the bundled pathways and the demo users."""
        camins = Camins(url)
        if deploy:
            camins.deploy_directory(BUNDLED_DIAGRAMS)
        if users:
            create_demo_users_quickly(camins)
        return camins


def create_demo_users_quickly(camins) -> None:
    """The demo users, all with one argon2 hash of the demo password: hashing 43 passwords one by one
    would take longer than some measurements. Benchmark data only (every user shares the salt)."""
    from engine import clock
    from workflows.demo import DEMO_PASSWORD, DEMO_USERS
    from workflows.models import User
    from workflows.security import hash_password, membership_for

    digest = hash_password(DEMO_PASSWORD)
    with camins.db.write() as session:
        for username, role, unit in DEMO_USERS:
            user = User(username=username, full_name=username, password_hash=digest, active=True,
                        created_at=clock.now())
            user.memberships.append(membership_for(role, unit))
            session.add(user)


def _upgrade(url: str) -> None:
    camins = Camins(url)
    camins.upgrade_schema()
    camins.close()


def database_label(database: str) -> str:
    return "sqlite" if database == "sqlite" or database.startswith("sqlite") else "postgresql"


def machine() -> dict:
    import os
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "at": datetime.now(UTC).isoformat(timespec="seconds")}


def run_bench(databases: list[str], quick: bool, only: list[str] | None, say: Callable[[str], None]) -> dict:
    """Every measurement on every database; returns the report (see `report.as_json`)."""
    from . import measurements
    report = {"machine": machine(), "quick": quick, "databases": {}}
    with tempfile.TemporaryDirectory(prefix="camins-bench-") as workdir:
        for database in databases:
            label = database_label(database)
            run = BenchRun(database, quick, Path(workdir), say)
            for name, _what in measurements.ALL:
                if only and name not in only:
                    continue
                say(f"[{label}] {name} ...")
                started = time.monotonic()
                run.results.update(measurements.measure_function(name)(run))
                say(f"[{label}] {name} done in {time.monotonic() - started:.1f} s")
            measurements.derive(run.results)
            report["databases"][label] = run.results
    report["targets"] = check_targets(report)
    return report


def _lookup(results: dict, dotted: str):
    value = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check_targets(report: dict) -> list[dict]:
    checks = []
    for label, results in report["databases"].items():
        for key, comparison, bound in TARGETS:
            value = _lookup(results, key)
            if value is None:
                met = None
            elif comparison == ">=":
                met = value >= bound
            elif comparison == "<=":
                met = value <= bound
            else:
                met = value == bound
            checks.append({"database": label, "key": key, "target": f"{comparison} {bound}", "value": value,
                           "met": met})
    return checks


def format_table(report: dict) -> str:
    """The headline figures of each database side by side, then the targets."""
    labels = list(report["databases"])
    keys = ["raw_step_per_s", "engine_step_per_s", "engine_vs_raw", "http_completions_per_s", "http_vs_raw",
            "history_cost_ratio", "inbox_p95_ms_10k", "inbox_p95_ms_1m", "inbox_ratio", "timers.fired_per_s",
            "timers.rate_vs_engine", "timers.lag_p99_s", "timers.memory_ratio", "timers.exactly_once"]
    lines = [f"{'':<24}" + "".join(f"{label:>14}" for label in labels)]
    for key in keys:
        values = [_lookup(report["databases"][label], key) for label in labels]
        if all(v is None for v in values):
            continue
        lines.append(f"{key:<24}" + "".join(f"{_show(v):>14}" for v in values))
    for label in labels:
        sizes = report["databases"][label].get("state_bytes") or {}
        if sizes:
            lines.append(f"state_bytes ({label}): " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    lines.append("")
    for check in report["targets"]:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[check["met"]]
        lines.append(f"{check['database']:<11} {check['key']:<24} {check['target']:<8} "
                     f"{_show(check['value']):>10}  {verdict}")
    return "\n".join(lines)


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)
