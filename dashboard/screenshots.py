"""Load every dashboard page in headless Chromium, time it and save a full-page screenshot.

    python -m dashboard.screenshots --store mitoprobe-store --out artifacts/screenshots

Needs Debian's ``chromium`` and ``chromium-driver`` packages and ``selenium`` (a dev dependency).
A page counts as rendered when its title is shown, no element is still a loading skeleton, the
"running" indicator is gone, every chart has drawn, and the page then stays unchanged for
``SETTLE_S`` (reported times exclude that settling wait).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .server import start

PAGES = {  # url path -> the page's title (what the browser waits for)
    "": "Leaderboard",
    "compare": "Compare",
    "similarity": "Similarity search",
    "map": "Embedding map",
    "errors": "Errors",
}
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1")
SETTLE_S = 0.6
WIDTH = 1440

_STATE_JS = """
const main = document.querySelector('[data-testid="stMain"]');
const h1 = Array.from(document.querySelectorAll('h1')).map(e => e.innerText.trim());
const charts = Array.from(document.querySelectorAll('[data-testid="stVegaLiteChart"]'));
const drawn = charts.filter(c => c.querySelector('canvas, svg.marks')).length;
return {
  h1: h1,
  skeletons: document.querySelectorAll('[data-testid="stSkeleton"]').length,
  running: document.querySelectorAll('[data-testid="stSpinner"], [data-testid="stStatusWidget"]').length,
  stale: document.querySelectorAll('[data-stale="true"]').length,
  charts: charts.length, drawn: drawn,
  exceptions: Array.from(document.querySelectorAll('[data-testid="stException"]')).map(e => e.innerText),
  size: main ? main.innerHTML.length : 0,
  height: main ? main.scrollHeight : 0,
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


def _wait_rendered(drv, title: str, timeout: float) -> tuple[float, dict]:
    """Seconds from navigation start until the page was rendered and then stayed stable."""
    t0 = time.perf_counter()
    ready_at, last, state = None, None, {}
    while time.perf_counter() - t0 < timeout:
        state = drv.execute_script(_STATE_JS)
        ok = (title in state["h1"] and not state["skeletons"] and not state["running"] and not state["stale"]
              and state["drawn"] == state["charts"]) or state["exceptions"]
        sig = (state["size"], state["charts"], state["drawn"])
        if ok and sig == last:
            if time.perf_counter() - ready_at >= SETTLE_S:
                return ready_at - t0, state
        else:
            ready_at = time.perf_counter() if ok else None
        last = sig if ok else None
        time.sleep(0.05)
    raise TimeoutError(f"page {title!r} did not finish rendering within {timeout:.0f} s (last state {state})")


def capture(base_url: str, out_dir: Path, pages: dict[str, str] | None = None, warm_loads: int = 2,
            nav_rounds: int = 2, timeout: float = 90.0, width: int = WIDTH, max_height: int = 4000
            ) -> list[PageShot]:
    """Load each page by URL once cold and ``warm_loads`` more times, screenshot the whole page,
    then time ``nav_rounds`` rounds of switching pages through the sidebar."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    drv = driver(width)
    try:
        for path, title in (pages or PAGES).items():
            shot = PageShot(page=path or "leaderboard", title=title)
            for i in range(1 + warm_loads):
                drv.set_window_size(width, 1200)
                drv.get(f"{base_url}/{path}")
                secs, state = _wait_rendered(drv, title, timeout)
                if i:
                    shot.warm_s.append(secs)
                else:
                    shot.first_s = secs
            shot.exceptions, shot.charts = state["exceptions"] + _js_errors(drv), state["charts"]
            drv.set_window_size(width, min(max_height, max(900, state["height"] + 120)))
            _wait_rendered(drv, title, timeout)
            shot.path = out_dir / f"{shot.page}.png"
            drv.save_screenshot(str(shot.path))
            shots.append(shot)
        _navigate(drv, shots, nav_rounds, timeout, width)
    finally:
        drv.quit()
    return shots


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
            shot.exceptions += state["exceptions"] + _js_errors(drv)


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
    try:
        shots = capture(url, out, warm_loads=args.warm_loads)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{'page':<12} {'first load s':>12} {'URL reloads s':>14} {'sidebar switch s':>17}  screenshot")
    for s in shots:
        warm = ", ".join(f"{w:.2f}" for w in s.warm_s)
        nav = ", ".join(f"{w:.2f}" for w in s.nav_s)
        print(f"{s.page:<12} {s.first_s:>12.2f} {warm:>14} {nav:>17}  {s.path}"
              + (f"  ERRORS: {s.exceptions}" if s.exceptions else ""))
    return 1 if any(s.exceptions for s in shots) else 0


if __name__ == "__main__":
    raise SystemExit(main())
