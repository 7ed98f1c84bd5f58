"""Stable hashes for configs and files (never the salted built-in ``hash``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same config always gives the same text."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), default=str)


def config_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of a dict or dataclass, first ``length`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_version(package_dir: str | Path, tag: str = "") -> str:
    """Installed mitoprobe version + a digest of one package's ``*.py`` sources, its subpackages' included
    (named by their path inside it: a flat package digests as it always did).

    Result rows carry it, so results from changed code are never mixed with older ones.
    """
    from importlib import metadata

    try:
        version = metadata.version("mitoprobe")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    h = hashlib.sha256()
    for f in sorted(Path(package_dir).rglob("*.py")):
        h.update(f.relative_to(package_dir).as_posix().encode())
        h.update(f.read_bytes())
    return f"{version}+{tag}{h.hexdigest()[:8]}"
