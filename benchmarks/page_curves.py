"""Every dashboard page in headless Chromium, at each store size: first full render and warm, wall clock.

Why: the cost curves' AppTest rows (``benchmarks/cost_curves.py``) time the script, not what a pathologist
waits for; issue 30's goal (first render <= 2 s, warm <= 1 s at x30) is about the browser. For each
``--store`` (one per scale) this starts one fresh ``mitoprobe dashboard`` server and one browser
(``dashboard.screenshots``: a page is rendered when its title shows, no skeleton or "running" indicator
is left and every chart has drawn; the settling wait is not counted), loads every page once cold and
``--warm-loads`` more times, and prints one row per (store, page) with the machine and load beside it.
The first page's figure includes the browser fetching Streamlit's scripts; every later page's first load
is that page's first in a server whose other caches may be warm (as a user switching pages meets it).

Usage: python -m benchmarks.page_curves --store /tmp/cc/x1 --store /tmp/cc/x10 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mitoprobe.dashboard import screenshots as S
from mitoprobe.dashboard.server import start
from mitoprobe.store import Store

from .machine import header, load_average


def store_pages(store: str, warm_loads: int, out: Path) -> list[dict]:
    n = len(Store(store).patches(columns=["patch_id"]))
    proc, url = start(store, log=out / "server.log")
    try:
        shots = S.capture(url, out, warm_loads=warm_loads, nav_rounds=0)
    finally:
        proc.terminate()
        proc.wait(10)
    return [dict(store=store, patches=n, page=s.page, first_s=s.first_s, warm_s=min(s.warm_s) if s.warm_s else None,
                 load_first=(s.load.get("first") or [None])[0], errors=s.exceptions or "") for s in shots]


def table(rows: list[dict]) -> str:
    lines = ["| patches | page | first full render s | warm s (best) | load at first | errors |", "|---:|---|---:|---:|---:|---|"]
    for r in rows:
        warm = "-" if r["warm_s"] is None else f"{r['warm_s']:.2f}"
        load = "-" if r["load_first"] is None else f"{r['load_first']:.1f}"
        lines.append(f"| {r['patches']:,} | {r['page']} | {r['first_s']:.2f} | {warm} | {load} | {r['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True, help="a store (repeat: one per scale)")
    ap.add_argument("--warm-loads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if S.chromium_binary() is None:
        raise SystemExit("chromium not found: apt-get install -y chromium chromium-driver")
    print(header(), flush=True)
    rows = []
    for store in a.store:
        with tempfile.TemporaryDirectory(prefix="mitoprobe-pages-") as tmp:
            rows += store_pages(store, a.warm_loads, Path(tmp))
        print(table([r for r in rows if r["store"] == store]), flush=True)
    print(f"load average after: {load_average()}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
