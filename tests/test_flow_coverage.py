"""The flow-coverage records of pytest-xdist workers merge into the report a serial run would write."""
from tests import flow_coverage

FLOWS = {"p": [("F1", "a → b"), ("F2", "b → c"), ("F3", "b → d")], "q": [("G1", "x → y")]}


def worker(*records):
    """What one worker sends in `workeroutput`: its records in the export format."""
    crossed = {}
    for process, flow, position, test_id in records:
        flow_coverage.add(crossed, process, flow, position, test_id)
    return [[p, f, pos, t] for (p, f), (pos, t) in crossed.items()]


def test_workers_records_merge_keeping_the_test_first_in_the_collection():
    gw0 = worker(("p", "F1", 5, "test_b"), ("p", "F2", 5, "test_b"))
    gw1 = worker(("p", "F1", 2, "test_a"), ("q", "G1", 7, "test_c"), ("p", "F2", 9, "test_d"))
    merged, merged_other_way = {}, {}
    for records in (gw0, gw1):
        flow_coverage.merge(records, merged)
    for records in (gw1, gw0):
        flow_coverage.merge(records, merged_other_way)
    assert merged == merged_other_way == {
        ("p", "F1"): (2, "test_a"), ("p", "F2"): (5, "test_b"), ("q", "G1"): (7, "test_c")}
    text, uncovered = flow_coverage.report(merged, FLOWS)
    assert uncovered == ["p:F3"]
    assert "## p: 2/3 flows crossed" in text and "## q: 1/1 flows crossed" in text
    assert "| `F1` | a → b | test_a |" in text and "| `F3` | b → d | **not crossed** |" in text


def test_a_flow_only_another_worker_crossed_is_covered_and_one_none_crossed_is_not():
    merged = {}
    flow_coverage.merge(worker(("p", "F1", 0, "t0"), ("p", "F2", 1, "t0")), merged)
    assert flow_coverage.report(merged, FLOWS)[1] == ["p:F3", "q:G1"]
    flow_coverage.merge(worker(("p", "F3", 3, "t1"), ("q", "G1", 4, "t2")), merged)
    assert flow_coverage.report(merged, FLOWS)[1] == []
    # A worker that died sends nothing: what it crossed stays uncovered, so the strict check fails.
    flow_coverage.merge([], merged)
    assert flow_coverage.report({}, FLOWS)[1] == ["p:F1", "p:F2", "p:F3", "q:G1"]
