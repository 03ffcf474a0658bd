"""``sweetspot serve``: the API in this process and N local worker processes beside it.

Workers are separate processes (CPU-heavy training never runs in the web process). A
supervisor thread restarts a worker that died; its job is resolved by the lost-job monitor
(requeued once from its checkpoint, by default) and picked up again. Workers stop when this
process is gone, also when it was SIGKILLed (:func:`service.worker.stop_with_parent`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from service.settings import Settings

log = logging.getLogger("sweetspot.serve")


class WorkerPool:
    """Starts, supervises and stops ``python -m service.worker`` processes."""

    def __init__(self, settings: Settings, count: int):
        self.settings = settings
        self.count = count
        self.processes: list[subprocess.Popen] = []
        self.restarts = [0] * count
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, daemon=True)

    def _spawn(self, index: int) -> subprocess.Popen:
        env = dict(os.environ)
        env["SWEETSPOT_DATA_DIR"] = str(self.settings.data_dir)
        env["SWEETSPOT_PARENT_PID"] = str(os.getpid())  # workers exit if serve disappears
        if self.settings.database_url:
            env["SWEETSPOT_DATABASE_URL"] = self.settings.database_url
        return subprocess.Popen([sys.executable, "-m", "service.worker", "--worker-id",
                                 self.worker_id(index)], env=env)  # fmt: skip

    def worker_id(self, index: int) -> str:
        """``local-<index>-<serve pid>``, ``.<n>`` after its n-th restart: a job requeued from
        a worker that died and then claimed by its successor read as lost and claimed by the
        same worker."""
        restarts = self.restarts[index]
        return f"local-{index}-{os.getpid()}" + (f".{restarts}" if restarts else "")

    def start(self) -> WorkerPool:
        self.processes = [self._spawn(i) for i in range(self.count)]
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while not self.stop.wait(1.0):
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self.stop.is_set():
                    log.warning("worker %d exited with %s; restarting", index, process.returncode)
                    self.restarts[index] += 1
                    self.processes[index] = self._spawn(index)

    def close(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every worker (a running job is requeued from its checkpoint), then wait."""
        self.stop.set()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    import uvicorn

    from service.api.app import create_app

    app = create_app(settings)  # migrates the database before any worker starts
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with the default handler
    # that would kill this process before the pool is closed and leave orphaned workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pool = WorkerPool(settings, workers).start() if workers else None
    print(f"sweetspot: serving http://{host}:{port} (API docs at /docs), {workers} worker(s), "
          f"data in {settings.data_dir}", file=sys.stderr)  # fmt: skip
    try:
        # No per-request access log: it costs more than a cached prediction (see bench api).
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        if pool:
            pool.close()
    return 0
