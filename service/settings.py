"""Service settings: one pydantic-settings class, from ``SWEETSPOT_*`` variables and flags.

Fails fast on nonsense (a negative limit, an unknown policy). Defaults are the embedded ones:
a SQLite file and artifacts under a per-user data directory, local workers, no tokens.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/sweetspot`` or ``~/.local/share/sweetspot``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sweetspot"


class Settings(BaseSettings):
    """Everything the API and the workers need to agree on."""

    model_config = SettingsConfigDict(env_prefix="SWEETSPOT_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir,
                           description="database, artifacts, uploads, profiles")  # fmt: skip
    artifacts_dir: Path | None = Field(
        None, description="job artifacts root shared by all hosts; default <data_dir>/jobs"
    )
    database_url: str | None = Field(
        None, description="any SQLAlchemy URL; default sqlite:///<data_dir>/sweetspot.db"
    )
    api_tokens: str = Field(
        "", description="comma-separated bearer tokens; empty: no authentication"
    )
    cors_origins: str = Field("", description="comma-separated allowed origins; empty: CORS off")
    max_concurrent_jobs: int = Field(1, ge=1, description="jobs running at once per worker pool")
    max_queued_jobs: int = Field(100, ge=1, description="queued jobs per owner before 429")
    max_epochs: int = Field(200, ge=1, description="cap on dense+prune+finetune epochs per job")
    max_upload_bytes: int = Field(200 * 2**20, ge=1024, description="uploads above get 413")
    max_uploads: int = Field(100, ge=1, description="stored uploads per owner before 429 "
                             "(DELETE /v1/uploads/{id} frees one)")  # fmt: skip
    max_body_bytes: int = Field(
        8 * 2**20, ge=1024, description="other request bodies (JSON) above get 413; 8 MiB "
        "holds the largest sweet-spot request (1,000 layer specs) many times over"
    )
    heartbeat_s: float = Field(2.0, gt=0, description="worker heartbeat period")
    stale_after_s: float = Field(30.0, gt=0, description="a running job without heartbeat is lost")
    lost_job_policy: Literal["fail", "requeue"] = Field(
        "requeue", description="what happens to a job whose worker died (requeued once at most)"
    )
    job_threads: int | None = Field(None, ge=1, description="torch threads per job")
    job_procs: int = Field(1, ge=1, le=64, description="data-parallel processes per job, "
                           "unless its config sets procs (torchrun-style, on this host)")
    advertise_address: str | None = Field(
        None, description="address other hosts reach this worker at, for jobs on several hosts "
        "(config nodes > 1); default: this host name's address"
    )
    rendezvous_timeout_s: float = Field(
        300.0, gt=0, description="how long a job on several hosts waits for its other nodes to "
        "join (and for any of its ranks in a collective) before it fails"
    )

    @field_validator("stale_after_s")
    @classmethod
    def _stale_after_heartbeats(cls, value: float, info) -> float:
        heartbeat = info.data.get("heartbeat_s", 2.0)
        if value < 3 * heartbeat:
            raise ValueError(f"stale_after_s must be at least 3 heartbeats ({3 * heartbeat} s)")
        return value

    @cached_property
    def tokens(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.api_tokens.split(",") if t.strip())

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'sweetspot.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.artifacts_dir or self.data_dir / "jobs"

    @cached_property
    def artifacts(self):
        from service.storage import LocalArtifactStore

        return LocalArtifactStore(self.jobs_dir)

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def profiles_dir(self) -> Path:
        return self.data_dir / "profiles"

    def prepare(self) -> Settings:
        """Create the data folders and point the profile directory at the service's own."""
        for directory in (self.data_dir, self.jobs_dir, self.uploads_dir, self.profiles_dir):
            directory.mkdir(parents=True, exist_ok=True)
        os.environ["SWEETSPOT_PROFILE_DIR"] = str(self.profiles_dir)
        return self
