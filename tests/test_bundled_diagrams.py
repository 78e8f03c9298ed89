"""The bundled diagrams: diagram interchange for every shape and edge, layout, forms, every path.

Each checker covers some pathways; it prints a report and returns 0 when it found no problem.
"""
from __future__ import annotations

import importlib

import pytest

CHECKERS = ["diagram_checks", "diagram_checks_p3", "diagram_checks_p45", "diagram_checks_p678"]


@pytest.mark.parametrize("checker", CHECKERS)
def test_bundled_diagrams_are_complete_and_every_path_ends_as_designed(checker, capsys):
    from engine import clock

    module = importlib.import_module(f"tests.{checker}")
    module.PROBLEMS.clear()
    # The checkers run SpiffWorkflow on the real time; other tests leave a manual clock behind.
    previous = clock.get_clock()
    clock.set_clock(clock.SystemClock())
    try:
        status = module.main()
    finally:
        clock.set_clock(previous)
    report = capsys.readouterr().out
    assert status == 0 and module.PROBLEMS == [], report
    assert " ok" in report


def test_every_bundled_diagram_deploys_cleanly():
    from engine.bundle import bundles_from_directory, compile_bundle
    from workflows.hooks import DomainHooks
    from workflows.pathways import BUNDLED_DIAGRAMS

    hooks = DomainHooks()
    keys = [compile_bundle(files, hooks.resolve_lane, hooks.check_form, hooks.property_problems).process_key
            for files in bundles_from_directory(BUNDLED_DIAGRAMS)]
    for expected in ("deteccio", "investigacio", "intervencio", "revisio", "escalacio", "proteccio", "reunificacio",
                     "acolliment", "familia_acollidora", "adopcio", "sollicitants_adopcio", "emancipacio"):
        assert expected in keys
