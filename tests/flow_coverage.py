"""Which sequence flows of the bundled diagrams the scenario tests crossed.

Every test that uses the `camins` fixture reports, at teardown, the flows its
instances took (engine projection `instance.taken_flows`). At the end of the
session the report `build/flow-coverage.md` lists, for each diagram, every
sequence flow and the first test that crossed it. With CAMINS_FLOW_COVERAGE=strict
an uncovered flow fails the session.
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
_crossed: dict[tuple[str, str], str] = {}
_state = {"summary": ""}


def record(test_id: str, camins) -> None:
    with camins.db.read() as session:
        for process_key, flows in session.execute(select(Instance.process_key, Instance.taken_flows)):
            for flow in flows or []:
                _crossed.setdefault((process_key, flow), test_id)


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


def write_report(session) -> None:
    if not _crossed:
        return  # no scenario ran (e.g. a selection without database tests)
    lines = ["# Sequence-flow coverage of the bundled diagrams", ""]
    uncovered = []
    for process, flows in diagram_flows().items():
        covered = sum((process, f) in _crossed for f, _ in flows)
        lines += [f"## {process}: {covered}/{len(flows)} flows crossed", "", "| flow | label | crossed by |",
                  "|---|---|---|"]
        for flow, label in flows:
            test = _crossed.get((process, flow))
            if test is None:
                uncovered.append(f"{process}:{flow}")
            lines.append(f"| `{flow}` | {label} | {test or '**not crossed**'} |")
        lines.append("")
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    total = sum(len(f) for f in diagram_flows().values())
    _state["summary"] = (f"flow coverage: {total - len(uncovered)}/{total} sequence flows crossed "
                         f"(report: {REPORT.relative_to(ROOT)})")
    if uncovered and os.environ.get("CAMINS_FLOW_COVERAGE") == "strict":
        _state["summary"] += "\nnot crossed: " + ", ".join(uncovered)
        session.exitstatus = 1


def summary() -> str:
    return _state["summary"]
