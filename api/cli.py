"""The `camins` command: demo, serve, worker, db upgrade, deploy, validate, users."""
from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import click

from engine import clock
from engine.bundle import BundleFile, bundles_from_directory
from engine.errors import DeployError, EngineError
from engine.lint import Finding
from engine.lint import errors as lint_errors
from workflows.pathways import BUNDLED_DIAGRAMS
from workflows.roles import ROLES

from . import REPO_ROOT, database_url


def _camins():
    from workflows.service import Camins
    return Camins(database_url())


def _bundles(path: Path) -> list[list[BundleFile]]:
    path = Path(path)
    if path.is_dir():
        return bundles_from_directory(path)
    if path.suffix != ".bpmn":
        raise click.BadParameter("give a directory or a .bpmn file", param_hint="PATH")
    bundle = bundles_from_directory(path.parent)
    chosen = [b for b in bundle if b[0].name == path.name]
    return chosen


def _print_deploy_error(err: DeployError) -> None:
    click.echo(click.style("rejected:", fg="red"), err=True)
    for problem in err.problems:
        click.echo(f"  {problem}", err=True)
    _print_lint(err.lint)


def _print_lint(findings: list[Finding]) -> None:
    """One line per finding: file:line [element] severity rule: message."""
    if findings:
        click.echo(click.style("modelling rules:", fg="yellow"), err=True)
    for finding in findings:
        click.echo(f"  {finding}", err=True)


@click.group(help="camins: BPMN pathways for child protection in Mallorca. "
                  "The database is CAMINS_DATABASE_URL (default: an SQLite file under instance/).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler warns each time a poll is skipped because the previous one is still firing timers:
    # expected under load, so only errors are shown unless asked for.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose else logging.ERROR)
    clock_file = os.environ.get("CAMINS_CLOCK_FILE")
    if clock_file:
        # A simulated time shared by every process (see engine.clock.FileClock).
        clock.set_clock(clock.FileClock(clock_file))



@main.group(help="Database schema.")
def db() -> None:
    pass


@db.command("upgrade", help="Apply every pending migration.")
def db_upgrade() -> None:
    camins = _camins()
    camins.upgrade_schema()
    click.echo(f"database at head: {_safe_url(camins.db.url)}")


@main.command(help="Check diagrams (a directory or a .bpmn file) without deploying them: the deploy checks and "
                   "the modelling rules (exit status 1 if either finds an error).")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def validate(path: Path) -> None:
    from engine.bundle import compile_bundle
    from workflows.hooks import DomainHooks

    hooks = DomainHooks()
    failed = False
    for files in _bundles(path):
        try:
            compiled = compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems)
        except DeployError as err:
            failed = True
            click.echo(f"bad {files[0].name}", err=True)
            _print_deploy_error(err)
            continue
        if lint_errors(compiled.lint):
            failed = True
            click.echo(f"bad {files[0].name}: deployable, but it breaks modelling rules", err=True)
        else:
            click.echo(f"ok  {compiled.process_key}  ({', '.join(f.name for f in compiled.files)})")
        _print_lint(compiled.lint)
    sys.exit(1 if failed else 0)


@main.command(help="Deploy diagrams (a directory or a .bpmn file). Unchanged content keeps its version. "
                   "Modelling-rule findings are printed; --strict refuses to deploy if any is an error. "
                   "The scenarios beside each changed diagram (x.scenarios.yaml) run first: if one fails, "
                   "nothing is deployed, unless --override-reason says why (it is recorded).")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--strict", is_flag=True, help="Deploy nothing if a modelling rule finds an error.")
@click.option("--override-reason", metavar="TEXT",
              help="Deploy even though scenarios fail, for this reason (recorded with the definition).")
def deploy(path: Path, strict: bool, override_reason: str | None) -> None:
    camins = _camins()
    bundles = _bundles(path)
    try:
        findings = [f for files in bundles for f in camins.engine.validate(files).lint]
        _print_lint(findings)
        if strict and lint_errors(findings):
            click.echo(click.style("not deployed: --strict and the modelling rules found errors", fg="red"), err=True)
            sys.exit(1)
        verdicts = _check_scenarios(camins, path, bundles, override_reason)
        for files, verdict in zip(bundles, verdicts, strict=True):
            result = camins.deploy_checked(None, files, verdict)
            state = "deployed" if result["created"] else "unchanged"
            click.echo(f"{result['process_key']} v{result['version']} {state}{_verdict_note(verdict)}")
    except DeployError as err:
        _print_deploy_error(err)
        sys.exit(1)


def _check_scenarios(camins, path: Path, bundles, override_reason: str | None) -> list:
    """Run the scenarios of every bundle before deploying any: a failure deploys nothing."""
    from engine.errors import ScenariosFailed
    from workflows.scenarios import directory_companions, scenario_file_beside

    directory = path if path.is_dir() else path.parent
    companions = directory_companions(directory)
    verdicts, failed = [], False
    for files in bundles:
        scenario_file = scenario_file_beside(directory / files[0].name)
        try:
            verdicts.append(camins.check_scenarios(files, [scenario_file] if scenario_file else [], override_reason,
                                                   companions))
        except ScenariosFailed as err:
            failed = True
            click.echo(click.style(f"scenarios failed: {err.failed} of {err.passed + err.failed}", fg="red"), err=True)
            for problem in err.problems:
                click.echo(f"  {problem.file}: {problem.message}", err=True)
    if failed:
        click.echo(click.style("not deployed: scenarios failed; give --override-reason to deploy anyway",
                               fg="red"), err=True)
        sys.exit(1)
    return verdicts


def _verdict_note(verdict) -> str:
    if verdict is None:
        return ""
    if verdict.override_reason:
        return f" ({verdict.failed} of {verdict.passed + verdict.failed} scenarios failed; deployed anyway: " \
               f"{verdict.override_reason})"
    return f" ({verdict.passed} scenarios passed)"


@main.command(help="Compare two deployed versions of a process: elements (by id), sequence flows and files, each "
                   "added (+), removed (-) or changed (~, with what changed).")
@click.argument("process_key")
@click.argument("from_version", type=click.IntRange(min=1))
@click.argument("to_version", type=click.IntRange(min=1))
def diff(process_key: str, from_version: int, to_version: int) -> None:
    try:
        result = _camins().diff_versions(None, process_key, from_version, to_version)
    except EngineError as err:
        click.echo(click.style(str(err), fg="red"), err=True)
        sys.exit(1)
    click.echo(f"{process_key}: version {from_version} → {to_version}")
    for part, describe in (("elements", _diff_element), ("sequence_flows", _diff_flow), ("files", lambda f: "")):
        found = result[part]
        if not any(found.values()):
            continue
        click.echo(part.replace("_", " ") + ":")
        for sign, kind in (("+", "added"), ("-", "removed"), ("~", "changed")):
            for item in found[kind]:
                changes = f": {', '.join(item['changes'])}" if kind == "changed" else ""
                click.echo(f"  {sign} {item.get('id') or item.get('name')}{describe(item)}{changes}")


def _diff_element(element: dict) -> str:
    lane = f", lane {element['lane']}" if element["lane"] else ""
    return f" ({element['type']} '{element['name'] or ''}'{lane})"


def _diff_flow(flow: dict) -> str:
    condition = f" [{flow['condition']}]" if flow["condition"] else ""
    return f" ({flow['source']} → {flow['target']}{condition})"


@main.command("test", help="Run the scenario files beside the diagrams (x.scenarios.yaml beside x.bpmn) of a "
                           "directory or of one .bpmn file, against the diagrams as drafts: each scenario on a "
                           "throwaway database, never on CAMINS_DATABASE_URL. Prints a line per scenario (what "
                           "differed for each that fails) and a summary; exit status 1 if any fails.")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def test_scenarios(path: Path) -> None:
    import time

    from workflows.scenarios import drafts_from_path, orphan_scenario_files, run_draft, scenario_count

    # Incidents a scenario expects are logged as warnings by the engine; the report says what matters.
    logging.getLogger("engine").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the throwaway databases are migrated once
    started = time.monotonic()
    drafts = drafts_from_path(path)
    orphans = orphan_scenario_files(path) if path.is_dir() else []
    if not drafts and not orphans:
        click.echo(f"no scenario file beside the diagrams of {path} (x.scenarios.yaml beside x.bpmn)", err=True)
        sys.exit(1)
    progress = _ScenarioProgress(sum(scenario_count(d) for d in drafts))
    bad_files = [f"{name}: no diagram {name.removesuffix('.scenarios.yaml')}.bpmn beside it" for name in orphans]
    for draft in drafts:
        try:
            reports = run_draft(draft, progress.show)
        except DeployError as err:
            click.echo(click.style(f"FAIL  {draft.files[0].name} does not deploy", fg="red"))
            _print_deploy_error(err)
            bad_files.append(draft.files[0].name)
            continue
        bad_files += [f"{report.file}: {problem}" for report in reports for problem in report.problems]
    for line in bad_files:
        click.echo(click.style("FAIL  ", fg="red") + line)
    summary = f"{progress.done} scenarios: {progress.done - progress.failed} passed, {progress.failed} failed"
    if bad_files:
        summary += f"; {len(bad_files)} file(s) could not be run"
    ok = not progress.failed and not bad_files
    click.echo(click.style(summary, fg="green" if ok else "red") + f" ({time.monotonic() - started:.1f} s)")
    sys.exit(0 if ok else 1)


class _ScenarioProgress:
    """One line per scenario as it finishes: [n/total] ok|FAIL file: name, then what differed."""

    def __init__(self, total: int):
        self.total, self.done, self.failed = total, 0, 0

    def show(self, result) -> None:
        self.done += 1
        self.failed += not result.ok
        width = len(str(self.total))
        status = click.style("ok  ", fg="green") if result.ok else click.style("FAIL", fg="red")
        click.echo(f"[{self.done:>{width}}/{self.total}] {status}  {result.file}: {result.name} "
                   f"({result.seconds:.2f} s)")
        for failure in result.failures:
            click.echo(f"{' ' * (2 * width + 10)}{failure}")


@main.group(help="Users and their memberships.")
def users() -> None:
    pass


@users.command("create", help="Create a user holding ROLE in UNIT (e.g. Manacor, Raiguer, 'IMAS Llevant', IMAS).")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(sorted(ROLES)), help="Role code.")
@click.option("--unit", required=True, help="Org unit by name: a municipality, comarca, IMAS section or IMAS.")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="At least 8 characters.")
@click.option("--full-name", default="", help="Display name.")
def users_create(username, role, unit, password, full_name) -> None:
    try:
        _camins().create_user(username, password, [(role, unit)], full_name)
    except EngineError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"created {username} ({role} in {unit})")


@users.command("add-role", help="Give an existing user another role in a unit.")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(sorted(ROLES)))
@click.option("--unit", required=True)
def users_add_role(username, role, unit) -> None:
    try:
        _camins().add_membership(username, role, unit)
    except EngineError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{username} now also holds {role} in {unit}")


@main.command(help="Run the API server (gunicorn).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes.")
def serve(host: str, port: int, workers: int) -> None:
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", 4)
            self.cfg.set("accesslog", "-")

        def load(self):
            from . import create_app
            return create_app()

    _App().run()


@main.command(help="Run the background worker: fires due timers, delivers pending messages.")
@click.option("--poll", default=5.0, show_default=True, type=float, help="Seconds between looks for due timers.")
@click.option("--batch", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="Timers leased at a time.")
@click.option("--lease", default=300.0, show_default=True, type=click.FloatRange(1, 86_400),
              help="Seconds a lease lasts; a dead worker's timers are fired by another once it expires.")
def worker(poll: float, batch: int, lease: float) -> None:
    from tasks.worker import build_scheduler

    camins = _camins()
    scheduler = build_scheduler(camins.engine, poll_seconds=poll, blocking=True,
                                housekeeping=[camins.escalate_breached_clocks], batch_size=batch,
                                lease=timedelta(seconds=lease))
    click.echo(f"worker {scheduler.worker.owner} polling every {poll}s (Ctrl-C to stop)")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass


@main.command(help="Measure the engine against SpiffWorkflow's own limit: task completions per second (raw loop, "
                   "engine step, HTTP), cost of a long history, inbox latency at 10k and 1M tasks, 100,000 "
                   "timers, state sizes. Each measurement gets a fresh database.")
@click.option("--database", "databases", multiple=True, default=("sqlite",), show_default=True,
              help="'sqlite' (a temporary file) or a PostgreSQL URL, on whose server scratch databases are "
                   "created and dropped. Repeat to measure both.")
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run of every measurement in a few minutes.")
@click.option("--only", multiple=True, type=click.Choice(["steps", "history", "inbox", "timers", "state"]),
              help="Run only these measurements (repeatable).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Write the report here.")
def bench(databases: tuple[str, ...], quick: bool, only: tuple[str, ...], json_path: str | None) -> None:
    import json

    from tasks.bench import format_table, run_bench

    logging.getLogger().setLevel(logging.WARNING)  # progress lines only
    report = run_bench(list(databases), quick, list(only) or None, lambda line: click.echo(line, err=True))
    click.echo(format_table(report))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        click.echo(f"\nwritten to {json_path}")


@main.command(help="Run the demo: SQLite file, bundled pathways, demo users and cases, server and scheduler.")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--fresh/--keep", default=True, show_default=True, help="Start from an empty demo database.")
@click.option("--no-serve", is_flag=True, help="Prepare the database and exit (for scripts).")
def demo(port: int, host: str, fresh: bool, no_serve: bool) -> None:
    from tasks.worker import build_scheduler
    from workflows.demo import DEMO_PASSWORD, seed_demo
    from workflows.service import Camins

    from . import create_app

    db_file = REPO_ROOT / "instance" / "demo.db"
    db_file.parent.mkdir(parents=True, exist_ok=True)
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(str(db_file) + suffix).unlink(missing_ok=True)
    url = os.environ.get("CAMINS_DATABASE_URL") or f"sqlite:///{db_file}"
    camins = Camins(url)
    camins.upgrade_schema()
    for definition, created in camins.deploy_directory(BUNDLED_DIAGRAMS):
        click.echo(f"pathway {definition.process_key} v{definition.version} {'deployed' if created else 'unchanged'}")
    users_table, cases = seed_demo(camins, fresh=fresh)
    click.echo(f"\nDemo users (password for all: {DEMO_PASSWORD}):")
    for username, role, unit in users_table:
        click.echo(f"  {username:<24} {role:<26} {unit}")
    click.echo("\nDemo cases:")
    for reference, stage in cases:
        click.echo(f"  {reference}  {stage}")
    if no_serve:
        return
    scheduler = build_scheduler(camins.engine, poll_seconds=5, housekeeping=[camins.escalate_breached_clocks])
    scheduler.start()
    click.echo(f"\nServing on http://{host}:{port}/  (API docs: http://{host}:{port}/api/docs)")
    app = create_app(camins)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        scheduler.shutdown(wait=False)


def _safe_url(url: str) -> str:
    """A URL without its password, for printing."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}"
    return url



if __name__ == "__main__":
    main()
