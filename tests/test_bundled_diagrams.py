"""The bundled diagrams: diagram interchange for every shape and edge, layout, forms, every path."""
from __future__ import annotations

from . import diagram_checks


def test_bundled_diagrams_are_complete_and_every_path_ends_as_designed(capsys):
    diagram_checks.PROBLEMS.clear()
    status = diagram_checks.main()
    report = capsys.readouterr().out
    assert status == 0 and diagram_checks.PROBLEMS == [], report
    assert "11 runs, 11 ok" in report
