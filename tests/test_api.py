"""The Python API (``mitoprobe.open``): probing an estimator object and a built-in head, without re-reading
vectors for a second head, results in the CLI's tables, and a protocol view without test labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import mitoprobe
from conftest import make_six_slide_store
from mitoprobe.store.errors import ConfigError, DataError, MitoprobeError, ProtocolError, StoreError


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    st = make_six_slide_store(tmp_path_factory.mktemp("api"))
    w = mitoprobe.open(st.root)
    w.embed("handcrafted")
    return w


def test_probe_an_estimator_and_a_builtin_head_from_one_read(ws, monkeypatch):
    import mitoprobe.classifiers.features as F

    rows = ws.probe("handcrafted", estimator=LogisticRegression(max_iter=300), name="lr", grid={"C": [0.1, 1.0]})
    assert set(rows["head"]) == {"lr"} and rows["fold"].nunique() == 6

    def no_reads(*a, **k):  # the second head must use the vectors the workspace already holds
        raise AssertionError("vectors read again")

    monkeypatch.setattr(F, "load_features", no_reads)
    monkeypatch.setattr("mitoprobe.api.load_features", no_reads)
    rows = ws.probe("handcrafted", head="simpleshot", n_boot=50)
    assert set(rows["head"]) == {"simpleshot"}
    assert ws.probe("handcrafted", head="simpleshot", n_boot=50).empty  # the same family: skipped, not duplicated
    board = ws.leaderboard(model="handcrafted", paper=False)
    assert {"lr", "simpleshot"} <= set(board["head"])
    assert len(ws.compare("handcrafted:lr", "handcrafted:simpleshot", n_boot=100)) > 0
    with pytest.raises(ConfigError, match="not both"):
        ws.probe("handcrafted", head="lgbm", estimator=LogisticRegression())


def test_protocol_view_has_no_test_labels_and_score_reads_them(ws):
    view = ws.protocol()
    assert set(view.train.columns) == {"patch_id", "slide", "y", "fold"}
    tr, held = view.fold(0)
    assert len(tr) and len(held) and not set(tr) & set(held)
    name, ids = next(iter(view.test_sets.items()))
    assert isinstance(ids, np.ndarray) and not hasattr(ids, "y")
    m = ws.score(name, np.full(len(ids), 0.5), threshold=0.5, n_boot=20)
    assert 0 <= m["balanced_accuracy"] <= 1
    with pytest.raises(DataError, match="patches"):
        ws.score(name, np.zeros(len(ids) + 1))


def test_seeds_are_repeats_of_one_family_and_recorded_once(ws):
    rows = ws.probe("handcrafted", head="mlp", seeds=[0, 1, 2], n_boot=20)
    assert rows["family_id"].nunique() == 1 and sorted(rows["seed"].unique()) == [0, 1, 2]
    assert sorted(rows["repeat"].unique()) == [0, 1, 2]
    again = ws.probe("handcrafted", head="mlp", seeds=[1, 3], n_boot=20)  # 1 is recorded: only 3 runs
    assert sorted(again["seed"].unique()) == [3]


def test_the_leaderboard_gives_the_spread_over_seeds(ws):
    from mitoprobe.classifiers.report import SEEDS, compact_board

    ws.probe("handcrafted", head="mlp", seeds=[0, 1, 2], n_boot=20)
    board = ws.leaderboard(model="handcrafted", paper=False)
    mlp = board[(board["head"] == "mlp") & (board["n_seeds"] >= 3)]  # 4 after the test above added seed 3
    assert len(mlp) and mlp["balanced_accuracy_seed_std"].notna().all()
    compact = compact_board(board)
    assert SEEDS in compact.columns and compact.loc[compact["family"].str.contains("mlp"), SEEDS].str.match(r"\d ±").any()


def test_every_misuse_of_the_api_is_a_mitoprobe_error_with_one_line(ws, tmp_path):
    """What a user can fix is a MitoprobeError (one line saying what to do), never a bare ValueError/KeyError."""
    name, ids = next(iter(ws.protocol().test_sets.items()))
    cases = {
        "unknown test set": (ProtocolError, lambda: ws.score("AMi-Br-tset", np.full(len(ids), 0.5))),
        "NaN probabilities": (DataError, lambda: ws.score(name, np.full(len(ids), np.nan))),
        "probabilities out of [0, 1]": (DataError, lambda: ws.score(name, np.full(len(ids), 1.5))),
        "a grid for a built-in head": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", grid={"C": [1]})),
        "params for several heads": (ProtocolError, lambda: ws.probe("handcrafted", head=["lgbm", "knn"],
                                                                     params={"n_neighbors": 3})),
        "an unknown head": (ProtocolError, lambda: ws.probe("handcrafted", head="svm")),
        "an unknown set": (MitoprobeError, lambda: ws.probe("no-such-set", head="lgbm")),
        "an unknown pooling": (ProtocolError, lambda: ws.probe("handcrafted", head="lgbm", pooling="bogus")),
        "a negative seed": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", seed=-1)),
        "seeds that are not integers": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", seeds=[0, "a"])),
        "a negative n_boot": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", n_boot=-5)),
        "no threads": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", n_threads=0)),
        "tta not a flag": (ConfigError, lambda: ws.probe("handcrafted", head="lgbm", tta="yes")),
        "an empty head list": (ConfigError, lambda: ws.probe("handcrafted", head=[])),
        "an unknown training set": (ProtocolError, lambda: ws.probe("handcrafted", head="lgbm", train_on="nope")),
        "no family to predict with": (StoreError, lambda: ws.predictions("handcrafted", "knn")),
        "a file as the store": (StoreError, lambda: mitoprobe.open(__file__)),
        "read-only on nothing": (StoreError, lambda: mitoprobe.open(tmp_path / "nothing", read_only=True)),
        "a path that is not a store": (StoreError, lambda: mitoprobe.open(tmp_path / "nothing")),
        "a folder that is not a store": (StoreError, lambda: mitoprobe.open(tmp_path)),
        "read-only and create": (ConfigError, lambda: mitoprobe.open(tmp_path / "nothing", read_only=True, create=True)),
    }
    def store_bytes() -> dict:  # every file but the OS lock files a family's writer leaves (empty, by design)
        return {p: p.read_bytes() for p in ws.store.root.rglob("*") if p.is_file() and "locks" not in p.parts}

    before = store_bytes()
    for what, (error, call) in cases.items():
        with pytest.raises(error) as info:
            call()
        assert "\n" not in str(info.value), what
    assert store_bytes() == before  # nothing written by a call that failed
    assert not (tmp_path / "nothing").exists()


def test_a_read_only_workspace_reads_and_refuses_every_write(ws):
    with mitoprobe.open(ws.store.root, read_only=True) as ro:
        assert len(ro.leaderboard(model="handcrafted", paper=False))
        assert len(ro.predictions("handcrafted", "simpleshot"))
        for write in (lambda: ro.probe("handcrafted", head="knn"), lambda: ro.embed("morphology"),
                      lambda: ro.import_benchmark(ws.store.root), lambda: ro.import_cohort("Lab", folder=ws.store.root)):
            with pytest.raises(StoreError, match="read-only"):
                write()
    assert "read_only=True" in repr(ro)


def test_a_read_only_workspace_never_writes_the_folds(tmp_path):
    st = make_six_slide_store(tmp_path)
    with mitoprobe.open(st.root, read_only=True) as ro:
        assert len(ro.protocol().train["fold"].unique()) == 5
    assert not st.folds_path.exists()  # computed for the reader, not saved
    mitoprobe.open(st.root).protocol()
    assert st.folds_path.exists()


def test_create_makes_a_store_on_the_first_import_only(tmp_path):
    from mitoprobe.store.example_benchmark import write_example_benchmark

    ws = mitoprobe.open(tmp_path / "new", create=True)
    assert not (tmp_path / "new").exists()  # nothing written by opening
    ws.import_benchmark(write_example_benchmark(tmp_path / "bench", n_per_class=3))
    assert len(mitoprobe.open(tmp_path / "new", read_only=True).patches())
