"""Start the dashboard: ``streamlit run dashboard/app.py`` in a subprocess (``mitoprobe.dashboard.child``: Streamlit's
CLI after preloading the pages' imports), headless, on localhost.

The store path travels as ``$MITOPROBE_STORE`` (the app resolves it like every other command).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mitoprobe.store import paths
from mitoprobe.store.errors import StoreError

APP = Path(__file__).resolve().parent / "app.py"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def python_prefix() -> list[str]:
    """The interpreter in safe-path mode: ``python -m`` would put the working folder first on the
    import path, so a folder holding a ``store/`` (or ``dashboard/``, ...) directory would shadow the
    installed packages. ``-P`` (Python 3.11+) leaves it out; 3.10 drops it in a tiny bootstrap."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P"]
    return [sys.executable, "-c", "import runpy, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
            "sys.argv = sys.argv[2:] if sys.argv[1:2] == ['-m'] else sys.argv[1:]; "
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"]


def _command(port: int, host: str) -> list[str]:
    return [*python_prefix(), "-m", "mitoprobe.dashboard.child", "run", str(APP),
            "--server.port", str(port), "--server.address", host, "--server.headless", "true",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            "--runner.magicEnabled", "false",  # no page shows bare expressions: skip rewriting each script per run
            "--theme.base", "light"]


def _env(store: str | Path | None) -> dict[str, str]:
    env = dict(os.environ, MITOPROBE_STORE=str(paths.store_root(store).resolve()))
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env


def serve(store: str | Path | None = None, port: int = 8501, host: str = "127.0.0.1") -> int:
    """Run the app in the foreground until interrupted; returns streamlit's exit code.

    SIGTERM to this process stops the server too (Ctrl-C reaches both through the terminal)."""
    proc = subprocess.Popen(_command(port, host), env=_env(store))
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def start(store: str | Path | None = None, port: int | None = None, host: str = "127.0.0.1",
          timeout: float = 60.0, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start the app in the background and wait until it answers; returns (process, base URL).

    The caller stops it with ``proc.terminate()``. Used by the screenshot script and the tests."""
    port = port or free_port(host)
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(_command(port, host), env=_env(store), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreError(f"the dashboard exited at start (code {proc.returncode})"
                             + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise StoreError(f"the dashboard did not answer on {url} within {timeout:.0f} s")
