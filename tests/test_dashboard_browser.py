"""Real-browser check: start ``mitoprobe dashboard``'s server, load every page in headless Chromium,
wait until its content (not just the app shell) has rendered, and save one screenshot per page
(also copied to artifacts/screenshots/ for people to look at)."""

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


def test_every_page_renders_in_chromium(tmp_path):
    pytest.importorskip("selenium", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    _ensure_chromium()
    from dashboard import start
    from dashboard.screenshots import PAGES, capture

    st = build_dashboard_store(tmp_path / "data")
    proc, url = start(st.root, log=tmp_path / "server.log")
    try:
        shots = capture(url, tmp_path / "shots", warm_loads=1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert [s.title for s in shots] == list(PAGES.values())
    keep = REPO / "artifacts" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    for s in shots:
        assert not s.exceptions, f"{s.page}: {s.exceptions}"
        img = np.asarray(Image.open(s.path).convert("L"), dtype=np.float32)
        assert img.shape[1] >= 1200 and img.shape[0] >= 800
        assert img.std() > 10, f"{s.page}: the screenshot is nearly blank"
        shutil.copy(s.path, keep / s.path.name)
    charts = {s.page: s.charts for s in shots}
    assert charts["compare"] == 3 and charts["map"] == 1
