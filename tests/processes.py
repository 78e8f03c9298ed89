"""Real processes for fault and load tests: `camins serve` and `camins worker` as subprocesses.

Fault tests kill these with SIGKILL and start them again, so each runs in its own process group
and its output goes to a log file the test can show when something goes wrong.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CaminsProcess:
    """One `camins ...` subprocess and the log it writes."""

    args: list[str]
    database_url: str
    log_path: Path
    clock_file: str | None = None
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> CaminsProcess:
        env = {**os.environ, "CAMINS_DATABASE_URL": self.database_url, "PYTHONUNBUFFERED": "1"}
        if self.clock_file:
            env["CAMINS_CLOCK_FILE"] = self.clock_file
        else:
            env.pop("CAMINS_CLOCK_FILE", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.popen = subprocess.Popen([sys.executable, "-m", "api.cli", *self.args], cwd=ROOT, env=env,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: gunicorn's master and its workers die at once."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def group_peak_rss_bytes(self) -> int:
        """Peak resident memory (VmHWM) of the largest process of the group."""
        peak = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                if os.getpgid(int(status.parent.name)) != self.popen.pid:
                    continue
            except (OSError, ValueError):
                continue
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        return peak


@dataclass
class Server(CaminsProcess):
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"server exited early:\n{self.log_tail()}")
            try:
                if requests.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout} s:\n{self.log_tail()}")


def start_server(database_url: str, log_dir: Path, workers: int = 1, clock_file: str | None = None,
                 port: int | None = None) -> Server:
    """`camins serve` (gunicorn) on a free port, ready to answer."""
    port = port or free_port()
    server = Server(["serve", "--port", str(port), "--workers", str(workers)], database_url,
                    Path(log_dir) / f"server-{port}.log", clock_file, port=port)
    return server.start().wait_ready()


def start_worker(database_url: str, log_dir: Path, clock_file: str | None = None, poll: float = 0.2,
                 batch: int = 100, lease: float = 300.0, name: str = "worker") -> CaminsProcess:
    """`camins worker`, polling often so tests do not wait."""
    worker = CaminsProcess(["worker", "--poll", str(poll), "--batch", str(batch), "--lease", str(lease)],
                           database_url, Path(log_dir) / f"{name}.log", clock_file)
    return worker.start()


def group_pids(process: CaminsProcess) -> set[int]:
    """Process ids of a subprocess's group: for gunicorn, the master and its workers."""
    pids = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(entry.name)) == process.pid:
                pids.add(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids
