"""``mitoprobe dashboard``: registered, documented, and passes --store/--port/--host to the server."""

from click.testing import CliRunner

from mitoprobe import dashboard
from mitoprobe.cli import cli


def test_dashboard_help():
    out = CliRunner().invoke(cli, ["dashboard", "--help"]).output
    assert "--store" in out and "--port" in out and "--host" in out and "Example:" in out


def test_dashboard_command_serves_on_localhost(monkeypatch, tmp_path):
    seen = {}

    def fake_serve(store, port, host):
        seen.update(store=store, port=port, host=host)
        return 0

    monkeypatch.setattr(dashboard, "serve", fake_serve)
    res = CliRunner().invoke(cli, ["dashboard", "--store", str(tmp_path), "--port", "8765"])
    assert res.exit_code == 0, res.output
    assert seen == dict(store=tmp_path, port=8765, host="127.0.0.1")


def test_server_command_is_headless_and_local():
    from mitoprobe.dashboard.server import _command

    cmd = _command(8765, "127.0.0.1")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("run") + 1].endswith("dashboard/app.py")


def test_server_child_ignores_package_folders_in_the_working_directory(tmp_path):
    """Started from a folder holding a ``store/`` or ``dashboard/`` directory, the Streamlit child must
    still import the installed packages: ``python -m`` alone puts the working folder first (the import
    then fails with "cannot import name 'Store' from 'store'"); the server's safe-path prefix does not."""
    import subprocess
    import sys

    from mitoprobe.dashboard.server import python_prefix

    for name in ("store", "dashboard", "classifiers", "embedder"):
        (tmp_path / name).mkdir()
    probe = ["-m", "mitoprobe", "store", "info", "--store", str(tmp_path / "no-store")]
    bare = subprocess.run([sys.executable, *probe], cwd=tmp_path, capture_output=True, text=True)
    assert bare.returncode != 0 and "cannot import name" in bare.stderr  # the trap is real
    safe = subprocess.run([*python_prefix(), *probe], cwd=tmp_path, capture_output=True, text=True)
    assert safe.returncode == 0, safe.stderr
    from mitoprobe.dashboard.server import _command

    assert _command(8765, "127.0.0.1")[:len(python_prefix())] == python_prefix()


def test_pages_fetch_nothing_online():
    """No page icons: Streamlit's material icons load from an online font host (fails offline)."""
    from pathlib import Path

    from mitoprobe.dashboard.navigation import PAGES

    text = (Path(dashboard.__file__).parent / "app.py").read_text()
    assert "icon=" not in text.replace("page_icon", "") and not any(hasattr(p, "icon") for p in PAGES)
