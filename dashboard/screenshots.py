"""Load every dashboard page in headless Chromium, time it and save a full-page screenshot.

    python -m dashboard.screenshots --store mitoprobe-store --out artifacts/screenshots

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium`` (a dev dependency).
A page counts as rendered when its title is shown, no element is still a loading skeleton, the
"running" indicator is gone, every chart has drawn, and the page then stays unchanged for
``SETTLE_S`` (reported times exclude that settling wait).

Three timings per page, each printed with the 1-minute load average when it was taken:
*first load* (a fresh server and browser: Similarity goes first, so its figure includes reading the
embeddings, opening LanceDB, making the thumbnails, and the browser fetching Streamlit's scripts),
*full loads* (the URL opened again: a new session, server caches warm) and *page switches* (sidebar
clicks in one session). ``similarity-after-reload`` is the first Similarity load once more, after
"Reload store" emptied every server cache, with the browser's scripts cached. Then each shareable link
(``deep_links``) is opened directly and must restore its state.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit  # noqa: F401  (imported first, so its cache logger exists and can be quieted)

from mitoprobe.store import Store, paths

# "No runtime found" per cached loader is expected outside a server (this script only reads data).
logging.getLogger("streamlit.runtime.caching.cache_data_api").setLevel(logging.ERROR)
from . import data  # noqa: E402
from .links import href
from .navigation import PAGES as PAGE_SPECS
from .server import start

# url path -> the page's title (what the browser waits for); Similarity first: its first load is timed cold
PAGES = {p.key: p.title for p in sorted(PAGE_SPECS, key=lambda p: p.key != "similarity")}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")
SETTLE_S = 0.6
WIDTH = 1440

_STATE_JS = """
const main = document.querySelector('[data-testid="stMain"]');
const checked = Array.from(document.querySelectorAll('[data-testid="stMain"] input:checked'))
  .map(e => (e.closest('label') || e.parentElement).innerText.trim());
const h1 = Array.from(document.querySelectorAll('h1')).map(e => e.innerText.trim());
const charts = Array.from(document.querySelectorAll('[data-testid="stVegaLiteChart"]'));
const drawn = charts.filter(c => c.querySelector('canvas, svg.marks')).length;
return {
  now: performance.now(),
  h1: h1,
  skeletons: document.querySelectorAll('[data-testid="stSkeleton"]').length,
  running: document.querySelectorAll('[data-testid="stSpinner"], [data-testid="stStatusWidget"]').length,
  stale: document.querySelectorAll('[data-stale="true"]').length,
  charts: charts.length, drawn: drawn,
  exceptions: Array.from(document.querySelectorAll('[data-testid="stException"]')).map(e => e.innerText),
  size: main ? main.innerHTML.length : 0,
  height: main ? main.scrollHeight : 0,
  text: (main ? main.innerText : '') + ' ' + checked.map(c => 'checked:' + c).join(' ') + ' ' + Array.from(
    document.querySelectorAll('[data-testid="stMain"] input')).map(e => e.value || '').join(' '),
};
"""


@dataclass
class PageShot:
    page: str
    title: str
    path: Path | None = None
    first_s: float = float("nan")
    warm_s: list[float] = field(default_factory=list)
    nav_s: list[float] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    charts: int = 0
    load: dict[str, list[float]] = field(default_factory=dict)  # timing kind -> 1-min load averages
    url: str = ""
    missing: list[str] = field(default_factory=list)  # deep links: expected texts not on the page

    def note_load(self, kind: str) -> None:
        self.load.setdefault(kind, []).append(os.getloadavg()[0])


@dataclass(frozen=True)
class DeepLink:
    """A shareable URL to open directly, with texts its restored state must show."""

    name: str
    path: str  # relative URL, e.g. errors?family=...&test_set=...
    title: str
    expect: tuple[str, ...]


def deep_links(store_root) -> list[DeepLink]:
    """One link per page that takes URL state, built from what the store holds: the last test patch,
    the last family id and the last test set in sort order, none of them a page's default (so the
    page must restore them); ``checked:X`` expects radio option X selected."""
    st = Store(store_root)
    if not st.has_patches():
        return []
    meta = st.patches(columns=["patch_id", "dataset", "split"])
    runs = st.results.read("runs")
    sets = data.ordered_sets([s for s in st.features.sets() if s.complete])  # as the pickers list them
    test_patch = meta.loc[meta["split"] == "test", "patch_id"]
    pid = str((test_patch if len(test_patch) else meta["patch_id"]).iloc[-1])
    out = []
    if sets:
        out.append(DeepLink("link-similarity", href("similarity", patch=pid, set=sets[-1].recipe_id),
                            "Similarity search", (pid, sets[-1].recipe_id)))
    if runs.empty:
        return out + [DeepLink("link-patch", href("patch", patch=pid), "Patch viewer", (pid,))]
    row = runs.sort_values("family_id").iloc[-1]
    fam, ts = row["family_id"], sorted(runs["test_set"].unique())[-1]
    label = data.family_labels(runs)[fam]  # what the family's selectbox shows
    out += [DeepLink("link-patch", href("patch", patch=pid, family=fam), "Patch viewer", (pid, label)),
            DeepLink("link-compare", href("compare", family=fam, test_set=ts), "Compare", (label, f"checked:{ts}")),
            DeepLink("link-errors", href("errors", family=fam, test_set=ts), "Errors",
                     (label, f"checked:{ts}"))]
    return out


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def driver(width: int = WIDTH, height: int = 1200):
    """A headless Chromium under selenium with a fresh profile (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_binary() or "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='mitoprobe-chromium-')}")
    opts.add_argument(f"--window-size={width},{height}")
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(service=service, options=opts)


def _js_errors(drv) -> list[str]:
    """Uncaught JavaScript errors since the last call (e.g. a chart spec Vega cannot draw)."""
    try:
        logs = drv.get_log("browser")
    except Exception:  # noqa: BLE001 - not every driver exposes logs
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE" and e.get("source") == "javascript"]


def _wait_rendered(drv, title: str, timeout: float, loaded: bool = False) -> tuple[float, dict]:
    """Seconds until the page was rendered and then stayed stable: from the call (a click in the page), or
    with ``loaded`` (after ``drv.get``, which returns at the document's load event) from the navigation's
    start by the browser's own clock, so fetching the page and Streamlit's scripts counts too."""
    t0 = time.perf_counter()
    ready_at, ready_browser, last, state = None, None, None, {}
    while time.perf_counter() - t0 < timeout:
        state = drv.execute_script(_STATE_JS)
        ok = (title in state["h1"] and not state["skeletons"] and not state["running"] and not state["stale"]
              and state["drawn"] == state["charts"]) or state["exceptions"]
        sig = (state["size"], state["charts"], state["drawn"])
        if ok and sig == last:
            if time.perf_counter() - ready_at >= SETTLE_S:
                return (ready_browser if loaded else ready_at - t0), state
        else:
            ready_at = time.perf_counter() if ok else None
            ready_browser = state["now"] / 1000 if ok else None
        last = sig if ok else None
        time.sleep(0.05)
    raise TimeoutError(f"page {title!r} did not finish rendering within {timeout:.0f} s (last state {state})")


def capture(base_url: str, out_dir: Path, pages: dict[str, str] | None = None, warm_loads: int = 2,
            nav_rounds: int = 2, timeout: float = 90.0, width: int = WIDTH, max_height: int = 4000,
            links: list[DeepLink] = (), row_link: bool = False, drv=None) -> list[PageShot]:
    """Load each page by URL once cold and ``warm_loads`` more times, screenshot the whole page, time
    ``nav_rounds`` rounds of switching pages through the sidebar, then open each deep link and (with
    ``row_link``) follow a leaderboard row to Errors (``_follow_row``). ``drv``: a browser of the caller's
    (kept open; e.g. one that has Streamlit's scripts cached already), else a fresh one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    own = drv is None
    drv = driver(width) if own else drv
    try:
        for path, title in (pages or PAGES).items():
            shot = PageShot(page=path or "leaderboard", title=title, url=path)
            for i in range(1 + warm_loads):
                drv.set_window_size(width, 1200)
                drv.get(f"{base_url}/{path}")
                secs, state = _wait_rendered(drv, title, timeout, loaded=True)
                shot.note_load("warm" if i else "first")
                if i:
                    shot.warm_s.append(secs)
                else:
                    shot.first_s = secs
            _screenshot(drv, shot, state, out_dir, timeout, width, max_height)
            shots.append(shot)
        _navigate(drv, shots, nav_rounds, timeout, width)
        for link in links:
            shot = PageShot(page=link.name, title=link.title, url=link.path)
            drv.set_window_size(width, 1200)
            drv.get(f"{base_url}/{link.path}")
            shot.first_s, state = _wait_rendered(drv, link.title, timeout, loaded=True)
            shot.note_load("first")
            shot.missing = [t for t in link.expect if t not in state["text"]]
            _screenshot(drv, shot, state, out_dir, timeout, width, max_height)
            shots.append(shot)
        if row_link:
            shots.append(_follow_row(drv, base_url, out_dir, timeout, width, max_height))
        if "similarity" in (pages or PAGES):
            shots.append(_similarity_after_reload(drv, base_url, timeout, width))
    finally:
        if own:
            drv.quit()
    return shots


def _follow_row(drv, base_url: str, out_dir: Path, timeout: float, width: int, max_height: int) -> PageShot:
    """Select the leaderboard's first row (its row marker, left of the first data row) and follow the
    "Errors: <family> on <test set>" link it offers; the Errors page must show that family and test
    set and carry them in its URL (``PageShot.url``; ``missing`` lists what did not come through)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    drv.set_window_size(width, 1200)
    drv.get(f"{base_url}/")
    _wait_rendered(drv, "Leaderboard", timeout)
    grid = drv.find_element(By.CSS_SELECTOR, '[data-testid="stDataFrame"] canvas')
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
    row_h = 35  # Streamlit's default header and row height
    ActionChains(drv).move_to_element_with_offset(grid, -grid.size["width"] // 2 + 14,
                                                  -grid.size["height"] // 2 + row_h + row_h // 2
                                                  ).pause(0.2).click().perform()
    shot = PageShot(page="link-leaderboard-row", title="Errors")
    deadline = time.perf_counter() + timeout
    found = []
    while not found and time.perf_counter() < deadline:
        found = [a for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] a')
                 if a.text.startswith("Errors: ")]
        time.sleep(0.1)
    if not found:
        shot.missing = ["an 'Errors: ...' link after selecting a leaderboard row"]
        return shot
    family, _, test_set = found[0].text.removeprefix("Errors: ").rpartition(" on ")
    found[0].click()
    shot.first_s, state = _wait_rendered(drv, "Errors", timeout)
    shot.note_load("first")
    shot.url = drv.current_url.removeprefix(base_url + "/")
    shot.missing = [t for t in (family, f"checked:{test_set}") if t not in state["text"]]
    shot.missing += [p for p in ("family=", f"test_set={test_set}") if p not in shot.url]
    _screenshot(drv, shot, state, out_dir, timeout, width, max_height)
    return shot


def _similarity_after_reload(drv, base_url: str, timeout: float, width: int) -> PageShot:
    """The first Similarity load again, with every server cache emptied by the sidebar's "Reload store"
    button but the browser's copy of Streamlit's own scripts kept: what a user meets on a running
    dashboard (the patches, results and embeddings read again, LanceDB opened, thumbnails made)."""
    from selenium.webdriver.common.by import By

    drv.set_window_size(width, 1200)
    drv.get(f"{base_url}/patch")
    _wait_rendered(drv, "Patch viewer", timeout)
    button = [b for b in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebar"] button')
              if b.text.strip() == "Reload store"]
    button[0].click()
    time.sleep(0.3)
    _wait_rendered(drv, "Patch viewer", timeout)
    shot = PageShot(page="similarity-after-reload", title="Similarity search", url="similarity")
    drv.get(f"{base_url}/similarity")
    shot.first_s, state = _wait_rendered(drv, "Similarity search", timeout)
    shot.note_load("first")
    shot.exceptions = state["exceptions"] + _js_errors(drv)
    return shot


def _screenshot(drv, shot: PageShot, state: dict, out_dir: Path, timeout: float, width: int, max_height: int
                ) -> None:
    shot.exceptions, shot.charts = state["exceptions"] + _js_errors(drv), state["charts"]
    drv.set_window_size(width, min(max_height, max(900, state["height"] + 120)))
    _wait_rendered(drv, shot.title, timeout)
    shot.path = out_dir / f"{shot.page}.png"
    drv.save_screenshot(str(shot.path))


def _navigate(drv, shots: list[PageShot], rounds: int, timeout: float, width: int) -> None:
    """Switch pages with the sidebar links, as a user does once the app is open (no reload)."""
    from selenium.webdriver.common.by import By

    drv.set_window_size(width, 1200)
    for _ in range(rounds):
        for shot in shots:
            links = [a for a in drv.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
                     if a.text.strip().endswith(shot.title)]
            if not links:
                raise RuntimeError(f"no sidebar link titled {shot.title!r}")
            links[0].click()
            secs, state = _wait_rendered(drv, shot.title, timeout)
            shot.nav_s.append(secs)
            shot.note_load("nav")
            shot.exceptions += state["exceptions"] + _js_errors(drv)


def machine() -> str:
    """Cores this process may use, and the load averages now."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1/5/15 min)"


def report(shots: list[PageShot]) -> str:
    """The timings table: seconds, each with the 1-minute load average when it was taken."""
    def fmt(secs, loads):
        return ", ".join(f"{s:.2f} (load {lo:.1f})" for s, lo in zip(secs, loads)) or "-"

    lines = [f"{'page':<24} {'first load s':<22} {'full loads s':<42} {'page switches s':<42} screenshot"]
    for s in shots:
        lines.append(f"{s.page:<24} {fmt([s.first_s], s.load.get('first', [])):<22} "
                     f"{fmt(s.warm_s, s.load.get('warm', [])):<42} {fmt(s.nav_s, s.load.get('nav', [])):<42} "
                     f"{s.path or '-'}" + (f"  ERRORS: {s.exceptions}" if s.exceptions else "")
                     + (f"  NOT RESTORED: {s.missing}" if s.missing else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="store folder (default $MITOPROBE_STORE or ./mitoprobe-store)")
    ap.add_argument("--out", default="artifacts/screenshots", help="folder for the PNGs")
    ap.add_argument("--warm-loads", type=int, default=2)
    args = ap.parse_args(argv)
    if chromium_binary() is None:
        raise SystemExit("chromium not found: apt-get install -y chromium chromium-driver")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc, url = start(args.store, log=out / "server.log")
    before = machine()
    try:
        shots = capture(url, out, warm_loads=args.warm_loads, links=deep_links(paths.store_root(args.store)),
                        row_link=True)
    finally:
        proc.terminate()
        proc.wait(10)
    table = f"before: {before}\n{report(shots)}\nafter: {machine()}"
    print(table)
    (out / "timings.txt").write_text(table + "\n")
    return 1 if any(s.exceptions or s.missing for s in shots) else 0


if __name__ == "__main__":
    raise SystemExit(main())
