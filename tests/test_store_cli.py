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


def test_store_info_empty_store(tmp_path, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "store", "info", "--store", str(tmp_path / "none"))
    assert code == 0
    assert "no patches yet: run `mitoprobe data import`" in out


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
