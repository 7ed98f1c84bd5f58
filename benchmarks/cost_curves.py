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

8. Dashboard page loads (skip with ``--no-dashboard``): for each page of ``dashboard/navigation.py``
   (leaderboard, compare, similarity, patch, embedding_map, errors), one fresh subprocess
   (``python -m benchmarks.cost_curves --_page NAME --store PATH``, which prints one JSON line) opens the app headless
   with Streamlit's ``AppTest`` on that page (store from ``$MITOPROBE_STORE``, as ``mitoprobe
   dashboard`` passes it) and times ``.run()`` twice: ``dashboard <page> (first)`` is the first run in
   a fresh process (cold imports and caches), ``dashboard <page> (warm)`` the second run of the same
   page in the same process (Streamlit's caches warm). Peak RSS is the helper's own
   ``getrusage(RUSAGE_SELF).ru_maxrss`` after each run (so the warm row's is the process's peak over
   both runs). ``patches`` = the store's size. An exception the app raised (``at.exception``) is not a
   crash: the row's status is "app exception" with the message in the notes. The page is opened
   directly (AppTest's requested page hash set to the page's ``url_path`` hash, as ``st.Page`` hashes
   it: private API); if that lands elsewhere the helper falls back to the tests' way (run the default
   page, then ``switch_page``) and says so in the notes.

Plot (``--plot PATH``): ``benchmarks/cost_plot.py`` (altair): wall s and peak RSS MiB vs patches,
log-log, one line per command; ``.svg``/``.png`` need ``vl_convert`` (not installed here), else the
chart is written as HTML beside the path. Without running anything, ``--from-json A.json [B.json ...]``
prints the table of stored rows (and ``--plot``s them); ``--merge A.json [B.json ...]`` puts stored rows
before the new run's.

The machine's line (``benchmarks.machine.header``, with the load average at the end, the time tool and
the total) heads the table and is stored in the JSON with ``machine.facts()``.

Example: python -m benchmarks.cost_curves --scales 1,10 --json /tmp/cost_curves.json --plot /tmp/cc.svg
         python -m benchmarks.cost_curves --from-json /tmp/cost_curves.json --plot /tmp/cc.html
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import cost_plot, machine  # both stdlib only at import (altair when plotting, torch for the facts)

BASE = 6573  # x1 = AMi-Br's patch count
REPO = Path(__file__).resolve().parents[1]
MITOPROBE = str(Path(sys.executable).parent / "mitoprobe")
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
DEFAULT_SRC = REPO / ".." / "shared" / "datasets" / "AMi-Br_Benchmark" / "AMi-Br"  # = synthetic_cohort's
PAGE_MARK = "COST_CURVES_PAGE "  # the --_page helper's JSON line starts with this


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
    tail = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")
            and not ln.startswith("Command exited with non-zero status")][-3:]  # /usr/bin/time's lines out
    return {"wall_s": round(wall, 2), "peak_rss_mib": None if rss is None else round(rss, 1), "rc": rc,
            "timed_out": timed_out, "log": str(log), "tail": tail}


def cohort(dirpath: Path, n: int, seed: int, split: str, prefix: str, src: Path) -> tuple[Path, float]:
    """A synthetic cohort (re-used when it is already there with n rows); (manifest, seconds to make it)."""
    from .synthetic_cohort import generate  # not at import: the --_page helper stays lean (cold loads)

    m = dirpath / "manifest.csv"
    if m.exists() and sum(1 for _ in open(m)) - 1 == n:
        return m, 0.0
    shutil.rmtree(dirpath, ignore_errors=True)
    t0 = time.perf_counter()
    generate(n, dirpath, seed=seed, src=src, split=split, slide_prefix=prefix, progress=sys.stderr.isatty())
    return m, time.perf_counter() - t0


# -- dashboard page loads ------------------------------------------------------------------------
def dashboard_pages() -> list[str]:
    """The dashboard's page names (script stems of ``dashboard/navigation.py``'s pages, default first)."""
    from mitoprobe.dashboard.navigation import PAGES  # no streamlit import

    return [Path(p.script).stem for p in PAGES]


def page_load(page: str, store: Path, timeout: float) -> dict:
    """The ``--_page`` helper (meant to run in a fresh process): open ``page`` of the app headless for the
    store at ``store`` and time two ``.run()``s; {first_s, warm_s, first_rss_mib, warm_rss_mib, title,
    exceptions, how}. Never raises for the app's own errors: they are returned in ``exceptions``/``error``."""
    os.environ["MITOPROBE_STORE"] = str(Path(store).resolve())
    from mitoprobe.dashboard import APP
    from mitoprobe.dashboard.navigation import PAGES
    from streamlit.testing.v1 import AppTest

    def rss() -> float:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux

    def excs(at) -> list[str]:
        try:
            return [str(e.value)[:300] for e in at.exception]
        except Exception as e:  # noqa: BLE001 - a tree we cannot read is said so
            return [f"could not read at.exception: {e!r}"]

    def titles(at) -> list[str]:
        try:
            return [t.value for t in at.title]
        except Exception:  # noqa: BLE001
            return []

    spec = {Path(p.script).stem: p for p in PAGES}.get(page)
    if spec is None:
        return {"page": page, "error": f"no such page (known: {', '.join(Path(p.script).stem for p in PAGES)})"}
    out: dict = {"page": page, "title_expected": spec.title, "rss_before_mib": rss()}
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    how = "direct"
    try:
        if spec.key:  # open the page itself on the first run: st.Page hashes its url_path (private API)
            from streamlit.util import calc_hash

            at._page_hash = calc_hash(spec.key)
        t0 = time.perf_counter()
        at.run()
        first = time.perf_counter() - t0
        if spec.key and titles(at) != [spec.title] and not excs(at):  # landed elsewhere: the tests' way
            how = "default page, then switch_page (first = both runs)"
            at.switch_page(f"app_pages/{spec.script}")
            t0 = time.perf_counter()
            at.run()
            first += time.perf_counter() - t0
        out.update(first_s=round(first, 3), first_rss_mib=rss(), first_exceptions=excs(at), title=titles(at))
        t0 = time.perf_counter()
        at.run()
        out.update(warm_s=round(time.perf_counter() - t0, 3), warm_rss_mib=rss(), warm_exceptions=excs(at),
                   warm_title=titles(at))
    except Exception as e:  # noqa: BLE001 - a run that raised (e.g. timed out) is reported, not a crash
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["how"] = how
    return out


def dashboard_rows(store: Path, total: int, a, logs: Path, row, status_note: str = "") -> None:
    """``dashboard <page> (first|warm)`` rows: one fresh ``--_page`` subprocess per page; ``row`` is
    run_scale's row writer."""
    try:
        pages = dashboard_pages()
    except Exception as e:  # noqa: BLE001
        row("dashboard (all pages)", total, None, f"not run: cannot list the pages ({e!r})")
        return
    for page in pages:
        res = measure([sys.executable, "-m", __spec__.name, "--_page", page, "--store", str(store),  # this module
                       "--timeout", str(a.timeout)], a.timeout, logs / f"dashboard_{page}.log")  # (cwd: the repo)
        text = Path(res["log"]).read_text(errors="replace")
        got = [ln[len(PAGE_MARK):] for ln in text.splitlines() if ln.startswith(PAGE_MARK)]
        try:
            info = json.loads(got[-1]) if got else {}
        except ValueError:
            info = {}
        proc = f"helper process {res['wall_s']:.1f} s" + (
            f", {res['peak_rss_mib']:.0f} MiB" if res.get("peak_rss_mib") else "")
        base = {"rc": res["rc"], "timed_out": res["timed_out"], "log": res["log"], "tail": res["tail"],
                "page": page, "process_wall_s": res["wall_s"], "process_peak_rss_mib": res["peak_rss_mib"]}
        for kind in ("first", "warm"):
            notes = [status_note] if status_note else []
            status = None
            if f"{kind}_s" in info:
                measured = dict(base, wall_s=info[f"{kind}_s"], peak_rss_mib=info[f"{kind}_rss_mib"])
                ex = info.get(f"{kind}_exceptions") or []
                want, seen = info.get("title_expected"), info.get("title" if kind == "first" else "warm_title")
                if ex:
                    status = "app exception"
                    notes.append("app exception: " + " | ".join(ex))
                elif want and seen != [want]:
                    status = "wrong page"
                    notes.append(f"titles {seen}, expected [{want!r}]")
                if kind == "first" and info.get("how", "direct") != "direct":
                    notes.append(info["how"])
            else:  # the helper died or timed out, or a run raised before this one finished
                measured = dict(base, wall_s=None, peak_rss_mib=None)
                if not res["timed_out"]:
                    status = "failed"
                notes.append(info.get("error") or (f"helper killed after --timeout {a.timeout:g} s" if res["timed_out"]
                                                   else f"no result (rc {res['rc']}): {' / '.join(res['tail'])[:300]}"))
            r = row(f"dashboard {page} ({kind})", total, measured, "; ".join(notes + [proc]), status)
            r["exceptions"] = info.get(f"{kind}_exceptions") or []


def _row_writer(scale: float, rows: list[dict]):
    """run_scale's ``row(command, patches, res, notes, status)``: appends one row to ``rows`` and prints it."""

    def row(command: str, patches: int, res: dict | None, notes: str = "", status: str | None = None) -> dict:
        r = {"command": command, "scale": f"x{scale:g}", "patches": patches, "notes": notes}
        if res is None:
            r.update(wall_s=None, peak_rss_mib=None, status="not run")
        else:
            r.update(res)
            r["status"] = "timed out" if res["timed_out"] else ("ok" if res["rc"] == 0 else f"failed (rc {res['rc']})")
        if status and r["status"] in ("ok", "not run"):  # a cause found by the caller (e.g. an app exception)
            r["status"] = status
        if r["status"].startswith("failed (rc") and r.get("tail"):  # say why: the log's last line
            r["notes"] = (notes + "; " if notes else "") + r["tail"][-1].strip()[:200]
        rows.append(r)
        w = "-" if r["wall_s"] is None else f"{r['wall_s']:.1f} s"
        print(f"   {command:<28} {w:>10}  {r.get('peak_rss_mib') or '-'} MiB  {r['status']}  {notes}", flush=True)
        return r
    return row


def run_scale(scale: float, a, rows: list[dict], embed_rate: dict) -> None:
    n = int(round(scale * BASE))
    base = a.workdir / f"x{scale:g}"
    base.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(exist_ok=True)
    print(f"\n== x{scale:g}: {n:,} + {a.added:,} patches under {base}", flush=True)
    if a.dashboard_only:  # the page loads alone, on the store an earlier run left there
        dashboard_rows(base / "store", n + a.added, a, logs, _row_writer(scale, rows))
        return
    big, t_big = cohort(base / "cohort", n, a.seed, "train", "SYN", a.src)
    small, t_small = cohort(base / "added", a.added, a.seed + 1000, "test", "ADD", a.src)
    print(f"   cohorts ready (generated in {t_big:.0f} s + {t_small:.0f} s)", flush=True)
    store = base / "store"
    shutil.rmtree(store, ignore_errors=True)
    total = n + a.added
    S = ["--store", str(store)]

    row = _row_writer(scale, rows)

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
        if not a.no_dashboard:
            row("dashboard (all pages)", total, None, "not run: the store's import failed")
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
        if not a.no_dashboard:
            dashboard_rows(store, total, a, logs, row, "store without embeddings or runs")
        return
    pr = go("probe lgbm", ["probe", "--model", "handcrafted", "--head", "lgbm", "--train-on", "Cohort", *S], n,
       f"train on {n:,} (5 slide-grouped folds), score Added")
    go("predict", ["predict", "--model", "handcrafted", "--head", "lgbm", "--dataset", "Added",
                   "--out", str(base / "preds.csv"), *S], a.added, "refits the 5 fold models")
    r = go("search k=10", ["search", "--model", "handcrafted", "--dataset", "Added", "--reference", "Cohort",
                           "--k", "10", "--out", str(base / "neighbours.csv"), *S], a.added)
    if r["wall_s"]:
        r["s_per_query"] = r["wall_s"] / a.added
        r["notes"] = f"{a.added:,} queries over {n:,}: {1000 * r['wall_s'] / a.added:.1f} ms/query incl. startup"
    go("store check", ["store", "check", *S], total)
    if not a.no_dashboard:
        dashboard_rows(store, total, a, logs, row, "" if pr["status"] == "ok" else "store without runs (probe failed)")


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


def merged_rows(paths: list[Path], facts: dict, embed_rate: dict) -> list[dict]:
    """The rows of earlier runs' JSON files, in order; their headers go to ``facts["merged"]`` and the
    largest measured embed gives the extrapolation rate."""
    rows: list[dict] = []
    facts["merged"] = []
    seen = set()
    for path in paths:
        prev = json.loads(path.read_text())
        for r in prev["rows"]:  # a row already merged (a JSON that merged another one) is kept once
            key = (r["command"], r["scale"], r["patches"], r.get("wall_s"), r.get("peak_rss_mib"), r.get("status"))
            if key not in seen:
                seen.add(key)
                rows.append(r)
        facts["merged"].append({"file": str(path), "header": prev.get("header")})
        for r in prev["rows"]:
            if r["command"] == "embed handcrafted" and r.get("status") == "ok" and r.get("wall_s") and (
                    not embed_rate or r["patches"] >= embed_rate.get("patches", 0)):
                embed_rate.update(rate=r["patches"] / r["wall_s"], scale=r["scale"], patches=r["patches"])
    return rows


def write_plot(rows: list[dict], out: Path) -> None:
    try:
        print(f"wrote plot {cost_plot.plot(rows, out)}")
    except Exception as e:  # noqa: BLE001 - the table and JSON are the results; a plot failing is said so
        print(f"plot not written ({type(e).__name__}: {e})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10",
                    help="comma list of multiples of 6,573 patches (fractions allowed: 0.05 = 329 patches)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cost-curves"))
    ap.add_argument("--json", type=Path, help="write the rows and machine facts here")
    ap.add_argument("--timeout", type=float, default=900, help="per-command limit, seconds")
    ap.add_argument("--added", type=int, default=1000, help="patches of the cohort added to the large store")
    ap.add_argument("--embed-max", type=int, default=100_000,
                    help="embed only stores up to this many patches; larger: extrapolated (~240 patches/s here)")
    ap.add_argument("--merge", type=Path, nargs="+", default=[],
                    help="JSONs of earlier runs (other scales): their rows come first in the table and plot")
    ap.add_argument("--from-json", type=Path, nargs="+", default=[],
                    help="run nothing: print the table of these JSONs' rows (and --plot / --json them)")
    ap.add_argument("--plot", type=Path,
                    help="log-log plot of wall s and peak RSS vs patches (.svg/.png need vl_convert, else HTML "
                         "is written beside it; .html; .json = the Vega-Lite spec)")
    ap.add_argument("--no-dashboard", action="store_true", help="skip the dashboard page loads")
    ap.add_argument("--dashboard-only", action="store_true",
                    help="only the page loads, on the stores an earlier run left under --workdir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--_page", help=argparse.SUPPRESS)  # the page-load helper (one page, one fresh process)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._page:
        print(PAGE_MARK + json.dumps(page_load(a._page, a.store, a.timeout), default=str), flush=True)
        return 0
    if a.from_json:
        facts: dict = {}
        rows = merged_rows(a.from_json, facts, {})
        header = "\n".join(f"(rows of {m['file']}: {m['header']})" for m in facts["merged"] if m["header"])
        return finish(a, facts, header, rows)
    scales = [float(s) for s in a.scales.split(",") if s.strip()]
    facts = machine.facts()  # its load average is the one at the start
    facts["time_tool"] = TIME or "resource.getrusage(RUSAGE_CHILDREN)"
    print(machine.header(facts), flush=True)
    embed_rate: dict = {}
    rows: list[dict] = merged_rows(a.merge, facts, embed_rate) if a.merge else []
    t0 = time.perf_counter()
    for s in sorted(scales):
        run_scale(s, a, rows, embed_rate)
        if a.json:  # partial results survive an interrupted run
            a.json.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1, default=str))
    facts["load_end"] = machine.load_average()
    facts["total_s"] = round(time.perf_counter() - t0, 1)
    header = (f"{machine.header(facts)}; load average at the end {facts['load_end']}; measured with "
              f"{facts['time_tool']}; total {facts['total_s']:.0f} s")
    for m in facts.get("merged", []):
        if m["header"]:
            header += f"\n(rows of {m['file']}: {m['header']})"
    return finish(a, facts, "\n" + header, rows)


def finish(a, facts: dict, header: str, rows: list[dict]) -> int:
    """Print the header and the table; write the JSON (``--json``) and the plot (``--plot``)."""
    print((header + "\n\n" if header else "") + table(rows))
    if a.json:
        a.json.write_text(json.dumps({"facts": facts, "header": header.strip(), "rows": rows}, indent=1, default=str))
        print(f"\nwrote {a.json}")
    if a.plot:
        write_plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
