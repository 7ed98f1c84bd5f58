"""A new-store import's peak memory and wall time as the cohort grows (issue 30), before/after side by side.

Each measurement is one fresh ``python -m mitoprobe data import --manifest M --dataset Cohort --store NEW``
run in the checkout under test (``--code NAME=DIR``, e.g. a ``git worktree`` of the commit before and this
one: its working directory puts that checkout's ``mitoprobe`` first on ``sys.path``), and reads that one
child's peak RSS, wall and CPU seconds from ``/usr/bin/time`` (GNU time). The store is deleted after each run.

The cohorts are the first N rows of ``--manifest`` (a synthetic cohort: ``benchmarks/synthetic_cohort.py``).
A manifest's paths must lie inside its own folder, so the N-row manifests are written into ``--work``
beside hard links to the images they list (no copy; same file system as the source). Before each N the
images are read once, so every checkout meets a warm page cache and the wall times compare the import,
not the disk. The load average is printed beside each run: on a shared machine it is part of the figure.

Example: git worktree add --detach /tmp/before <commit before>
         python -m benchmarks.import_memory --code before=/tmp/before --code after=. \\
             --manifest /tmp/cohort-1e5/manifest.csv --n 10000,50000,100000 --work /tmp/import-bench
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .machine import facts, header

REPO = Path(__file__).resolve().parents[1]
TIME = "/usr/bin/time"  # GNU time: the child's own peak RSS (``measure`` says why not os.wait4)


def sub_manifest(source: Path, work: Path, n: int) -> Path:
    """``work/cohort/manifest-<n>.csv``: the first ``n`` rows of ``source``, its images hard-linked beside it."""
    out_dir = work / "cohort"
    out = out_dir / f"manifest-{n}.csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(source, newline="", encoding="utf-8") as fh, open(out.with_suffix(".tmp"), "w", newline="",
                                                                  encoding="utf-8") as dst:
        reader, writer = csv.reader(fh), csv.writer(dst)
        head = next(reader)
        writer.writerow(head)
        at = head.index("path")
        for i, row in enumerate(reader):
            if i == n:
                break
            link = out_dir / row[at]
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(source.parent / row[at], link)
            writer.writerow(row)
    os.replace(out.with_suffix(".tmp"), out)
    return out


def warm(manifest: Path) -> float:
    """Read every image the manifest lists once (the page cache then holds them); seconds taken."""
    t0 = time.perf_counter()
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            (manifest.parent / row["path"]).read_bytes()
    return time.perf_counter() - t0


def measure(code: Path, manifest: Path, store: Path, timeout: float) -> dict:
    """One import in a fresh interpreter in ``code``: its peak RSS, wall and CPU seconds as ``/usr/bin/time``
    reports them, the load average before and after.

    Why ``/usr/bin/time`` and not ``os.wait4`` here: Linux counts in a child's ``ru_maxrss`` the resident
    size of the process it was forked from (``exec`` keeps the old image's high-water mark), and this
    script holds torch (``machine.facts``), ~0.5 GB; ``time`` is a small process, so its child's figure is
    the import's own."""
    shutil.rmtree(store, ignore_errors=True)
    load = os.getloadavg()
    timing = store.with_name(store.name + ".time")
    cmd = [TIME, "-f", "%M %e %U %S", "-o", str(timing), sys.executable, "-m", "mitoprobe", "data", "import",
           "--manifest", str(manifest), "--dataset", "Cohort", "--store", str(store)]
    try:
        p = subprocess.run(cmd, cwd=code, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(store, ignore_errors=True)
    if p.returncode:
        return {"error": f"exit {p.returncode}: " + " | ".join((p.stdout + p.stderr).strip().splitlines()[-3:])}
    kib, wall, user, system = timing.read_text().split()[-4:]
    return {"peak_rss_mib": round(int(kib) / 1024, 1), "wall_s": float(wall), "cpu_s": round(float(user) + float(system), 1),
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()]}


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--code {item!r}: NAME=DIR")
        out[name] = Path(value).resolve()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", action="append", default=[], help="NAME=DIR: a checkout to measure (repeatable)")
    ap.add_argument("--manifest", type=Path, required=True, help="the cohort's manifest CSV (N rows are taken)")
    ap.add_argument("--n", default="10000,50000", help="comma list of cohort sizes (rows of the manifest)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the N-row cohorts and the stores")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, help="write the rows and the machine's facts here")
    a = ap.parse_args(argv)
    if not Path(TIME).is_file():
        raise SystemExit(f"{TIME} not found: install GNU time (apt-get install time)")
    codes = _named(a.code or [f"this={REPO}"])
    sizes = [int(x) for x in a.n.split(",") if x]
    print(header(), flush=True)
    print("each run: a fresh `python -m mitoprobe data import --manifest ... --dataset Cohort --store NEW`, "
          "its peak RSS, wall and CPU seconds from /usr/bin/time, images warm in the page cache", flush=True)
    print("\n| patches | code | peak RSS MiB | wall s | CPU s | load avg before (1/5/15 min) |\n"
          "|---:|---|---:|---:|---:|---|", flush=True)
    rows = []
    for n in sizes:
        manifest = sub_manifest(a.manifest, a.work, n)
        warm(manifest)
        for name, code in codes.items():
            r = measure(code, manifest, a.work / f"store-{name}-{n}", a.timeout)
            rows.append(dict(n=n, code=name, **r))
            cells = [r.get("peak_rss_mib", ""), r.get("wall_s", ""), r.get("cpu_s", ""),
                     " / ".join(map(str, r.get("load_before", [])))]
            print(f"| {n} | {name} | " + " | ".join(map(str, cells)) + (f" ({r['error']})" if "error" in r else "")
                  + " |", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"machine": facts(), "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
