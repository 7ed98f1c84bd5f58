"""The protocol: the paper's folds on the real CSV, persisted; and no selection step sees a test label."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from classifiers_synth import synthetic_patches, synthetic_store

from mitoprobe.store import Store

from mitoprobe.classifiers.protocol import TEST_SETS, compute_folds, folds, load_protocol
from mitoprobe.classifiers.runner import load_features, resolve_heads, run_family


@pytest.mark.slow
def test_folds_are_the_papers_on_the_real_csv(real_data_dir, real_store):
    """Exactly the paper scripts' call (their 0/1 label map, CSV row order) gives our folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    df = pd.read_csv(real_data_dir / "amibr_train_split.csv")
    labels = df["final_label"].map({"Atypical": 0, "Normal": 1}).tolist()
    expected = np.full(len(df), -1)
    cv = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)
    for k, (_, val) in enumerate(cv.split(list(df["dataset_uid"]), labels, df["slide"].tolist())):
        expected[val] = k
    ours = folds(real_store)
    assert len(ours) == 2894 and list(ours["train_row"]) == list(range(len(df)))
    np.testing.assert_array_equal(ours["fold"].to_numpy(), expected)
    # slide-disjoint: each slide lies in exactly one fold, and every fold holds both classes
    assert (ours.groupby("slide")["fold"].nunique() == 1).all()
    assert set(ours["fold"]) == set(range(5))
    assert (ours.groupby("fold")["y"].agg(["min", "max"]).to_numpy() == [0, 1]).all()
    # persisted: the second call reads the same folds back from the store
    assert real_store.read_folds() is not None
    pd.testing.assert_frame_equal(folds(real_store), ours)
    proto = load_protocol(real_store)
    assert {k: len(v.y) for k, v in proto.tests.items()} == {"AMi-Br-test": 826, "AtNorM-Br": 746, "AtNorM-MD": 2107}


def test_test_set_names_are_the_papers():
    from mitoprobe.paper import paper_results

    ref = paper_results()  # the package's copy of ../shared/reference/paper_results.csv
    assert set(TEST_SETS) == set(ref["dataset"]) and len(ref) == 51


def test_folds_group_by_slide_on_synthetic_data():
    f = compute_folds(synthetic_patches())
    assert (f.groupby("slide")["fold"].nunique() == 1).all()
    assert sorted(f["fold"].unique()) == [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("synth-protocol"))


def _selections(synth, tmp_path, proto, head):
    store = Store(shutil.copytree(synth.root, tmp_path / f"copy-{len(list(tmp_path.iterdir()))}"))
    feats = load_features(store, "synth")
    rows = run_family(store, feats, proto, resolve_heads(head)[0], {"pooling": "all"}, n_boot=50)
    sel = [(r.fold, r.test_set, json.loads(r.config_json).get("selected"), r.threshold, r.val_auroc)
           for r in rows.itertuples()]
    preds = store.results.read("predictions")
    preds = preds[preds["run_id"].isin(set(rows["run_id"]))].sort_values(["fold", "test_set", "patch_id"])
    return sel, preds["probability"].to_numpy(), rows


@pytest.mark.parametrize("head", ["logreg", "knn", "lgbm"])
def test_no_selection_step_reads_a_test_label(synth, tmp_path, head):
    """Permute every test label and expert vote: selected hyper-parameters, thresholds and every
    test probability stay identical, while the test metrics move (so labels were really changed)."""
    proto = load_protocol(synth)
    rng = np.random.default_rng(0)
    poisoned = replace(proto, tests={
        name: replace(ts, y=rng.permutation(ts.y), votes=ts.votes.sample(frac=1, random_state=1).reset_index(drop=True))
        for name, ts in proto.tests.items()})
    sel_a, p_a, rows_a = _selections(synth, tmp_path, proto, head)
    sel_b, p_b, rows_b = _selections(synth, tmp_path, poisoned, head)
    assert sel_a == sel_b
    np.testing.assert_array_equal(p_a, p_b)
    assert not np.allclose(rows_a["auroc"].to_numpy(), rows_b["auroc"].to_numpy())


def test_fit_path_never_receives_test_rows(synth, monkeypatch):
    """Every matrix a head is fitted on comes from training patches only."""
    import mitoprobe.classifiers.fitting as fitting

    proto = load_protocol(synth)
    feats = load_features(synth, "synth")
    train_rows = set(feats.rows_of(proto.train["patch_id"].to_numpy())[0].tolist())
    train_vectors = {feats.X[r].tobytes() for r in train_rows}
    seen = []
    real_fit = fitting._fit

    def spy(head, params, X, y, X_val, y_val, *where):
        seen.extend(x.tobytes() for x in X)
        seen.extend(x.tobytes() for x in X_val)
        return real_fit(head, params, X, y, X_val, y_val, *where)

    monkeypatch.setattr(fitting, "_fit", spy)
    run_family(synth, feats, proto, resolve_heads("simpleshot")[0], {"pooling": "all"}, repeat=True, n_boot=20)
    assert seen and set(seen) <= train_vectors


def test_too_few_slides_is_a_protocol_error_not_a_traceback(tiny_store):
    """The tiny benchmark has 2 training slides: the 5-fold grouped split cannot exist."""
    from mitoprobe.store.errors import ProtocolError

    with pytest.raises(ProtocolError, match="at least 5 slides; the store has 2"):
        load_protocol(tiny_store)
    assert not tiny_store.folds_path.exists()


def test_a_foreign_folds_file_points_to_store_repair(synth, tmp_path):
    """A folds.parquet of other patches (another store's, or saved before a re-import) is refused
    with the `store repair` hint that `store check` gives (tests/test_store_damage.py runs the repair)."""
    import re

    from mitoprobe.store.errors import DamagedStoreError

    store = Store(shutil.copytree(synth.root, tmp_path / "store"))
    ours = folds(store)
    store.write_folds(compute_folds(synthetic_patches(n_train=250, seed=3)))  # another store's file
    with pytest.raises(DamagedStoreError, match=re.escape(str(store.folds_path)) + " does not list the stored "
                       r"AMi-Br training patches.*run `mitoprobe store repair --yes`") as e:
        folds(store)
    assert "delete" not in str(e.value)
    store.folds_path.unlink()
    pd.testing.assert_frame_equal(folds(store), ours)
    # the right patches but other folds: `store check` cannot tell, so the message says so
    store.write_folds(ours.assign(fold=(ours["fold"] + 1) % 5))
    with pytest.raises(DamagedStoreError, match="other folds than the paper's split.*cannot tell"):
        folds(store)
