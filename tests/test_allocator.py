"""model.allocator: measurements keep freed memory, so calls do not page-fault their buffers in,
and the process gets glibc's behaviour (and the memory) back afterwards."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from model import allocator

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
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_TUNING}
    env["SWEETSPOT_KEEP_FREED_MEMORY"] = keep
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    state, steady, big = out.rsplit(" ", 2)
    return state, int(steady), int(big)


def test_kept_memory_is_reused_without_page_faults_then_returned():
    state, steady, big = _run("1")
    if state.startswith("malloc is not glibc's"):
        pytest.skip(state)
    assert state in (allocator.KEPT, allocator.KEPT_BELOW_32_MIB)
    assert steady < 100  # six calls of the convolution after two: nothing faulted in again
    assert big > PAGES_64 // 2  # afterwards a large block is mapped and returned again


def test_the_switch_measures_with_glibc_as_it_is_which_faults_pages_in_every_few_calls():
    state, steady, big = _run("0")
    assert state == "glibc as it is (SWEETSPOT_KEEP_FREED_MEMORY=0)"
    # What the module is for (glibc 2.36, torch 2.13: 15,000-17,000 faults over these calls)
    assert steady > 100 and big > PAGES_64 // 2


class FakeLibc:
    """Records mallopt/malloc_trim calls; refuses mmap thresholds above ``mmap_limit``."""

    def __init__(self, mmap_limit: int = allocator._MAX_INT, trim_ok: bool = True):
        self.calls: list[tuple] = []
        self.mmap_limit, self.trim_ok = mmap_limit, trim_ok

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append(("mallopt", parameter, value))
        if parameter == allocator.M_MMAP_THRESHOLD:
            return int(value <= self.mmap_limit)
        return int(self.trim_ok)

    def trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", lambda: (libc.mallopt, libc.trim))
    for name in (*allocator.USER_TUNING, "GLIBC_TUNABLES", allocator.ENV):
        monkeypatch.delenv(name, raising=False)
    return libc


KEEP = [("mallopt", allocator.M_TRIM_THRESHOLD, allocator._MAX_INT),
        ("mallopt", allocator.M_MMAP_THRESHOLD, allocator._MAX_INT)]  # fmt: skip
RESTORE = [("mallopt", allocator.M_MMAP_THRESHOLD, 32 << 20),
           ("mallopt", allocator.M_TRIM_THRESHOLD, 64 << 20), ("trim", 0)]  # fmt: skip


def test_nested_uses_set_once_and_restore_once_at_the_outermost_exit(fake):
    with allocator.freed_memory_kept() as outer:
        with allocator.freed_memory_kept() as inner:
            assert outer == inner == allocator.KEPT
        assert fake.calls == KEEP  # the inner exit restored nothing
    assert fake.calls == KEEP + RESTORE


def test_an_exception_inside_still_restores(fake):
    with pytest.raises(RuntimeError), allocator.freed_memory_kept():
        raise RuntimeError("boom")
    assert fake.calls == KEEP + RESTORE


def test_overlapping_uses_from_two_threads_restore_after_the_last(fake):
    import threading

    entered, release = threading.Event(), threading.Event()

    def other():
        with allocator.freed_memory_kept():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(5)
    with allocator.freed_memory_kept():
        pass
    assert fake.calls == KEEP  # the other thread is still measuring
    release.set()
    thread.join(5)
    assert fake.calls == KEEP + RESTORE


def test_older_glibc_keeps_blocks_below_32_mib(fake):
    fake.mmap_limit = 32 << 20  # HEAP_MAX_SIZE / 2: glibc before 2.35 refuses more
    with allocator.freed_memory_kept() as state:
        assert state == allocator.KEPT_BELOW_32_MIB
    assert ("mallopt", allocator.M_MMAP_THRESHOLD, 32 << 20) in fake.calls[:3]
    assert fake.calls[-1] == ("trim", 0)


def test_a_refused_mallopt_changes_nothing_and_says_so(fake):
    fake.trim_ok = False
    with allocator.freed_memory_kept() as state:
        assert "refused" in state
    assert fake.calls == [("mallopt", allocator.M_TRIM_THRESHOLD, allocator._MAX_INT)]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [(allocator.ENV, "0", "SWEETSPOT_KEEP_FREED_MEMORY=0"),
     ("MALLOC_TRIM_THRESHOLD_", "1000000", "environment"),
     ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536", "environment")],
)  # fmt: skip
def test_the_switch_and_the_users_own_tuning_leave_malloc_alone(fake, monkeypatch, name, value,
                                                                says):  # fmt: skip
    monkeypatch.setenv(name, value)
    with allocator.freed_memory_kept() as state:
        assert says in state
    assert fake.calls == []
