"""Real-browser check: start ``mitoprobe dashboard``'s server from a folder that holds ``store/``,
``dashboard/``, ``classifiers/`` and ``embedder/`` packages of its own (they must not shadow the real
ones), load every page of ``dashboard.navigation.PAGES`` in headless Chromium, wait until its content
(not just the app shell) has rendered, open each shareable link and check its state came back, and
follow a leaderboard row to Errors, and save one screenshot per page and link (also copied to artifacts/screenshots/ for people to look at).
The timings are printed and written beside the screenshots (``timings.txt``), never asserted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dashboard_store import build_dashboard_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _ensure_chromium() -> None:
    """Install Debian's chromium + chromium-driver when missing and we may (root with apt-get)."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium/chromium-driver are not installed and this user cannot apt-get install them "
                    "(run: apt-get install -y chromium chromium-driver)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env,
                       timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"could not install chromium with apt-get: {exc}")


def _shadowing_folder(root: Path) -> Path:
    """A working folder whose own ``store``/``dashboard``/... packages fail on import, as a user's
    checkout or data folder might: the server child must import the installed packages instead."""
    for name in ("store", "dashboard", "classifiers", "embedder"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('shadowed: the working folder\\'s {name}/')\n")
    return root


def test_every_page_renders_in_chromium(tmp_path, monkeypatch):
    pytest.importorskip("selenium", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    _ensure_chromium()
    from mitoprobe.dashboard import start
    from mitoprobe.dashboard.navigation import PAGES as SPECS
    from mitoprobe.dashboard.screenshots import PAGES, capture, deep_links, machine, report

    st = build_dashboard_store(tmp_path / "data")
    monkeypatch.chdir(_shadowing_folder(tmp_path / "cwd"))
    log = tmp_path / "server.log"
    proc, url = start(st.root, log=log)
    try:
        links = deep_links(st.root)
        shots = capture(url, tmp_path / "shots", warm_loads=1, nav_rounds=1, links=links, row_link=True)
    finally:
        proc.terminate()
        proc.wait(10)
    timings = f"{machine()}\n{report(shots)}"
    print(timings)
    assert "shadowed" not in log.read_text() and "ImportError" not in log.read_text()
    assert sorted(PAGES.values()) == sorted(p.title for p in SPECS)  # every page of the navigation
    assert [s.title for s in shots] == list(PAGES.values()) + [link.title for link in links] + ["Errors", "Similarity search"]
    assert {link.name for link in links} == {"link-similarity", "link-patch", "link-compare", "link-errors"}
    keep = REPO / "artifacts" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "timings.txt").write_text(timings + "\n")
    for s in shots:
        assert not s.exceptions, f"{s.page}: {s.exceptions}"
        assert not s.missing, f"{s.page} ({s.url}) did not restore {s.missing}"
        if s.path is None:  # similarity-after-reload: timed only
            continue
        img = np.asarray(Image.open(s.path).convert("L"), dtype=np.float32)
        assert img.shape[1] >= 1200 and img.shape[0] >= 800
        assert img.std() > 10, f"{s.page}: the screenshot is nearly blank"
        shutil.copy(s.path, keep / s.path.name)
    charts = {s.page: s.charts for s in shots}
    assert charts["compare"] == 3 and charts["map"] == 1
    row = next(s for s in shots if s.page == "link-leaderboard-row")
    assert "family=fam-" in row.url  # a leaderboard row opened Errors
