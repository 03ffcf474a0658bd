"""Where job artifacts live: a small interface, one implementation on a (shared) filesystem.

Every host that runs the API or a worker must see the same root (a local folder on one
machine; an NFS/SMB mount or similar for several). An object store would implement the same
four methods.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Protocol

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class ArtifactStore(Protocol):
    def job_dir(self, job_id: str) -> Path:
        """The folder a worker writes the job's files into (created on demand)."""

    def files(self, job_id: str) -> list[tuple[str, int]]:
        """(name, size) of every file of the job."""

    def path(self, job_id: str, name: str) -> Path | None:
        """The file ``name`` of the job, or None: never a path outside the job's folder."""

    def delete(self, job_id: str) -> None: ...


class LocalArtifactStore:
    """Artifacts under ``root/<job id>/`` on a filesystem all hosts share."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        if not SAFE_NAME.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def files(self, job_id: str) -> list[tuple[str, int]]:
        directory = self.job_dir(job_id)
        if not directory.is_dir():
            return []
        return [(p.name, p.stat().st_size) for p in sorted(directory.iterdir()) if p.is_file()]

    def path(self, job_id: str, name: str) -> Path | None:
        if not SAFE_NAME.match(name):
            return None
        directory = self.job_dir(job_id).resolve()
        path = (directory / name).resolve()
        return path if path.parent == directory and path.is_file() else None

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
