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


def test_server_child_runs_in_safe_path_mode():
    """The Streamlit child leaves the working folder off the import path (``-P``): the namespace already keeps
    a user's ``store/`` or ``dashboard/`` folder from shadowing ours (tests/test_namespace.py)."""
    from mitoprobe.dashboard.server import _command, python_prefix

    assert _command(8765, "127.0.0.1")[:len(python_prefix())] == python_prefix()


def test_pages_fetch_nothing_online():
    """No page icons: Streamlit's material icons load from an online font host (fails offline)."""
    from pathlib import Path

    from mitoprobe.dashboard.navigation import PAGES

    text = (Path(dashboard.__file__).parent / "app.py").read_text()
    assert "icon=" not in text.replace("page_icon", "") and not any(hasattr(p, "icon") for p in PAGES)
