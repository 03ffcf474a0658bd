"""Loading the native kernel: twice, from two processes, after a stale lock or killed build.

Every load that could hang runs in a subprocess with a timeout, so a regression fails the
test instead of freezing the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.sparse import native

REPO = Path(__file__).resolve().parents[1]
LOAD_TIMEOUT_S = 120  # a warm load takes well under a second
BUILD_TIMEOUT_S = 600  # a cold build takes ≈30 s on 2 cores

# Loads the kernel, runs one tiny conv against F.conv2d and prints which implementation ran.
CHECK = """
import warnings, torch, torch.nn.functional as F
from model.sparse import conv_weight_to_csr, kernel_info, sparse_conv2d
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    info = kernel_info()
x, w = torch.randn(2, 3, 7, 7), torch.randn(4, 3, 3, 3)
torch.testing.assert_close(sparse_conv2d(x, conv_weight_to_csr(w), padding=1),
                           F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-5)
print("IMPLEMENTATION", info.implementation)
print("WARNINGS", len([c for c in caught if "native sparse kernel" in str(c.message)]))
"""


def _env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env.setdefault("PYTHONPATH", str(REPO))
    return env


def _check(env: dict[str, str], timeout: float = LOAD_TIMEOUT_S) -> str:
    """Run CHECK in a fresh process; its stdout, then its stderr (where a fallback's warning
    says why the kernel did not load, so a failed assertion shows the reason)."""
    result = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr[-3000:]


@pytest.fixture(scope="module")
def built() -> Path:
    if not native.native_available():
        pytest.skip(f"native kernel unavailable: {native.kernel_info().reason}")
    return native.build_dir()


def test_importing_does_not_build():
    code = "import model.sparse, model.sparse.native as n; print(n._attempted)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.native
def test_loading_twice_returns_the_same_module(built):
    assert native.load() is native.load()
    assert native.kernel_info().native
    assert native.kernel_info().isa in {"avx512", "avx2", "generic"}


@pytest.mark.native
def test_two_processes_load_concurrently(built):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHECK],
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        out, err = process.communicate(timeout=LOAD_TIMEOUT_S)
        assert process.returncode == 0, err[-3000:]
        assert "IMPLEMENTATION native" in out


@pytest.mark.native
def test_stale_torch_lock_does_not_hang(built):
    """torch's FileBaton lock left by a killed build would make a plain load wait forever."""
    lock = built / "lock"
    lock.touch()
    try:
        assert "IMPLEMENTATION native" in _check(_env())
    finally:
        lock.unlink(missing_ok=True)


@pytest.mark.native
def test_truncated_library_is_rebuilt(built, tmp_path):
    """A build killed while linking leaves a broken .so that ninja considers up to date."""
    copy = tmp_path / "build"
    shutil.copytree(built, copy)  # keeps mtimes, so only a relink is needed
    for library in copy.glob("*.so"):
        library.write_bytes(b"\x7fELF truncated")
    out = _check(_env(SWEETSPOT_BUILD_DIR=str(copy)), timeout=BUILD_TIMEOUT_S)
    assert "IMPLEMENTATION native" in out


@pytest.mark.native
@pytest.mark.slow
def test_killed_build_then_load_works(tmp_path):
    """Kill a cold build mid-way (with its compiler), then load: no hang, a working kernel."""
    directory = tmp_path / "build"
    env = _env(SWEETSPOT_BUILD_DIR=str(directory))
    builder = subprocess.Popen(
        [sys.executable, "-m", "model.sparse"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill ninja and the compiler too
    )
    try:
        deadline = time.monotonic() + 120
        while not (directory / "build.ninja").exists() and time.monotonic() < deadline:
            if builder.poll() is not None:
                pytest.skip("the build finished before it could be killed")
            time.sleep(0.05)
        time.sleep(1.0)  # let the compiler start writing
    finally:
        os.killpg(builder.pid, signal.SIGKILL)
        builder.wait(timeout=30)
    (directory / "lock").touch()  # as a FileBaton left behind would look
    out = _check(env, timeout=BUILD_TIMEOUT_S)
    assert "IMPLEMENTATION native" in out


def test_missing_compiler_falls_back_with_one_warning(tmp_path):
    env = _env(CXX=str(tmp_path / "no-such-compiler"), SWEETSPOT_BUILD_DIR=str(tmp_path / "b"))
    out = _check(env)
    assert "IMPLEMENTATION reference" in out
    assert "WARNINGS 1" in out


def test_disabled_native_uses_the_reference(tmp_path):
    out = _check(_env(SWEETSPOT_SPARSE_NATIVE="0", SWEETSPOT_BUILD_DIR=str(tmp_path / "b")))
    assert "IMPLEMENTATION reference" in out
    assert "WARNINGS 0" in out


def test_the_build_uses_the_interpreters_own_ninja(monkeypatch, tmp_path):
    """A system ninja earlier on PATH (an un-activated shell) hashed the build commands unlike
    the virtualenv's and rebuilt the kernel at every switch; the build puts the interpreter's
    ninja first (and only it: the compilers PATH finds stay), and gives PATH back afterwards."""
    decoy = tmp_path / "bin"
    decoy.mkdir()
    (decoy / "ninja").write_text("#!/bin/sh\nexit 1\n")
    (decoy / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", f"{decoy}{os.pathsep}{os.environ['PATH']}")
    before = os.environ["PATH"]
    own = Path(sys.executable).parent / "ninja"
    with native._interpreter_tools_first():
        if own.exists():
            assert Path(shutil.which("ninja")).resolve() == own.resolve()
            first = Path(os.environ["PATH"].split(os.pathsep)[0])
            assert [p.name for p in first.iterdir()] == ["ninja"]  # nothing else goes first
            assert os.environ["PATH"].endswith(before)
        else:
            assert os.environ["PATH"] == before
    assert os.environ["PATH"] == before
