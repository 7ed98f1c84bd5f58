"""Every dashboard page in headless Chromium, at each store size: first full render and warm, wall clock.

Why: the cost curves' AppTest rows (``benchmarks/cost_curves.py``) time the script, not what a pathologist
waits for; issue 30's goal (first render <= 2 s, warm <= 1 s at x30) is about the browser. For each
``--store`` (one per scale) this starts one fresh ``mitoprobe dashboard`` server and one browser
(``dashboard.screenshots``: a page is rendered when its title shows, no skeleton or "running" indicator
is left and every chart has drawn; the settling wait is not counted), loads every page once cold and
``--warm-loads`` more times (full browser reloads), then switches pages through the sidebar ``--switches``
rounds (no reload: what a user does once the app is open), and prints one row per (store, page) with the
machine and load beside it. The browser has visited the dashboard once before (``browser_first_visit``, on
a throwaway server at the same address: its own row), so a page's first figure is that page's first in a
fresh server, not Streamlit's scripts being fetched and compiled; every later page's first load is that
page's first in a server whose other caches may be warm (as a user switching pages meets it).

Usage: python -m benchmarks.page_curves --store /tmp/cc/x1 --store /tmp/cc/x10 [--page similarity] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from mitoprobe.dashboard import screenshots as S
from mitoprobe.dashboard.server import free_port, start
from mitoprobe.store import Store

from .machine import header, load_average


def store_pages(store: str, warm_loads: int, switches: int, out: Path, pages: list[str] | None = None) -> list[dict]:
    n = len(Store(store).patches(columns=["patch_id"]))
    drv, port = S.driver(), free_port()
    try:
        visit = browser_first_visit(drv, store, n, port, out)
        proc, url = start(store, port=port, log=out / "server.log")  # a fresh server: every cache cold
        try:
            shots = S.capture(url, out, pages={p: S.PAGES[p] for p in pages} if pages else None,
                              warm_loads=warm_loads, nav_rounds=switches, drv=drv)
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        drv.quit()
    return [visit] + [dict(store=store, patches=n, page=s.page, first_s=s.first_s,
                           warm_s=min(s.warm_s) if s.warm_s else None, switch_s=min(s.nav_s) if s.nav_s else None,
                           load_first=(s.load.get("first") or [None])[0], errors=s.exceptions or "") for s in shots]


def browser_first_visit(drv, store: str, patches: int, port: int, out: Path) -> dict:
    """The browser's very first visit (Streamlit's scripts fetched and compiled), timed on the Paper page
    of a throwaway server on the port the measured server will use: the pages' rows then time a fresh
    server (cold caches) seen by a browser that has opened the dashboard before, and this row says what a
    browser's first visit adds (the same at every store size)."""
    page = "paper"
    proc, url = start(store, port=port, log=out / "first-visit.log")
    try:
        drv.get(f"{url}/{page}")
        secs, state = S._wait_rendered(drv, S.PAGES[page], 90.0, loaded=True)
    finally:
        proc.terminate()
        proc.wait(10)
    return dict(store=store, patches=patches, page=f"{page} (browser's first visit)", first_s=secs, warm_s=None,
                switch_s=None, load_first=os.getloadavg()[0], errors=state["exceptions"] or "")


def table(rows: list[dict]) -> str:
    lines = ["| patches | page | first full render s | warm reload s (best) | page switch s (best) | load at first | errors |",
             "|---:|---|---:|---:|---:|---:|---|"]
    def secs(v):
        return "-" if v is None else f"{v:.2f}"
    for r in rows:
        load = "-" if r["load_first"] is None else f"{r['load_first']:.1f}"
        lines.append(f"| {r['patches']:,} | {r['page']} | {secs(r['first_s'])} | {secs(r['warm_s'])} | "
                     f"{secs(r.get('switch_s'))} | {load} | {r['errors']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", action="append", required=True, help="a store (repeat: one per scale)")
    ap.add_argument("--warm-loads", type=int, default=2, help="full reloads of each page after its first")
    ap.add_argument("--switches", type=int, default=2,
                    help="rounds of switching pages through the sidebar (no reload), as a user does once the app is open")
    ap.add_argument("--page", action="append", choices=list(S.PAGES), default=None,
                    help="only this page (repeat for more; default: every page)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if S.chromium_binary() is None:
        raise SystemExit("chromium not found: apt-get install -y chromium chromium-driver")
    print(header(), flush=True)
    rows = []
    for store in a.store:
        with tempfile.TemporaryDirectory(prefix="mitoprobe-pages-") as tmp:
            rows += store_pages(store, a.warm_loads, a.switches, Path(tmp), a.page)
        print(table([r for r in rows if r["store"] == store]), flush=True)
    print(f"load average after: {load_average()}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
