"""The embedding job on a large store (issue 22): does its memory stay flat while it streams the patches?

Runs ``mitoprobe embed --engine ENGINE --model MODEL`` on ``--store`` for at most ``--seconds``, then
stops it (SIGINT, as Ctrl-C would: every committed chunk stays, and the next run resumes with the
missing keys). Every second it samples the resident memory of the job's own process, of its child
processes (the local engine's DataLoader workers) and of every Ray process (raylet, workers, actors:
``psutil``, by command line; ``--engine ray`` starts a local Ray instance), and the rows committed.
Prints one line per 30 s and a summary: rows committed, patches/s, and the peak RSS of the job's
process, of its largest child or Ray process, and of their sum. A trace, not a peak: it shows whether
memory grows while the patches stream (it must not), apart from the end of a job (LanceDB table and
index of the vectors), which a stopped run does not reach.

Machine facts (``benchmarks.machine``) head the output and go into the summary.

Example: python -m benchmarks.embed_memory_trace --store /tmp/cost-curves/x30/store --model morphology \
    --engine ray --seconds 300
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

from .machine import facts, header

REPO = Path(__file__).resolve().parents[1]
MITOPROBE = str(Path(sys.executable).parent / "mitoprobe")


def committed_rows(store: Path) -> int:
    """Rows in every embedding set's committed parts (footers only)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in (store / "embeddings").glob("*/part-*.parquet"))


def helper_processes(job: psutil.Process, engine: str) -> list[psutil.Process]:
    """The job's child processes (local engine) or every Ray process on this machine (ray)."""
    if engine == "local":
        try:
            return job.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "ray" in cmd and ("raylet" in cmd or "default_worker" in cmd or "gcs_server" in cmd or "ray::" in cmd):
            out.append(p)
    return out


def rss_mib(p: psutil.Process) -> float:
    try:
        return p.memory_info().rss / 2**20
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--model", default="morphology", help="a recipe not yet embedded in the store")
    ap.add_argument("--engine", choices=["local", "ray"], default="ray")
    ap.add_argument("--seconds", type=float, default=300, help="stop the job after this long")
    ap.add_argument("--json", type=Path, help="write the samples and the summary here")
    a = ap.parse_args(argv)
    machine = facts()  # its load average is the one at the start
    rows0 = committed_rows(a.store)
    cmd = [MITOPROBE, "embed", "--model", a.model, "--engine", a.engine, "--store", str(a.store)]
    print(header(machine), flush=True)
    print(f"$ {' '.join(cmd)}  (stopped after {a.seconds:.0f} s)", flush=True)
    log = open(a.store.parent / f"embed_{a.engine}_{a.model}.log", "w")
    job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    driver = psutil.Process(job.pid)
    t0 = time.monotonic()
    samples = []
    while job.poll() is None and time.monotonic() - t0 < a.seconds:
        helpers = [rss_mib(p) for p in helper_processes(driver, a.engine)]
        s = dict(t=round(time.monotonic() - t0, 1), driver_mib=rss_mib(driver), helper_max_mib=max(helpers, default=0.0),
                 helper_sum_mib=sum(helpers), helpers=len(helpers), rows=committed_rows(a.store) - rows0)
        samples.append(s)
        if len(samples) % 30 == 0:
            print(f"  {s['t']:6.0f} s  rows {s['rows']:>7,}  job {s['driver_mib']:6.0f} MiB  largest helper "
                  f"{s['helper_max_mib']:6.0f} MiB  all helpers {s['helper_sum_mib']:6.0f} MiB ({s['helpers']} procs)",
                  flush=True)
        time.sleep(1.0)
    finished = job.poll() is not None
    if not finished:
        job.send_signal(signal.SIGINT)
        try:
            job.wait(timeout=60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait()
    wall = time.monotonic() - t0
    rows = committed_rows(a.store) - rows0
    summary = dict(model=a.model, engine=a.engine, finished=finished, wall_s=round(wall, 1), rows_committed=rows,
                   rows_per_s=round(rows / wall, 1) if wall else None,
                   job_peak_mib=round(max(s["driver_mib"] for s in samples), 1) if samples else None,
                   helper_peak_mib=round(max(s["helper_max_mib"] for s in samples), 1) if samples else None,
                   helpers_sum_peak_mib=round(max(s["helper_sum_mib"] for s in samples), 1) if samples else None,
                   load_end=os.getloadavg(), machine=machine)
    print(json.dumps(summary, default=str), flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(summary=summary, samples=samples), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
