"""Hardware profiles: the machine numbers the roofline needs, as typed data with provenance.

A profile holds the four inputs of the model in Park et al. (ICLR 2017, §2.2, Table 1):
``F`` the achievable dense compute rate, ``B`` the achievable memory bandwidth, ``α`` the
compute overhead of the sparse kernel relative to dense and ``β`` the bytes stored per non-zero
relative to a dense weight. Every number says where it came from (paper table, datasheet, or a
calibration run with host and date).

Profiles are data files (JSON or TOML), never code. The three platforms of the paper ship in
``perfmodel/profiles/``; users keep their own in the profile directory
(``$SWEETSPOT_PROFILE_DIR``, default ``~/.local/share/sweetspot/profiles``) or pass a path.
"""

from __future__ import annotations

import json
import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_DIR = Path(__file__).with_name("profiles")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


class ProfileError(ValueError):
    """A profile file is missing, unreadable or invalid; the message names the bad field."""


class UnknownProfileError(LookupError):
    """No profile of that name; ``valid`` lists the names that exist."""

    def __init__(self, name: str, valid: list[str]):
        self.name = name
        self.valid = valid
        super().__init__(f"unknown hardware profile {name!r}; valid names: {', '.join(valid)}")


class Provenance(BaseModel):
    """Where the numbers of a profile come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["paper", "datasheet", "calibration", "user"]
    source: str = Field(description="Citation or tool that produced the numbers.")
    host: str | None = Field(None, description="Machine a calibration ran on.")
    cpu: str | None = Field(None, description="CPU model string of that machine.")
    date: str | None = Field(None, description="ISO date of the measurement.")
    notes: str | None = None


class HardwareProfile(BaseModel):
    """One platform's roofline inputs. Units are in the field names; frozen once built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Stable identifier, e.g. 'atom-c2750'.")
    description: str = ""
    dense_flops_per_s: float = Field(
        gt=0, description="F: achievable dense fp32 compute rate (the paper: MKL SGEMM)."
    )
    memory_bandwidth_bytes_per_s: float = Field(
        gt=0, description="B: achievable memory bandwidth (the paper: STREAM)."
    )
    sparse_overhead: float = Field(
        gt=0, description="α: compute cost of the sparse kernel per useful FLOP, relative to dense."
    )
    sparse_bytes_per_nonzero: float = Field(
        2.0, gt=0, description="β: bytes per non-zero / bytes per dense weight (fp32 CSR: 2)."
    )
    default_batch: int = Field(1, gt=0, description="Batch size the profile was measured at.")
    cores: int | None = Field(None, gt=0)
    clock_hz: float | None = Field(None, gt=0)
    simd_width_fp32: int | None = Field(None, gt=0)
    provenance: Provenance

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity at which dense compute and memory time are equal (F/B)."""
        return self.dense_flops_per_s / self.memory_bandwidth_bytes_per_s


def _format_validation_error(source: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(profile)"
        problems.append(f"field '{field}': {item['msg']}")
    return f"invalid hardware profile {source}: " + "; ".join(problems)


def parse_profile(data: object, source: str = "(inline)") -> HardwareProfile:
    """Validate a mapping (parsed JSON/TOML or an API body) into a profile."""
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as error:
        raise ProfileError(_format_validation_error(source, error)) from None


def load_profile_file(path: str | Path) -> HardwareProfile:
    """Read a profile from a ``.json`` or ``.toml`` file."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ProfileError(f"cannot read hardware profile {path}: {error.strerror}") from None
    try:
        is_toml = path.suffix.lower() == ".toml"
        data = tomllib.loads(text.decode()) if is_toml else json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProfileError(f"hardware profile {path} is not valid JSON/TOML: {error}") from None
    return parse_profile(data, source=str(path))


def user_profile_dir() -> Path:
    """Where user and calibrated profiles live (``$SWEETSPOT_PROFILE_DIR`` overrides)."""
    env = os.environ.get("SWEETSPOT_PROFILE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".local" / "share" / "sweetspot" / "profiles"


def _profile_files() -> dict[str, Path]:
    """Profile name → file; user profiles shadow built-ins of the same name."""
    directories = (BUILTIN_DIR, user_profile_dir())
    stamps = []
    for directory in directories:
        try:
            stamps.append((str(directory), directory.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(directory), None))
    return dict(_scan(tuple(stamps)))  # a copy: callers may not mutate the cache


@cache
def _scan(stamps: tuple[tuple[str, int | None], ...]) -> dict[str, Path]:
    """Directory listing, cached until a directory's mtime changes (a file added/removed)."""
    files: dict[str, Path] = {}
    for directory, stamp in stamps:
        if stamp is None or not Path(directory).is_dir():
            continue
        for path in sorted(Path(directory).iterdir()):
            if path.suffix.lower() in (".json", ".toml"):
                files[path.stem] = path
    return files


def profile_names() -> list[str]:
    """Every profile name that ``get_profile`` accepts, sorted."""
    return sorted(_profile_files())


@cache
def _builtin(path: Path, mtime: float) -> HardwareProfile:
    return load_profile_file(path)


def get_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (built-in or user directory) or by path to a JSON/TOML file.

    Raises:
        UnknownProfileError: neither a known name nor an existing file.
        ProfileError: the file exists but is invalid (the message names the field).
    """
    text = str(name_or_path)
    files = _profile_files()
    if not text.strip():
        raise UnknownProfileError(text, sorted(files))
    if text in files:
        path = files[text]
        profile = _builtin(path, path.stat().st_mtime)
        if profile.name != text:
            raise ProfileError(f"profile file {path} declares name {profile.name!r}, not {text!r}")
        return profile
    path = Path(text)
    if path.suffix.lower() in (".json", ".toml") or path.exists():
        if not path.exists():
            raise ProfileError(f"hardware profile file {path} does not exist")
        return load_profile_file(path)
    raise UnknownProfileError(text, sorted(files))


def save_profile(profile: HardwareProfile, directory: Path | None = None) -> Path:
    """Write ``profile`` as JSON into the user profile directory; returns the file written."""
    directory = directory or user_profile_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(profile.model_dump_json(indent=2, exclude_none=True) + "\n")
    tmp.replace(path)
    return path
