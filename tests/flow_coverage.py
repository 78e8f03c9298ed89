"""Which sequence flows of the bundled diagrams the scenario tests crossed.

Every test that uses the `camins` fixture reports, at teardown, the flows its
instances took (engine projection `instance.taken_flows`). At the end of the
session the report `build/flow-coverage.md` lists, for each diagram, every
sequence flow and the first test that crossed it. With CAMINS_FLOW_COVERAGE=strict
an uncovered flow fails the session.

Under pytest-xdist each worker records what its own tests crossed and hands its records to the
controller in `workeroutput` (see the hooks in conftest.py); the controller merges them and
writes the report, so the strict check sees the whole suite.
"""
from __future__ import annotations

import os
from pathlib import Path

from lxml import etree
from sqlalchemy import select

from engine.models import Instance

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "build" / "flow-coverage.md"
BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"
# (process id, flow id) → (position in the collection, node id) of the first test that crossed it
_crossed: dict[tuple[str, str], tuple[int, str]] = {}
_order: dict[str, int] = {}
_state = {"summary": ""}


def set_order(test_ids: list[str]) -> None:
    """The collection order, so that "first" means the same with or without pytest-xdist."""
    _order.clear()
    _order.update((test_id, index) for index, test_id in enumerate(test_ids))


def add(crossed: dict, process: str, flow: str, position: int, test_id: str) -> None:
    """Keep the test that comes first in the collection: a serial run would have crossed it first."""
    key = (process, flow)
    if key not in crossed or position < crossed[key][0]:
        crossed[key] = (position, test_id)


def record(test_id: str, camins) -> None:
    position = _order.get(test_id, len(_order))
    if test_id.rfind("@") > test_id.rfind("]"):
        test_id = test_id.rsplit("@", 1)[0]  # the `@group` that --dist loadgroup adds to grouped tests
    with camins.db.read() as session:
        for process_key, flows in session.execute(select(Instance.process_key, Instance.taken_flows)):
            for flow in flows or []:
                add(_crossed, process_key, flow, position, test_id)


def export() -> list[list]:
    """This process's records, as a pytest-xdist worker sends them to the controller (`workeroutput`)."""
    return [[process, flow, position, test_id] for (process, flow), (position, test_id) in _crossed.items()]


def merge(records: list[list], crossed: dict | None = None) -> None:
    """Add a worker's `export()` to this process's records (on the pytest-xdist controller)."""
    crossed = _crossed if crossed is None else crossed
    for process, flow, position, test_id in records:
        add(crossed, process, flow, position, test_id)


def diagram_flows() -> dict[str, list[tuple[str, str]]]:
    """process id → [(flow id, flow name or source→target)] for every bundled diagram."""
    result = {}
    for path in sorted((ROOT / "bpmn").glob("*.bpmn")):
        root = etree.parse(str(path)).getroot()
        for process in root.iter(f"{BPMN}process"):
            if process.get("isExecutable") == "true":
                result[process.get("id")] = [
                    (f.get("id"), f.get("name") or f"{f.get('sourceRef')} → {f.get('targetRef')}")
                    for f in process.iter(f"{BPMN}sequenceFlow")]
    return result


def report(crossed: dict, flows_by_process: dict[str, list[tuple[str, str]]]) -> tuple[str, list[str]]:
    """The Markdown report and the flows (`process:flow`) no test crossed."""
    lines = ["# Sequence-flow coverage of the bundled diagrams", ""]
    uncovered = []
    for process, flows in flows_by_process.items():
        covered = sum((process, f) in crossed for f, _ in flows)
        lines += [f"## {process}: {covered}/{len(flows)} flows crossed", "", "| flow | label | crossed by |",
                  "|---|---|---|"]
        for flow, label in flows:
            test = crossed.get((process, flow))
            if test is None:
                uncovered.append(f"{process}:{flow}")
            lines.append(f"| `{flow}` | {label} | {test[1] if test else '**not crossed**'} |")
        lines.append("")
    return "\n".join(lines) + "\n", uncovered


def write_report(session) -> None:
    if not _crossed:
        return  # no scenario ran (e.g. a selection without database tests)
    flows = diagram_flows()
    text, uncovered = report(_crossed, flows)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(text, encoding="utf-8")
    total = sum(len(f) for f in flows.values())
    _state["summary"] = (f"flow coverage: {total - len(uncovered)}/{total} sequence flows crossed "
                         f"(report: {REPORT.relative_to(ROOT)})")
    if uncovered and os.environ.get("CAMINS_FLOW_COVERAGE") == "strict":
        _state["summary"] += "\nnot crossed: " + ", ".join(uncovered)
        session.exitstatus = 1


def summary() -> str:
    return _state["summary"]
