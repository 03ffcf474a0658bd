"""Build and load the native sparse kernel (``model/sparse/csrc``), never crashing on failure.

The C++ source is compiled with ``torch.utils.cpp_extension.load`` into a project-local build
directory (``<repo>/build/sparse_kernel/<tag>``, or ``$SWEETSPOT_BUILD_DIR``) with
``-O3 -march=native`` (AVX-512 or AVX2 chosen by the compiler for this CPU) and ``-fopenmp``
(without it ``at::parallel_for`` is single-threaded, docs/research.md §7). The tag names the
Python, torch and CPU-feature combination, so one checkout shared by different machines never
loads a binary built for another CPU.

Loading is guarded: :func:`load` returns ``None`` and warns once (one line) when there is no
compiler, no ninja, or the build fails; callers then use :mod:`model.sparse.reference`.

Concurrency and crashes: torch serialises builds with a ``lock`` file (``FileBaton``) that a
killed build leaves behind, after which every later load waits forever. We therefore take our
own ``fcntl`` lock first (the kernel releases it when its holder dies, so it cannot go stale);
while we hold it no other Sweetspot process can be building, so any torch ``lock`` file found
is stale and is removed. A build killed while writing the shared object is detected when
importing it fails: the shared object is relinked, and if that fails too the build directory
is wiped and rebuilt once.

Run ``python -m model.sparse`` to build ahead of time (the install step does).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

EXTENSION_NAME = "sweetspot_sparse"
SOURCES = (Path(__file__).resolve().parent / "csrc" / "sparse_conv.cpp",)
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17")
LDFLAGS = ("-fopenmp",)
LOCK_TIMEOUT_S = 900.0  # a cold build takes ≈30 s; a waiter gives up (and falls back) after this
DISABLE_ENV = "SWEETSPOT_SPARSE_NATIVE"  # "0" forces the reference implementation
BUILD_DIR_ENV = "SWEETSPOT_BUILD_DIR"
_OUR_LOCK = ".sweetspot-build.lock"
_TORCH_LOCK = "lock"  # torch.utils.file_baton.FileBaton's lock file in the build directory


class NativeKernelWarning(RuntimeWarning):
    """The native kernel could not be built or loaded; the reference implementation runs."""


@dataclass(frozen=True)
class KernelInfo:
    """Which implementation of the sparse ops runs in this process, and why."""

    implementation: str  # "native" or "reference"
    isa: str | None  # "avx512", "avx2", "generic" when native
    vector_width: int | None  # floats per vector register when native
    threads: int  # threads at::parallel_for uses (torch.get_num_threads())
    build_dir: str
    reason: str  # why the reference runs, or how the native kernel was obtained

    @property
    def native(self) -> bool:
        return self.implementation == "native"


_lock = threading.Lock()
_module: ModuleType | None = None
_attempted = False
_reason = "not loaded yet"


def _cpu_tag() -> str:
    """Short hash of the CPU features -march=native compiles for."""
    flags = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line.split(":", 1)[1]
                break
    return hashlib.sha256(flags.encode()).hexdigest()[:10]


def build_dir() -> Path:
    """Where the extension is built: ``$SWEETSPOT_BUILD_DIR`` or ``<repo>/build/sparse_kernel``."""
    override = os.environ.get(BUILD_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    import torch

    repo = Path(__file__).resolve().parents[2]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"{py}-torch{torch.__version__.replace('+', '_')}-{_cpu_tag()}"
    return repo / "build" / "sparse_kernel" / tag


@contextlib.contextmanager
def _exclusive(directory: Path, timeout_s: float) -> Iterator[None]:
    """Hold an fcntl lock on ``directory`` (released by the OS if this process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on torch's own lock
        yield
        return
    path = directory / _OUR_LOCK
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another process held {path} for more than {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _missing_toolchain() -> str | None:
    """A reason the extension cannot be compiled here, or None."""
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _wipe(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.name == _OUR_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def _interpreter_tools_first() -> Iterator[None]:
    """PATH with this interpreter's own `ninja` first, for the build's duration.

    torch runs whichever `ninja` PATH finds first. With the virtualenv's ninja (1.13) and a
    system one (1.11) both present, a shell with the venv activated and one without it hashed
    the same build commands differently, and every switch rebuilt the kernel (≈30 s). Only
    ninja is put first (a folder holding a link to it), so the compilers PATH chooses (ccache,
    conda's) stay as they are."""
    ninja = Path(sys.executable).parent / "ninja"
    if not ninja.exists():
        yield
        return
    previous = os.environ.get("PATH")
    with tempfile.TemporaryDirectory(prefix="sweetspot-ninja-") as folder:
        (Path(folder) / "ninja").symlink_to(ninja)
        os.environ["PATH"] = os.pathsep.join([folder, *([previous] if previous else [])])
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("PATH", None)
            else:
                os.environ["PATH"] = previous


def _compile_and_import(directory: Path, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    with _interpreter_tools_first():  # the one place torch runs ninja
        return cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(directory),
            verbose=verbose,
        )


def _forget_build() -> None:
    """Make torch rebuild on the next load in this process.

    ``cpp_extension.load`` skips ninja entirely when it already loaded (or tried) the same
    sources earlier in the process; its versioner is private, hence the guard.
    """
    from torch.utils import cpp_extension

    entries = getattr(getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None), "entries", None)
    if isinstance(entries, dict):
        entries.pop(EXTENSION_NAME, None)


def _build_locked(verbose: bool, timeout_s: float) -> ModuleType:
    """Compile if needed and import, under our lock; raise on any failure."""
    missing = _missing_toolchain()
    if missing:
        raise RuntimeError(missing)
    directory = build_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory, timeout_s):
        # We hold the only Sweetspot build lock: a torch lock file left here is stale.
        (directory / _TORCH_LOCK).unlink(missing_ok=True)
        try:
            return _compile_and_import(directory, verbose)
        except Exception:
            # A build killed mid-way leaves a truncated object or .so that ninja thinks is
            # current. First relink (cheap: drop the shared objects), then rebuild from scratch.
            for library in directory.glob("*.so"):
                library.unlink(missing_ok=True)
        (directory / _TORCH_LOCK).unlink(missing_ok=True)
        _forget_build()
        try:
            return _compile_and_import(directory, verbose)
        except Exception:
            _wipe(directory)
        _forget_build()
        return _compile_and_import(directory, verbose)


def load(verbose: bool = False) -> ModuleType | None:
    """The native extension module, building it on first use; None when unavailable.

    Never raises: a failure is reported once as a one-line :class:`NativeKernelWarning` and
    remembered for the life of the process (see :func:`kernel_info` for the reason).
    """
    global _module, _attempted, _reason
    if _attempted:
        return _module
    with _lock:
        if _attempted:
            return _module
        if os.environ.get(DISABLE_ENV, "1") == "0":
            _reason = f"disabled by {DISABLE_ENV}=0"
        else:
            started = time.perf_counter()
            try:
                _module = _build_locked(verbose, LOCK_TIMEOUT_S)
                _reason = f"loaded from {build_dir()} in {time.perf_counter() - started:.2f} s"
            except Exception as error:  # any build/load failure → reference implementation
                message = str(error).strip().splitlines()
                _reason = f"{type(error).__name__}: {message[0] if message else ''}"[:300]
                warnings.warn(
                    f"sweetspot: native sparse kernel unavailable ({_reason}); using the slow "
                    "pure-PyTorch reference. Fix the toolchain and run "
                    "`python -m model.sparse`.",
                    NativeKernelWarning,
                    stacklevel=2,
                )
        _attempted = True
        return _module


def build(verbose: bool = True) -> ModuleType:
    """Build (or reuse) the extension now and return it; raises with the compiler's error."""
    global _module, _attempted, _reason
    with _lock:
        if _module is None:
            started = time.perf_counter()
            _module = _build_locked(verbose, LOCK_TIMEOUT_S)
            _reason = f"loaded from {build_dir()} in {time.perf_counter() - started:.2f} s"
            _attempted = True
        return _module


def native_available() -> bool:
    """Whether the native kernel is (or can now be) loaded; triggers the build on first call."""
    return load() is not None


def kernel_info() -> KernelInfo:
    """Which implementation runs and why (loads the extension if not tried yet)."""
    import torch

    module = load()
    directory = str(build_dir())
    if module is None:
        return KernelInfo("reference", None, None, torch.get_num_threads(), directory, _reason)
    return KernelInfo(
        "native",
        module.isa(),
        int(module.vector_width()),
        int(module.num_threads()),
        directory,
        _reason,
    )


def main() -> int:
    """``python -m model.sparse``: build ahead of time and say what was built."""
    started = time.perf_counter()
    try:
        module = build(verbose=False)
    except Exception as error:
        print(f"sweetspot: building the native sparse kernel failed: {error}", file=sys.stderr)
        print("sweetspot: the pure-PyTorch reference will be used instead.", file=sys.stderr)
        return 1
    print(
        f"sweetspot: native sparse kernel {EXTENSION_NAME} ready ({module.isa()}, "
        f"{module.vector_width()} floats/vector, {module.num_threads()} threads) in "
        f"{build_dir()} [{time.perf_counter() - started:.1f} s]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
