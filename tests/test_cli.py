"""The `camins` command, run as a user would: a separate process on a real database."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflows.pathways import BUNDLED_DIAGRAMS

ROOT = Path(__file__).resolve().parent.parent


def camins(*args, url: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if url:
        env["CAMINS_DATABASE_URL"] = url
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command():
    result = camins("--help")
    assert result.returncode == 0
    for command in ("demo", "serve", "worker", "db", "deploy", "validate", "users", "bench", "test"):
        assert command in result.stdout
    for command in ("demo", "serve", "worker", "deploy", "validate", "bench", "test"):
        assert camins(command, "--help").returncode == 0
    bench = camins("bench", "--help").stdout
    assert all(option in bench for option in ("--quick", "--database", "--json", "--only"))


def test_bench_refuses_an_unknown_measurement():
    result = camins("bench", "--only", "everything")
    assert result.returncode == 2 and "Invalid value for '--only'" in result.stderr


def test_validate_bundled_and_broken_diagrams(tmp_path):
    ok = camins("validate", str(BUNDLED_DIAGRAMS))
    assert ok.returncode == 0, ok.stderr
    assert "ok  deteccio" in ok.stdout and "ok  investigacio" in ok.stdout
    broken = tmp_path / "trencat.bpmn"
    broken.write_text((BUNDLED_DIAGRAMS / "deteccio.bpmn").read_text().replace(
        'name="Treballador/a social"', 'name="Bomber"', 1))
    (tmp_path / "forms").mkdir()
    for form in (BUNDLED_DIAGRAMS / "forms").iterdir():
        (tmp_path / "forms" / form.name).write_bytes(form.read_bytes())
    bad = camins("validate", str(tmp_path))
    assert bad.returncode == 1
    assert "trencat.bpmn" in bad.stderr and "lane 'Bomber' does not match any role" in bad.stderr


def test_db_upgrade_deploy_and_users(database_url, camins_clean_db):
    url = camins_clean_db
    assert camins("db", "upgrade", url=url).returncode == 0
    first = camins("deploy", str(BUNDLED_DIAGRAMS), url=url)
    assert first.returncode == 0, first.stderr
    assert "deteccio v" in first.stdout and "deployed" in first.stdout
    again = camins("deploy", str(BUNDLED_DIAGRAMS), url=url)
    assert "unchanged" in again.stdout and "deployed" not in again.stdout
    created = camins("users", "create", "nova.treballadora", "--role", "sscb_social_worker", "--unit", "Manacor",
                     "--password", "una-clau-llarga", url=url)
    assert created.returncode == 0, created.stderr
    wrong_unit = camins("users", "create", "altra", "--role", "sscb_social_worker", "--unit", "Raiguer",
                        "--password", "una-clau-llarga", url=url)
    assert wrong_unit.returncode != 0 and "comarca" in wrong_unit.stderr
    section = camins("users", "create", "cap.nou", "--role", "imas_section_head", "--unit", "IMAS Llevant",
                     "--password", "una-clau-llarga", url=url)
    assert section.returncode == 0, section.stderr


@pytest.fixture
def camins_clean_db(database_url, tmp_path):
    """A database of its own for the command line to create from nothing."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'cli.db'}"
        return
    from uuid import uuid4

    from sqlalchemy import create_engine, text
    name = f"camins_cli_{uuid4().hex[:8]}"
    server = database_url.rsplit("/", 1)[0]
    admin = create_engine(server + "/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{server}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_demo_prepares_database_users_and_cases(tmp_path):
    result = camins("demo", "--no-serve", url=f"sqlite:///{tmp_path / 'demo.db'}")
    assert result.returncode == 0, result.stderr
    assert "camins-demo-2026" in result.stdout
    assert "ts.manacor" in result.stdout and "analista" in result.stdout
    assert result.stdout.count("EXP-") == 8
