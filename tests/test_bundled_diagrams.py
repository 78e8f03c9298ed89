"""The bundled diagrams: diagram interchange for every shape and edge, layout, forms, every path.

diagram_static checks every diagram statically; each diagram_checks* runs the paths of some
pathways. Each prints a report and exits 0 when it found no problem. They run in a fresh
interpreter each, because they drive SpiffWorkflow's timers with clocks of their own.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKERS = ["diagram_static", "diagram_checks", "diagram_checks_p3", "diagram_checks_p45", "diagram_checks_p678"]


@pytest.mark.parametrize("checker", CHECKERS)
def test_bundled_diagrams_are_complete_and_every_path_ends_as_designed(checker):
    result = subprocess.run([sys.executable, f"tests/{checker}.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "PROBLEM" not in result.stdout
    assert " ok" in result.stdout


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
