"""Where the paper's settings come from: its scripts' repository, the commit read, and one cited value.

Banerjee, Bertram et al. 2025 (AMi-Br, arXiv 2506.21444) published their training scripts at
``REPO``; every value in this package names the line of the script at ``SCRIPTS_AT`` that sets it, so a
reader (and ``tests/test_finetune_paper.py`` with ``MITOPROBE_PAPER_SCRIPTS``) can check it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REPO = "DeepMicroscopy/AMi-Br_Benchmark"
SCRIPTS_AT = "3acf4da"


@dataclass(frozen=True)
class Setting:
    """A value and where the script sets it (``line`` in ``file``; ``file`` defaults to the entry's script)."""

    value: Any
    line: int | str
    file: str = ""
