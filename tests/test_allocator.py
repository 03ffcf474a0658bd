"""model.allocator: measurements keep freed memory, so calls do not page-fault their buffers in,
and the process gets glibc's behaviour (and the memory) back afterwards."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")

# A fresh interpreter each time: the setting is process-wide.
SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from model.allocator import freed_memory_kept

    torch.set_num_threads(1)
    x, w, b = torch.randn(32, 32, 32, 32), torch.randn(32, 32, 3, 3), torch.randn(32)

    def faults(call):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def conv():  # oneDNN: a 4 MiB output and blocked copies of input and output per call
        torch.ops.aten.mkldnn_convolution(x, w, b, [1, 1], [1, 1], [1, 1], 1)

    def big():  # 64 MiB, above the 32 MiB mmap threshold glibc settles at
        torch.empty(1 << 24).fill_(1.0)

    with freed_memory_kept() as state:
        with freed_memory_kept() as inner:  # nested: the outer one restores
            assert inner == state
        for _ in range(2):
            conv()
        steady = sum(faults(conv) for _ in range(6))
    print(state, steady, min(faults(big), faults(big)))
    """
)
PAGES_64 = (64 << 20) // 4096


def _run(keep: str) -> tuple[str, int, int]:
    env = {**os.environ, "SWEETSPOT_KEEP_FREED_MEMORY": keep}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    state, steady, big = out.rsplit(" ", 2)
    return state, int(steady), int(big)


def test_kept_memory_is_reused_without_page_faults_then_returned():
    state, steady, big = _run("1")
    assert state == "glibc, freed memory kept"
    assert steady < 100  # six calls of the convolution after two: nothing faulted in again
    assert big > PAGES_64 // 2  # afterwards a large block is mapped and returned again


def test_the_switch_measures_with_glibc_defaults_which_fault_pages_in_on_every_few_calls():
    state, steady, big = _run("0")
    assert state == "glibc defaults (SWEETSPOT_KEEP_FREED_MEMORY=0)"
    assert steady > 1000  # glibc returns and re-maps the convolution's buffers
    assert big > PAGES_64 // 2
