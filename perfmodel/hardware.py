"""Hardware profiles: the machine numbers the roofline needs, as typed data with provenance.

A profile holds the four inputs of the model in Park et al. (ICLR 2017, §2.2, Table 1):
``F`` the achievable dense compute rate, ``B`` the achievable memory bandwidth, ``α`` the
compute overhead of the sparse kernel relative to dense and ``β`` the bytes stored per non-zero
relative to a dense weight. Every number says where it came from (paper table, datasheet, or a
calibration run with host and date).

A calibrated profile (``sweetspot calibrate``, :mod:`model.calibration`) also carries the
fitted parameters of the refined model (:class:`RefinedParameters`, used by
:mod:`perfmodel.refined`): per-call overheads, dense rates per layer family, the sparse
kernel's inner-loop and packing bandwidths, and the measured cache and DRAM bandwidths.

Schema versions (``schema_version``): 1 is the paper's four numbers with provenance (every
file without the field is version 1 and still loads); 2 adds the optional ``refined`` block;
3 adds three refined parameters (dense ``output_bytes_per_s``, sparse ``call_nonzeros_per_s``
and ``fma_latency_vectors``). Older files load unchanged and predict exactly as before: the new
rates default to ``None`` (negligible) and the latency floor to the 4 vectors version 2 assumed.
Within version 3, later fields are optional and absent from older files: a fit of PyTorch's
native convolution path (``native_dense``, absent: oneDNN everywhere), per-family dense call
costs (absent: none), the calibration's pass spread (absent: unknown) and the sparse cost of
activations beyond L2 (``cache_bytes``, ``cold_activation_bytes_per_s``; absent: none) and
the row-pair loop (``pair_loop_bytes_per_s``; absent: rows computed one at a time); those
files predict as they did. A file from a newer Sweetspot than this one is refused with a
message saying so.

Profiles are data files (JSON or TOML), never code. The three platforms of the paper ship in
``perfmodel/profiles/``; users keep their own in the profile directory
(``$SWEETSPOT_PROFILE_DIR``, default ``~/.local/share/sweetspot/profiles``) or pass a path.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
import uuid
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUILTIN_DIR = Path(__file__).with_name("profiles")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"
MAX_NAME_LENGTH = 64
MAX_TEXT_LENGTH = 1000  # description and provenance: one listing of profiles is sent to everyone
"""A profile's name is its file's name: well within every file system's 255 bytes."""
SCHEMA_VERSION = 3
"""Version written by this Sweetspot; every version up to it loads (see the module docstring)."""

# Physically plausible ranges, wide enough for any machine from a microcontroller to an exascale
# system: they keep every time and speedup the model computes finite (a rate of 1e-300 made
# the dense time infinite, and the API's answer invalid JSON).
MIN_RATE, MAX_RATE = 1.0, 1e18
"""Rates, per second (FLOP/s, bytes/s, visits/s, …)."""
MIN_RATIO, MAX_RATIO = 1e-2, 1e3
"""The relative factors α (sparse_overhead) and β (sparse_bytes_per_nonzero)."""

Rate = Annotated[float, Field(ge=MIN_RATE, le=MAX_RATE)]
OptionalRate = Annotated[float | None, Field(default=None, ge=MIN_RATE, le=MAX_RATE)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]


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

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["paper", "datasheet", "calibration", "user"]
    source: Text = Field(description="Citation or tool that produced the numbers.")
    host: Text | None = Field(None, description="Machine a calibration ran on.")
    cpu: Text | None = Field(None, description="CPU model string of that machine.")
    date: Text | None = Field(None, description="ISO date of the measurement.")
    threads: int | None = Field(None, gt=0, description="Threads a calibration ran with.")
    torch: Text | None = Field(None, description="PyTorch version a calibration ran with.")
    notes: Text | None = None


class MemoryBandwidths(BaseModel):
    """Read bandwidths measured on the host at each level of the hierarchy (all threads)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    l1_bytes_per_s: Rate = Field(description="Reading a 16 KiB buffer over and over.")
    l2_bytes_per_s: Rate = Field(description="Reading a 512 KiB buffer over and over.")
    dram_bytes_per_s: Rate = Field(description="Reading a 256 MiB buffer once.")
    dram_copy_bytes_per_s: OptionalRate = Field(description="Copying 64 MiB (read + write).")


class DenseParameters(BaseModel):
    """Fitted time of oneDNN (and of PyTorch's default for fully connected layers); where
    ``F.conv2d`` runs PyTorch's native path, :class:`NativeDenseParameters` gives the other
    candidate and the prediction is the faster.

    ``t = call_overhead_s + family_call_s + C'/F_family + S_A/layout + S_out/output
    + S_W/weight_layout`` with
    ``C'`` the FLOPs with channels padded to the vector width, ``S_A`` input + output bytes,
    ``S_out`` output bytes (see :mod:`perfmodel.refined`). A rate of ``None`` means the fit
    found the term negligible on this host (or, for ``output_bytes_per_s``, a schema-2 profile).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    call_overhead_s: float = Field(ge=0, description="Fixed cost of one dense call.")
    conv1x1_call_s: float = Field(0.0, ge=0, description="Extra fixed cost of a 1×1 call.")
    conv3x3_call_s: float = Field(
        0.0, ge=0, description="Extra fixed cost of a 3×3 stride-1 ungrouped call."
    )
    conv_call_s: float = Field(0.0, ge=0, description="Extra fixed cost of any other conv call.")
    conv1x1_flops_per_s: OptionalRate = Field(description="1×1 convolutions (a GEMM).")
    conv3x3_flops_per_s: OptionalRate = Field(
        description="3×3 stride-1 ungrouped convolutions (the most common shape, its own rate)."
    )
    conv_flops_per_s: OptionalRate = Field(description="Every other convolution.")
    linear_flops_per_s: OptionalRate = Field(description="Fully connected layers.")
    layout_bytes_per_s: OptionalRate = Field(
        description="Activations (input + output) reordered to and from the backend's layout."
    )
    output_bytes_per_s: OptionalRate = Field(
        description="Output activations again, on top of the layout rate: written in the "
        "blocked layout, then reordered into a newly allocated NCHW tensor (schema 3)."
    )
    conv_weight_bytes_per_s: OptionalRate = Field(
        description="Convolution weights reordered on every call."
    )
    linear_weight_bytes_per_s: OptionalRate = Field(
        description="Fully connected weights streamed from memory."
    )


class NativeDenseParameters(BaseModel):
    """Fitted time of PyTorch's native convolution (im2col + GEMM, ``slow_conv2d``), which
    ``F.conv2d`` runs instead of oneDNN for small batch-1 inputs
    (:func:`perfmodel.refined.runs_native_dense`); one image per thread, so at batch 1 it runs
    on one core whatever the thread count.

    ``t = call_overhead_s + S_cols/columns (strided_columns if strided or dilated)
    + 2·K·C·R·S·P·Q/gemm + N·S_W/weights + S_out/output`` with ``S_cols`` the im2col matrix's
    bytes (written, then read by the GEMM), ``S_W`` the weights' bytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    call_overhead_s: float = Field(ge=0, description="Fixed cost of one native call.")
    columns_bytes_per_s: OptionalRate = Field(
        description="The im2col matrix (C·R·S × P·Q floats), unfolded and read by the GEMM."
    )
    strided_columns_bytes_per_s: OptionalRate = Field(
        description="The same for strided or dilated convolutions (a gather per element)."
    )
    gemm_flops_per_s: OptionalRate = Field(description="The GEMM's FLOPs (unpadded).")
    weight_bytes_per_s: OptionalRate = Field(
        description="Weights streamed by the GEMM, once per image: what bounds a GEMM with few "
        "output positions and many weights (late layers on small images)."
    )
    output_bytes_per_s: OptionalRate = Field(description="Output written (bias, then GEMM).")


class SparseParameters(BaseModel):
    """Fitted time of the direct sparse kernel (:mod:`model.sparse`), see perfmodel.refined."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    call_overhead_s: float = Field(ge=0, description="Fixed cost of one sparse call.")
    pack_bytes_per_s: OptionalRate = Field(
        description="Packing each image into the padded layout (bytes of the packed buffer)."
    )
    strided_pack_bytes_per_s: OptionalRate = Field(
        description="The same for strided layers (split into phase planes element by element)."
    )
    output_bytes_per_s: OptionalRate = Field(description="Copying finished outputs to NCHW.")
    inner_loop_bytes_per_s: OptionalRate = Field(
        description="The inner loop's input loads (one vector per FMA), from L1."
    )
    pair_loop_bytes_per_s: OptionalRate = Field(
        description="Row pairs: the input loads of the columns two output channels share, one "
        "vector for two FMAs (absent in profiles fitted before row pairs: the model then "
        "computes every row alone, as their kernel did)."
    )
    nonzero_visits_per_s: OptionalRate = Field(
        description="Per non-zero per register tile: the weight broadcast and loop overhead."
    )
    call_nonzeros_per_s: OptionalRate = Field(
        description="Per non-zero of a convolution and per call, whatever the batch: the "
        "weights' first trip from memory (and, in kernels before the check moved into the loop, "
        "the argument check's pass over the column indices; schema 3)."
    )
    fma_latency_vectors: float = Field(
        4.0,
        ge=1,
        description="A register tile of v output vectors costs max(v, this) vectors: below it "
        "the FMA latency, not the loads, sets the pace (fitted; schema 2 assumed 4).",
    )
    partial_sum_bytes_per_s: OptionalRate = Field(
        description="Partial sums reloaded and stored per input-channel block (in L2)."
    )
    tile_setups_per_s: OptionalRate = Field(
        description="Register tiles started and stored, per output channel and channel block."
    )
    cold_activation_bytes_per_s: OptionalRate = Field(
        description="A call's activation bytes beyond the cores' L2 (``cache_bytes``), met in "
        "L3 or DRAM by packing and the output copy (absent in older profiles: none)."
    )
    linear_csr_bytes_per_s: OptionalRate = Field(
        description="Sparse fully connected layers, batch < 16: CSR bytes streamed per image."
    )
    linear_flops_per_s: OptionalRate = Field(
        description="Sparse fully connected layers, batch >= 16: useful FLOPs."
    )


class FitQuality(BaseModel):
    """How well the fit matched its own calibration measurements, and how noisy they were."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    dense_mape: float = Field(ge=0, description="Mean |relative error| of dense times.")
    sparse_mape: float = Field(ge=0, description="Mean |relative error| of sparse times.")
    speedup_mape: float = Field(ge=0, description="Mean |relative error| of speedups.")
    noise_cv: float = Field(ge=0, description="Median coefficient of variation of timings.")
    pass_spread: float | None = Field(
        None, ge=0, description="Median spread (max / min − 1) of a timing's medians over the "
        "calibration's passes; None for a one-pass run (and in older profiles).",
    )  # fmt: skip
    measurements: int = Field(ge=0, description="Timed (layer, batch, density) cases.")
    outliers_dropped: int = Field(0, ge=0)
    duration_s: float | None = Field(None, ge=0, description="Wall time of the calibration.")


class RefinedParameters(BaseModel):
    """Everything :class:`perfmodel.refined.RefinedRoofline` needs, fitted on one host."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    threads: int = Field(gt=0, description="Threads the timings were taken with.")
    vector_width: int = Field(16, gt=0, description="fp32 lanes of the sparse kernel's ISA.")
    isa: str | None = Field(None, description="The sparse kernel's instruction set.")
    memory: MemoryBandwidths
    dense: DenseParameters
    native_dense: NativeDenseParameters | None = Field(
        None, description="PyTorch's native path where it runs (None: not fitted, older "
        "profiles; the dense time is then oneDNN's everywhere).",
    )  # fmt: skip
    sparse: SparseParameters
    cache_bytes: int | None = Field(
        None, gt=0, description="L2 of the cores calibrated with (each distinct L2 among the "
        "CPUs used once), from sysfs: a call's activations beyond it are cold (absent: not "
        "known, no such term).",
    )  # fmt: skip
    fit: FitQuality


class HardwareProfile(BaseModel):
    """One platform's roofline inputs. Units are in the field names; frozen once built."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    schema_version: int = Field(
        1, ge=1, le=SCHEMA_VERSION, description="Profile schema version (1: paper numbers only)."
    )
    name: str = Field(
        pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH,
        description="Stable identifier, e.g. 'atom-c2750' (also the file name it is saved as).",
    )  # fmt: skip
    description: Text = ""
    dense_flops_per_s: Rate = Field(
        description="F: achievable dense fp32 compute rate (the paper: MKL SGEMM)."
    )
    memory_bandwidth_bytes_per_s: Rate = Field(
        description="B: achievable memory bandwidth (the paper: STREAM)."
    )
    sparse_overhead: float = Field(
        ge=MIN_RATIO, le=MAX_RATIO,
        description="α: compute cost of the sparse kernel per useful FLOP, relative to dense.",
    )  # fmt: skip
    sparse_bytes_per_nonzero: float = Field(
        2.0, ge=MIN_RATIO, le=MAX_RATIO,
        description="β: bytes per non-zero / bytes per dense weight (fp32 CSR: 2).",
    )  # fmt: skip
    default_batch: int = Field(1, gt=0, le=65_536,
                               description="Batch size the profile was measured at.")  # fmt: skip
    cores: int | None = Field(None, gt=0, le=65_536)
    clock_hz: float | None = Field(None, gt=0)
    simd_width_fp32: int | None = Field(None, gt=0)
    provenance: Provenance
    refined: RefinedParameters | None = Field(
        None, description="Fitted parameters of the refined model (calibrated profiles only)."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_schema(cls, data: object) -> object:
        """Refuse files from a newer Sweetspot with a message that says so."""
        if isinstance(data, dict):
            version = data.get("schema_version", 1)
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ValueError(
                    f"schema_version {version} was written by a newer Sweetspot; this one "
                    f"reads versions 1 to {SCHEMA_VERSION}: upgrade Sweetspot or recalibrate"
                )
        return data

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
    """Profile name → file; a user file named like a built-in is skipped (built-ins win)."""
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
            if path.suffix.lower() not in (".json", ".toml"):
                continue
            if Path(directory) != BUILTIN_DIR and is_builtin_profile(path.stem):
                # A user file must not replace the paper's platform (or hide it when broken);
                # warned once per listing, as the scan is cached until the folder changes.
                logging.getLogger("sweetspot.hardware").warning(
                    "ignoring user profile %s: %r is a built-in profile name", path, path.stem
                )
                continue
            files[path.stem] = path
    return files


def profile_names() -> list[str]:
    """Every profile name that ``get_profile`` accepts, sorted."""
    return sorted(_profile_files())


def is_builtin_profile(name: str) -> bool:
    """Whether ``name`` is one of the profiles shipped with Sweetspot (the paper's platforms),
    which user profiles, calibrations included, must not shadow."""
    return (BUILTIN_DIR / f"{name}.json").exists()


def load_profiles() -> tuple[list[HardwareProfile], dict[str, ProfileError]]:
    """Every profile that loads, and why each of the others does not (a file edited by hand,
    or from a newer Sweetspot): one bad file must not hide the others."""
    profiles, problems = [], {}
    for name in profile_names():
        try:
            profiles.append(get_profile(name))
        except ProfileError as error:
            problems[name] = error
    return profiles, problems


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


def get_named_profile(name: str) -> HardwareProfile:
    """A profile by name only (built-in or saved in the profile directory), never by path:
    what a name from an API request may resolve to, so that it cannot read or probe the
    server's files (``pyproject.toml``, ``docs``, ``missing.json`` are unknown names).

    Raises:
        UnknownProfileError: not a profile name (the error lists the valid ones).
        ProfileError: the profile's file is invalid.
    """
    if name not in _profile_files():
        raise UnknownProfileError(name, profile_names())
    return get_profile(name)


def save_profile(profile: HardwareProfile, directory: Path | None = None) -> Path:
    """Write ``profile`` as JSON into the user profile directory; returns the file written."""
    directory = directory or user_profile_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{profile.name}.json"
    # A temporary file of its own: two writers of one name shared "<name>.json.tmp", and one's
    # rename failed (FileNotFoundError) or moved the other's content into place. Created with
    # the umask's permissions (a tempfile's 0600 hid the profile from other users of a shared
    # data directory).
    tmp = directory / f".{profile.name}.{uuid.uuid4().hex}.tmp"
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(descriptor, "w") as file:
        file.write(profile.model_dump_json(indent=2, exclude_none=True) + "\n")
    tmp.replace(path)
    return path
