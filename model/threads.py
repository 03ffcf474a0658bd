"""``torch_threads``: run a block with a number of torch intra-op threads, then put back the
count the process had. ``torch.set_num_threads`` is process-wide, so a job that sets it leaks
it into whatever runs next in the process (a service worker's next job, a calibration)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def torch_threads(threads: int | None = None) -> Iterator[None]:
    """``threads`` torch threads inside (None: unchanged), the previous count after, also when
    something inside sets its own."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def restoring_threads(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run under :func:`torch_threads` (whatever it sets is undone after)."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with torch_threads():
            return function(*args, **kwargs)

    return run
