"""One progress bar for the command's long jobs (``tiles``; later ``convert`` and ``serve``):
tqdm on stderr when stderr is a terminal and the user did not ask for quiet, else nothing."""

from __future__ import annotations

import sys
from typing import Any


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(total: int, unit: str, enabled: bool | None = None) -> Any:
    """A context manager with ``update(n)``: a tqdm bar (done / total, rate, ETA) on stderr, or a
    silent stand-in. ``enabled`` None: only when stderr is a terminal (never in pipes and logs)."""
    if not (enabled if enabled is not None else sys.stderr.isatty()):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr)
