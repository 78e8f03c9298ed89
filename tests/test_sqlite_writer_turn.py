"""SQLite writers take turns on an operating-system lock instead of polling SQLite's (engine/db.py)."""
from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

from sqlalchemy import text

from engine.db import Database, WriterTurn


def _hold_turns(lock_path: str, log_path: str, who: str, times: int) -> None:
    turn = WriterTurn(Path(lock_path))
    for _ in range(times):
        with turn():
            with open(log_path, "a") as log:
                log.write(f"{who} in\n")
                log.flush()
            time.sleep(0.002)
            with open(log_path, "a") as log:
                log.write(f"{who} out\n")


def test_writers_of_two_processes_and_two_threads_never_overlap(tmp_path):
    lock, log = str(tmp_path / "db-writer.lock"), str(tmp_path / "log")
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_hold_turns, args=(lock, log, "process", 30))
    process.start()
    threads = [threading.Thread(target=_hold_turns, args=(lock, log, f"thread{n}", 30)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    process.join(timeout=60)
    lines = Path(log).read_text().splitlines()
    assert len(lines) == 2 * 90
    # Every "in" is followed by the same writer's "out": nobody wrote while another held the turn.
    for entered, left in zip(lines[::2], lines[1::2], strict=True):
        assert entered.endswith(" in") and left == entered.replace(" in", " out")


def test_a_write_opened_inside_another_on_the_same_thread_does_not_wait_for_itself(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'camins.db'}")
    try:
        finished = threading.Event()

        def nested():
            with db.write():
                with db.write() as inner:
                    inner.execute(text("CREATE TABLE t (x INTEGER)"))
            finished.set()

        worker = threading.Thread(target=nested, daemon=True)
        worker.start()
        worker.join(timeout=20)
        assert finished.is_set(), "a nested write on one thread deadlocked on its own turn"
        with db.read() as session:
            assert session.execute(text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        db.dispose()
