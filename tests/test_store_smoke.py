from mitoprobe.store import Store


def test_tiny_import_counts(tiny_store: Store):
    df = tiny_store.patches()
    assert len(df) == 36
    assert set(df["dataset"]) == {"AMi-Br", "AtNorM-Br", "AtNorM-MD"}
    assert (df.loc[df.dataset == "AMi-Br", "slide"].notna()).all()


def test_cli_help_lists_commands():
    from click.testing import CliRunner

    from mitoprobe.cli import COMMANDS, cli

    out = CliRunner().invoke(cli, ["--help"]).output
    for name in COMMANDS:
        assert name in out
