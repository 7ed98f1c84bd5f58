"""The store's commands as a user meets them: download offline, ``store info`` and ``sql``."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from mitoprobe.store import Store




@pytest.fixture
def full_store(tiny_store: Store) -> Store:
    ids = tiny_store.patches()["patch_id"].tolist()
    w = tiny_store.features.writer("0123abcd", "toy.random", {"cls": 16}, {"model": "toy"})
    w.write_chunk(ids, ["none"] * len(ids), {"cls": np.random.default_rng(0).random((len(ids), 16))})
    w.finalize(expected_rows=len(ids))
    tiny_store.results.append("runs", pd.DataFrame({"run_id": ["r1"], "model": ["toy.random"], "bal_acc": [0.61]}))
    tiny_store.results.append("predictions", pd.DataFrame({"run_id": "r1", "patch_id": ids, "score": 0.5}))
    return tiny_store


def test_download_fails_at_once_offline(monkeypatch, capsys, tmp_path):
    import mitoprobe.store.download as download

    monkeypatch.setattr(download, "_reachable", lambda *a, **k: False)
    t0 = time.perf_counter()
    code, out = run_cli(monkeypatch, capsys, "data", "download", "--dest", str(tmp_path / "cache"))
    assert time.perf_counter() - t0 < 10
    assert code == 2
    assert "cannot reach github.com" in out
    assert "mitoprobe data import /path/to/AMi-Br_Benchmark" in out and "$MITOPROBE_DATA" in out
    assert not (tmp_path / "cache").exists()


def test_reachability_check_is_bounded():
    import mitoprobe.store.download as download

    assert download.CONNECT_TIMEOUT_S < 10


def test_store_info_lists_everything(full_store, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "store", "info", "--store", str(full_store.root))
    assert code == 0, out
    for text in ("patches", "AtNorM-MD", "embedding sets", "toy.random", "0123abcd", "cls:16", "results",
                 "runs", "predictions"):
        assert text in out, text
    assert "36" in out  # rows of the set and of predictions


def test_a_path_that_is_not_a_store_is_an_error_for_every_command(tmp_path, monkeypatch, capsys):
    """A mistyped --store is not an empty store: every command but the ones that make a store (data import,
    run) exits 2 with one line, and creates nothing there."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a store")
    (tmp_path / "empty").mkdir()
    commands = [["store", "info"], ["store", "check"], ["store", "repair", "--yes"], ["sql", "select 1"], ["report"],
                ["probe", "--model", "handcrafted"], ["embed", "--model", "handcrafted"], ["fuse", "--rank"],
                ["finetune", "--list"], ["predict", "--model", "handcrafted", "--head", "lgbm", "--dataset", "X"],
                ["search", "--model", "handcrafted", "--dataset", "X"]]
    for where in (tmp_path / "none", a_file, tmp_path / "empty"):
        for args in commands:
            code, out = run_cli(monkeypatch, capsys, *args, "--store", str(where))
            lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
            assert code == 2 and len(lines) == 1, (args, where, out)
            assert "store" in lines[0] and str(where) in lines[0], (args, lines)
    assert not (tmp_path / "none").exists() and a_file.read_text() == "not a store"
    assert not any((tmp_path / "empty").iterdir())


def test_sql_over_every_view(full_store, monkeypatch, capsys):
    q = ("select count(*) n from patches p join emb_0123abcd e using (patch_id) "
         "join predictions r using (patch_id) join runs using (run_id)")
    code, out = run_cli(monkeypatch, capsys, "sql", q, "--store", str(full_store.root), "--format", "csv")
    assert code == 0, out
    assert out.split() == ["n", "36"]
    code, out = run_cli(monkeypatch, capsys, "sql", "select * from emb_0123abcd limit 1", "--store", str(full_store.root))
    assert code == 0 and "(16)" in out  # vectors are summarised, not dumped


@pytest.mark.parametrize("query, expected", [
    ("select * from nope", "Table with name nope does not exist"),
    ("selec 1", "syntax error"),
])
def test_sql_errors_are_one_clean_line(full_store, monkeypatch, capsys, query, expected):
    code, out = run_cli(monkeypatch, capsys, "sql", query, "--store", str(full_store.root))
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: query failed:") and expected in lines[0]
    assert "views: emb_0123abcd, embedding_sets, patch_images, patches, predictions, runs" in lines[0]
    assert "Traceback" not in out


def test_sql_without_store_says_how_to_fix(tmp_path, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "sql", "select * from patches", "--store", str(tmp_path / "none"))
    assert code == 2 and "run `mitoprobe data import`" in out
