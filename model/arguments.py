"""argparse value types shared by the commands (``bench kernel``, ``bench train``, ``serve
--port``): a bad value is refused by argparse with the allowed range (usage on stderr, exit
2), before anything is built or timed. Imports nothing but the standard library."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def integer(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[least, most]``, else a message with the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least or (most is not None and value > most):
            allowed = f">= {least}" if most is None else f"between {least} and {most}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse
