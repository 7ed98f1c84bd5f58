"""What ``store check`` finds and ``store repair`` does, as values (a leaf of the integrity modules:
``store/integrity.py``, ``store/patch_scan.py`` and ``store/leftovers.py`` all speak in these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DamagedStoreError

REPAIR = "run `mitoprobe store repair --yes`"


@dataclass(frozen=True)
class Problem:
    """One finding of ``integrity.check``: ``severity`` "error" is damage, "warning" is reported only."""

    path: Path
    what: str
    fix: str
    kind: str = "damage"
    severity: str = "error"

    def __str__(self) -> str:
        head = "warning: " if self.severity == "warning" else ""
        return f"{head}{self.path}: {self.what}. Fix: {self.fix}"

    def refusal(self) -> DamagedStoreError:
        """The error a writer raises on this damage: the line ``store check`` prints for it, and that
        nothing was written (the writers' preflight runs before their first write)."""
        err = DamagedStoreError(f"{self}; nothing was written (`mitoprobe store check` lists every problem)")
        err.path, err.reason = self.path, self.what
        return err


@dataclass
class Action:
    """One step of ``integrity.repair``: ``done`` once taken."""

    path: Path
    action: str  # quarantine, rewrite part, write manifest, write COMPLETE, rebuild LanceDB table, remove, skip
    why: str
    done: bool = False
    target: Path | None = None  # where a quarantined file went

    def __str__(self) -> str:
        where = f" -> {self.target}" if self.target else ""
        return f"{self.action}: {self.path}{where} ({self.why})"
