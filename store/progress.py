"""One progress-bar factory for every long loop (tqdm; quieter when output is not a terminal)."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, desc: str, unit: str = "it", total: int | None = None,
             enabled: bool = True, **kwargs):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=not enabled,
                mininterval=0.2 if tty else 10.0, dynamic_ncols=True, **kwargs)
