"""Running the service as real processes in tests (shared by the process-level tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(predicate, timeout_s: float = 90.0):
    """Poll ``predicate`` until it returns something truthy (transport errors count as no)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


class Server:
    """``sweetspot serve`` on a free port, ready when /healthz answers."""

    def __init__(self, data_dir: Path, workers: int, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = env or {**os.environ, "SWEETSPOT_DATA_DIR": str(data_dir)}
        self.process = subprocess.Popen(
            [str(BIN / "sweetspot"), "serve", "--port", str(self.port), "--workers",
             str(workers)], env={"PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200)

    def stop(self) -> None:
        """SIGTERM, as a service manager would; its local workers must go with it."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        wait(lambda: not self.worker_pids(), timeout_s=20)

    def worker_pids(self) -> list[int]:
        """Live worker processes started by this server (their ids end in its pid)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "service.worker" in command and command.rstrip().endswith(f"-{self.process.pid}"):
                pids.append(int(entry.name))
        return pids
