"""``mitoprobe dashboard``: registered, documented, and passes --store/--port/--host to the server."""

from click.testing import CliRunner

import dashboard
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
    from dashboard.server import _command

    cmd = _command(8765, "127.0.0.1")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("run") + 1].endswith("dashboard/app.py")
