"""Cost curves of today's commands as the store grows (issue 22's baseline): wall time and peak RSS.

For each scale s of ``--scales`` (x1 = 6,573 patches, the size of AMi-Br) this builds, under
``--workdir`` (default /tmp/cost-curves), a synthetic cohort of s x 6,573 ``split=train`` patches
(``benchmarks/synthetic_cohort.py``) and a small labelled ``split=test`` cohort (``--added``, default
1,000), then runs each command as a subprocess on a fresh store and measures it:

1. ``data import --manifest ... --dataset Cohort`` into a new store;
2. ``data import --manifest ... --dataset Added`` into that (now large) store, with the files and
   bytes changed under the store (does adding a small cohort cost the whole store?);
3. ``embed --model handcrafted`` (every patch); above ``--embed-max`` patches it is not run: its time
   is extrapolated linearly from the largest measured scale's patches/s (said in the notes), and the
   commands that need the vectors are marked "not run";
4. ``probe --model handcrafted --head lgbm --train-on Cohort``;
5. ``predict --model handcrafted --head lgbm --dataset Added``;
6. ``search --model handcrafted --dataset Added --reference Cohort --k 10`` (seconds per query =
   wall / queries, process start included: the ``startup`` row is ``mitoprobe --version``);
7. ``store check``.

Wall time and peak RSS come from ``/usr/bin/time -v`` when present (peak RSS = the largest single
process of the command's tree, e.g. the embed's DataLoader worker or the main process, not their sum),
else from ``resource.getrusage(RUSAGE_CHILDREN)``. A command over ``--timeout`` seconds is killed (its
whole process group) and recorded as "timed out". Prints a markdown table and writes JSON (``--json``).

Example: python benchmarks/cost_curves.py --scales 1,10 --json /tmp/cost_curves.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_cohort import DEFAULT_SRC, generate  # noqa: E402

BASE = 6573  # x1 = AMi-Br's patch count
REPO = Path(__file__).resolve().parents[1]
MITOPROBE = str(Path(sys.executable).parent / "mitoprobe")
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def cpu_facts() -> dict:
    facts = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        facts["torch_threads"] = torch.get_num_threads()
    except Exception as e:  # noqa: BLE001 - a fact we could not read is said so
        facts["cpu_capability"] = f"unknown ({e})"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
        facts["mem_total_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return facts


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file under root."""
    out = {}
    if root.exists():
        for p in root.rglob("*"):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def changed(before: dict, after: dict) -> dict:
    ch = [k for k, v in after.items() if before.get(k) != v]
    return {"files_changed": len(ch), "bytes_written": sum(after[k][0] for k in ch),
            "files_new": sum(k not in before for k in ch), "store_bytes": sum(v[0] for v in after.values())}


def _parse_time_v(text: str) -> tuple[float | None, float | None]:
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    secs = None
    if wall:
        secs = 0.0
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    return (int(rss.group(1)) / 1024 if rss else None), secs


def measure(args: list[str], timeout: float, log: Path) -> dict:
    """Run one command; wall s, peak RSS MiB, rc, timed_out. stdout/stderr go to log."""
    cmd = ([TIME, "-v"] if TIME else []) + args
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    timed_out = False
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    rss = None
    if TIME:
        rss, _ = _parse_time_v(text[-4000:])
    if rss is None:  # no /usr/bin/time: RUSAGE_CHILDREN's maxrss (only meaningful if it grew)
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss = after / 1024 if after > before else None
    tail = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")][-3:]
    return {"wall_s": round(wall, 2), "peak_rss_mib": None if rss is None else round(rss, 1), "rc": rc,
            "timed_out": timed_out, "log": str(log), "tail": tail}


def cohort(dirpath: Path, n: int, seed: int, split: str, prefix: str, src: Path) -> tuple[Path, float]:
    """A synthetic cohort (re-used when it is already there with n rows); (manifest, seconds to make it)."""
    m = dirpath / "manifest.csv"
    if m.exists() and sum(1 for _ in open(m)) - 1 == n:
        return m, 0.0
    shutil.rmtree(dirpath, ignore_errors=True)
    t0 = time.perf_counter()
    generate(n, dirpath, seed=seed, src=src, split=split, slide_prefix=prefix, progress=sys.stderr.isatty())
    return m, time.perf_counter() - t0


def run_scale(scale: float, a, rows: list[dict], embed_rate: dict) -> None:
    n = int(round(scale * BASE))
    base = a.workdir / f"x{scale:g}"
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    print(f"\n== x{scale:g}: {n:,} + {a.added:,} patches under {base}", flush=True)
    big, t_big = cohort(base / "cohort", n, a.seed, "train", "SYN", a.src)
    small, t_small = cohort(base / "added", a.added, a.seed + 1000, "test", "ADD", a.src)
    print(f"   cohorts ready (generated in {t_big:.0f} s + {t_small:.0f} s)", flush=True)
    store = base / "store"
    shutil.rmtree(store, ignore_errors=True)
    total = n + a.added
    S = ["--store", str(store)]

    def row(command: str, patches: int, res: dict | None, notes: str = "") -> dict:
        r = {"command": command, "scale": f"x{scale:g}", "patches": patches, "notes": notes}
        if res is None:
            r.update(wall_s=None, peak_rss_mib=None, status="not run")
        else:
            r.update(res)
            r["status"] = "timed out" if res["timed_out"] else ("ok" if res["rc"] == 0 else f"failed (rc {res['rc']})")
        rows.append(r)
        w = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f} s"
        print(f"   {command:<28} {w:>10}  {r.get('peak_rss_mib') or '-'} MiB  {r['status']}  {notes}", flush=True)
        return r

    def go(name: str, args: list[str], patches: int, notes: str = "", store_delta: bool = False) -> dict:
        before = snapshot(store) if store_delta else None
        res = measure([MITOPROBE, *args], a.timeout, logs / f"{name.replace(' ', '_')}.log")
        if store_delta:
            d = changed(before, snapshot(store))
            res.update(d)
            notes = (notes + "; " if notes else "") + (
                f"{d['files_changed']} files changed ({d['files_new']} new), "
                f"{d['bytes_written'] / 2**20:.1f} MiB written of a {d['store_bytes'] / 2**20:.1f} MiB store")
        return row(name, patches, res, notes)

    row("startup (--version)", 0, measure([MITOPROBE, "--version"], a.timeout, logs / "startup.log"))
    imp = go("data import (new store)", ["data", "import", "--manifest", str(big), "--dataset", "Cohort", *S], n,
             store_delta=True)
    go("data import (add cohort)", ["data", "import", "--manifest", str(small), "--dataset", "Added", *S],
       a.added, f"into a store of {n:,}", store_delta=True)
    if imp["status"] != "ok":
        return
    embedded = False
    if total <= a.embed_max:
        r = go("embed handcrafted", ["embed", "--model", "handcrafted", *S], total)
        if r["status"] == "ok":
            embedded = True
            embed_rate.update(rate=total / r["wall_s"], scale=f"x{scale:g}")
            r["notes"] = f"{total / r['wall_s']:.0f} patches/s"
    else:
        note = (f"EXTRAPOLATED, not run (> --embed-max {a.embed_max:,}): ~{total / embed_rate['rate']:.0f} s at "
                f"{embed_rate['rate']:.0f} patches/s measured at {embed_rate['scale']}") if embed_rate else \
            f"not run (> --embed-max {a.embed_max:,}; no smaller scale measured)"
        r = row("embed handcrafted", total, None, note)
        r["extrapolated_wall_s"] = round(total / embed_rate["rate"], 1) if embed_rate else None
    if not embedded:
        for c in ("probe lgbm", "predict", "search k=10", "store check"):
            if c == "store check":
                go(c, ["store", "check", *S], total, "without embeddings")
            else:
                row(c, total, None, "not run: needs the embeddings")
        return
    go("probe lgbm", ["probe", "--model", "handcrafted", "--head", "lgbm", "--train-on", "Cohort", *S], n,
       f"train on {n:,} (5 slide-grouped folds), score Added")
    go("predict", ["predict", "--model", "handcrafted", "--head", "lgbm", "--dataset", "Added",
                   "--out", str(base / "preds.csv"), *S], a.added, "refits the 5 fold models")
    r = go("search k=10", ["search", "--model", "handcrafted", "--dataset", "Added", "--reference", "Cohort",
                           "--k", "10", "--out", str(base / "neighbours.csv"), *S], a.added)
    if r["wall_s"]:
        r["s_per_query"] = r["wall_s"] / a.added
        r["notes"] = f"{a.added:,} queries over {n:,}: {1000 * r['wall_s'] / a.added:.1f} ms/query incl. startup"
    go("store check", ["store", "check", *S], total)


def table(rows: list[dict]) -> str:
    out = ["| command | scale | patches | wall s | peak RSS MiB | notes |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        wall = "—" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        if r.get("extrapolated_wall_s"):
            wall = f"~{r['extrapolated_wall_s']:.0f} (extrapolated)"
        rss = "—" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}"
        notes = r["notes"] if r["status"] == "ok" else f"**{r['status']}**" + (f"; {r['notes']}" if r["notes"] else "")
        out.append(f"| {r['command']} | {r['scale']} | {r['patches']:,} | {wall} | {rss} | {notes} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10", help="comma list of multiples of 6,573 patches")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cost-curves"))
    ap.add_argument("--json", type=Path, help="write the rows and machine facts here")
    ap.add_argument("--timeout", type=float, default=900, help="per-command limit, seconds")
    ap.add_argument("--added", type=int, default=1000, help="patches of the cohort added to the large store")
    ap.add_argument("--embed-max", type=int, default=100_000,
                    help="embed only stores up to this many patches; larger: extrapolated (~240 patches/s here)")
    ap.add_argument("--merge", type=Path, help="a JSON of an earlier run (other scales): its rows come first in the table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    a = ap.parse_args(argv)
    scales = [float(s) for s in a.scales.split(",") if s.strip()]
    facts = cpu_facts()
    facts["load_start"] = os.getloadavg()
    facts["time_tool"] = TIME or "resource.getrusage(RUSAGE_CHILDREN)"
    print(f"CPU: {facts.get('cpu_model', '?')}, {facts['cores']} cores, torch {facts.get('torch', '?')} "
          f"capability {facts['cpu_capability']}; load average at start {facts['load_start']}", flush=True)
    rows: list[dict] = []
    embed_rate: dict = {}
    if a.merge:
        prev = json.loads(a.merge.read_text())
        rows += prev["rows"]
        facts["merged"] = {"file": str(a.merge), "header": prev.get("header")}
        for r in prev["rows"]:  # the largest earlier embed measured gives the extrapolation rate
            if r["command"] == "embed handcrafted" and r.get("status") == "ok" and r.get("wall_s"):
                embed_rate.update(rate=r["patches"] / r["wall_s"], scale=r["scale"])
    t0 = time.perf_counter()
    for s in sorted(scales):
        run_scale(s, a, rows, embed_rate)
        if a.json:  # partial results survive an interrupted run
            a.json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1, default=str))
    facts["load_end"] = os.getloadavg()
    facts["total_s"] = round(time.perf_counter() - t0, 1)
    header = (f"CPU: {facts.get('cpu_model', '?')}; {facts['cores']} cores; torch {facts.get('torch', '?')}, "
              f"cpu capability {facts['cpu_capability']}; load average start "
              f"{'/'.join(f'{x:.2f}' for x in facts['load_start'])}, end "
              f"{'/'.join(f'{x:.2f}' for x in facts['load_end'])}; measured with {facts['time_tool']}; "
              f"total {facts['total_s']:.0f} s")
    if a.merge and facts["merged"]["header"]:
        header += f"\n(rows of {a.merge}: {facts['merged']['header']})"
    print("\n" + header + "\n\n" + table(rows))
    if a.json:
        a.json.write_text(json.dumps({"facts": facts, "header": header, "rows": rows}, indent=1, default=str))
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
