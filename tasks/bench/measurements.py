"""The list of measurements `camins bench` runs, in order, and the ratios derived from them."""
from __future__ import annotations

import importlib

# (name, what it measures), in the order they run; each is the module tasks/bench/<name>.py.
ALL = [
    ("steps", "raw_step_per_s, engine_step_per_s, http_completions_per_s"),
    ("history", "history_cost_ratio"),
    ("inbox", "inbox_p95_ms_10k, inbox_p95_ms_1m, inbox_ratio"),
    ("timers", "timers: count, fired_per_s, lag_p99_s, memory_ratio, exactly_once"),
    ("state", "state_bytes per pathway"),
]


def measure_function(name: str):
    return importlib.import_module(f"{__package__}.{name}").measure


def derive(results: dict) -> None:
    """Ratios between figures of the same run."""
    raw = results.get("raw_step_per_s")
    if raw:
        if results.get("engine_step_per_s"):
            results["engine_vs_raw"] = round(results["engine_step_per_s"] / raw, 3)
        if results.get("http_completions_per_s"):
            results["http_vs_raw"] = round(results["http_completions_per_s"] / raw, 3)
    timer_results = results.get("timers")
    if isinstance(timer_results, dict) and results.get("engine_step_per_s") and timer_results.get("fired_per_s"):
        timer_results["rate_vs_engine"] = round(timer_results["fired_per_s"] / results["engine_step_per_s"], 3)
