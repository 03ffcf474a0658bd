"""model.allocator: measurements keep freed memory, so calls do not page-fault their buffers in."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

# A fresh interpreter each time: the setting is process-wide and lasts for the process.
SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from model.allocator import keep_freed_memory
    state = keep_freed_memory()
    assert keep_freed_memory() == state  # idempotent
    torch.empty(1 << 24).fill_(1.0)  # 64 MiB, freed at once (glibc: mmap, then munmap)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(1 << 24).fill_(1.0)  # the same size again, as a layer's next call
    print(state, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _second_call(keep: str) -> tuple[str, int]:
    env = {**os.environ, "SWEETSPOT_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    state, faults = out.rsplit(" ", 1)
    return state, int(faults)


def test_kept_memory_is_reused_without_page_faults():
    state, faults = _second_call("1")
    assert state == "glibc, freed memory kept"
    pages = (64 << 20) // 4096
    assert faults < pages // 20  # reused: (almost) nothing faulted in again


def test_glibc_defaults_fault_every_page_in_again_and_the_switch_restores_them():
    state, faults = _second_call("0")
    assert state == "glibc defaults (SWEETSPOT_KEEP_FREED_MEMORY=0)"
    pages = (64 << 20) // 4096
    assert faults > pages // 2  # 64 MiB is above glibc's mmap threshold: faulted in again
