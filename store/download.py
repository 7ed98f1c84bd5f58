"""``mitoprobe data download``: fetch the public dataset where a network exists."""

from __future__ import annotations

import io
import shutil
import socket
import urllib.request
import zipfile
from pathlib import Path

from . import paths
from .atomic import atomic_write
from .errors import DataError

BENCHMARK_ZIP = "https://github.com/DeepMicroscopy/AMi-Br_Benchmark/archive/refs/heads/main.zip"
AMIBR_CSV_URL = "https://raw.githubusercontent.com/DeepMicroscopy/AMi-Br/main/AMI-BR.csv"
CONNECT_TIMEOUT_S = 5


def _reachable(host: str = "github.com", port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def download_benchmark(dest: Path | None = None) -> Path:
    """Download and unpack the benchmark into ``dest`` (default: the user cache)."""
    dest = Path(dest) if dest else paths.cache_dir()
    target = dest / "AMi-Br_Benchmark"
    if (target / "amibr_train_split.csv").is_file():
        return target
    if not _reachable():
        raise DataError("cannot reach github.com (offline?). Point mitoprobe at a local copy instead: "
                        "`mitoprobe data import /path/to/AMi-Br_Benchmark` or set $MITOPROBE_DATA; "
                        f"the dataset is public at {BENCHMARK_ZIP} and AMI-BR.csv at {AMIBR_CSV_URL}")
    dest.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(BENCHMARK_ZIP, timeout=60) as resp:
        blob = resp.read()

    def unpack(tmp: Path) -> None:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            zf.extractall(tmp)
        inner = next(p for p in tmp.iterdir() if p.is_dir())
        for item in inner.iterdir():
            shutil.move(str(item), tmp / item.name)
        inner.rmdir()

    atomic_write(target, unpack)
    with urllib.request.urlopen(AMIBR_CSV_URL, timeout=60) as resp:
        csv_bytes = resp.read()
    atomic_write(target / "AMI-BR.csv", lambda tmp: tmp.write_bytes(csv_bytes))
    return target
