"""Patch ids handled in Arrow at a cohort's scale (store/keys.py) and the readers and writers built on them:
id lookups, duplicate counts, a probe's predictions appended as row groups and read back a batch at a time,
one dataset's patches read from its own parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mitoprobe.classifiers.features import Features
from mitoprobe.classifiers.refit import stored_predictions
from mitoprobe.store import StoreError
from mitoprobe.store import results as results_module
from mitoprobe.store.keys import as_arrow_ids, distinct_count, positions


@pytest.mark.parametrize("make", [list, lambda x: np.asarray(x, dtype=object), pd.Series,
                                  lambda x: pd.Series(x, dtype="str").array, lambda x: pd.Index(x),
                                  lambda x: pa.chunked_array([x[:1], x[1:]]), lambda x: pd.Series(x, dtype="category")])
def test_ids_of_every_kind_become_one_arrow_array(make):
    ids = as_arrow_ids(make(["b", "a", "c"]))
    assert isinstance(ids, pa.Array) and ids.type == pa.large_string() and ids.to_pylist() == ["b", "a", "c"]


def test_positions_find_each_id_and_mark_the_absent():
    among = ["p0", "p1", "p2", "p3"]
    assert positions(["p3", "p0", "nope", "p3"], among).tolist() == [3, 0, -1, 3]
    assert positions([], among).tolist() == []
    assert positions(pd.Series(["p2"], dtype="str"), pa.array(among, pa.string())).tolist() == [2]


@pytest.mark.parametrize("rows, distinct", [
    ([], 0), ([("a", "none")], 1), ([("a", "none"), ("a", "flip")], 2), ([("a", "none"), ("b", "none")], 2),
    ([("b", "none"), ("a", "none"), ("b", "none")], 2), ([("a", "x"), ("a", "x"), ("a", "x")], 1),
    ([("a", "flip"), ("b", "none"), ("a", "none"), ("b", "none"), ("a", "flip")], 3)])
def test_distinct_count_counts_each_key_once(rows, distinct):
    t = pa.table({"patch_id": [r[0] for r in rows], "view": [r[1] for r in rows]},
                 schema=pa.schema([("patch_id", pa.string()), ("view", pa.string())]))
    assert distinct_count(t, ["patch_id", "view"]) == distinct
    assert distinct_count(t, ["patch_id"]) == len({r[0] for r in rows})


def _features(keys: list[tuple[str, str]]) -> Features:
    df = pd.DataFrame(keys, columns=["patch_id", "view"]).astype("str")
    return Features("toy", "r1", df, np.arange(len(keys), dtype=np.float32)[:, None], sorted(set(df["view"])))


def test_features_find_every_view_of_each_patch_with_one_view_or_several():
    one = _features([("b", "none"), ("a", "none"), ("c", "none")])
    rows, owner = one.rows_of(["c", "b"])
    assert rows.tolist() == [2, 0] and owner.tolist() == [0, 1]
    tta = _features([("b", "none"), ("a", "none"), ("b", "flip"), ("a", "flip"), ("c", "none")])
    rows, owner = tta.rows_of(pd.Series(["a", "c", "b"], dtype="str").array)
    assert rows.tolist() == [1, 3, 4, 0, 2] and owner.tolist() == [0, 0, 1, 2, 2]
    assert tta.rows_at(tta.locate(["b"]))[0].tolist() == [0, 2]


def test_features_name_a_patch_the_set_lacks():
    with pytest.raises(StoreError, match=r"lacks 1 patches \(e.g. zz\).*mitoprobe embed --model toy"):
        _features([("a", "none")]).locate(["a", "zz"])


def _preds(run: str, ids: list[str], split: str = "val") -> pd.DataFrame:
    return pd.DataFrame({"run_id": run, "patch_id": ids, "fold": 0, "test_set": "heldout", "probability": 0.5,
                         "threshold": 0.5, "prediction": 1, "split": split})


def test_an_append_of_many_frames_is_one_part_read_back_a_batch_at_a_time(tmp_path, monkeypatch):
    """Row groups and read batches of 7 rows (the threshold lowered): frames are never concatenated,
    a filtered read crosses batch and part boundaries, and the rows come back in order."""
    from mitoprobe.store.results import ResultTables

    monkeypatch.setattr(results_module, "RESULT_BATCH", 7)
    res = ResultTables(tmp_path)
    frames = [_preds("r1", [f"p{i}" for i in range(20)]), _preds("r2", [f"q{i}" for i in range(5)], "test"),
              _preds("r1", [f"p{i}" for i in range(20, 31)])]
    part = res.append("predictions", frames)
    meta = pq.ParquetFile(part).metadata
    assert res.parts("predictions") == [part] and meta.num_rows == 36
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [7, 7, 6, 5, 7, 4]
    res.append("predictions", _preds("r3", ["z"]))
    back = res.read("predictions", ["run_id", "patch_id"], where=lambda t: pa.compute.equal(t["run_id"], "r1"))
    assert back["patch_id"].tolist() == [f"p{i}" for i in range(31)]
    assert len(res.read("predictions")) == 37
    got = stored_predictions(type("S", (), {"results": res})(), ["r1", "r2"], split="test",
                             columns=["run_id", "patch_id"])
    assert got.columns.tolist() == ["run_id", "patch_id"] and got["patch_id"].tolist() == [f"q{i}" for i in range(5)]
    one = stored_predictions(type("S", (), {"results": res})(), ["r1", "r3"], columns=["probability"], patch_id="p20")
    assert one.columns.tolist() == ["probability"] and len(one) == 1  # filtered on columns it does not return
    # row groups whose statistics rule a run out are not read: r2's rows are the fourth row group alone
    f = pq.ParquetFile(part)
    assert results_module._row_groups(f, {"run_id": ["r2"]}) == [3]
    assert results_module._row_groups(f, {"run_id": ["r2"], "split": ["val"]}) == []
    assert results_module._row_groups(f, {"run_id": ["r0", "r1"], "no such column": [1]}) == [0, 1, 2, 4, 5]
    none = res.read("predictions", ["run_id"], where=lambda t: pa.compute.equal(t["run_id"], "r0"), only={"run_id": ["r0"]})
    assert none.columns.tolist() == ["run_id"] and none.empty  # every row group left out: an empty frame, not an error


def test_a_row_group_with_nulls_is_never_ruled_out(tmp_path):
    """A prediction without a split (written before held-out rows existed) counts as a test row: its row group
    may hold test rows whatever its other values' statistics say."""
    from mitoprobe.store.results import ResultTables

    res = ResultTables(tmp_path)
    part = res.append("predictions", _preds("r1", ["a", "b"], "val").assign(split=["val", None]))
    assert results_module._row_groups(pq.ParquetFile(part), {"split": ["test"]}) == [0]
    got = stored_predictions(type("S", (), {"results": res})(), ["r1"], split="test", columns=["patch_id"])
    assert got["patch_id"].tolist() == ["b"]


@pytest.mark.parametrize("bad, match", [
    (pd.DataFrame({"patch_id": ["x"], "probability": [0.1]}), r"without key column\(s\) \['run_id'\]"),
    (_preds("r9", ["x"]).assign(extra=1.0), "disagree on their columns"),
    (_preds("r9", ["x"]).assign(fold="zero"), "fold")])
def test_a_bad_frame_in_an_append_leaves_no_part(tmp_path, bad, match):
    """Frames are validated while written: a bad one, after good ones, fails the append and leaves the
    table as it was (the part is written to a temp file, removed)."""
    from mitoprobe.store.results import ResultTables

    res = ResultTables(tmp_path)
    res.append("predictions", _preds("r0", ["a"]))
    before = sorted(p.name for p in (tmp_path / "results").rglob("*"))
    with pytest.raises(StoreError, match=match):
        res.append("predictions", [_preds("r1", ["p", "q"]), bad])
    assert sorted(p.name for p in (tmp_path / "results").rglob("*")) == before
    assert res.append("predictions", [_preds("r1", [])]) is None  # no rows: no part


def test_one_datasets_patches_are_read_from_its_own_parts(tiny_store, tmp_path):
    from mitoprobe.store.cohort_example import write_example_cohort

    tiny_store.import_cohort("Lab", manifest=write_example_cohort(tmp_path / "cohort"))  # some unlabelled
    every = tiny_store.patches(columns=["patch_id", "dataset", "label"])
    lab = tiny_store.patches(columns=["patch_id", "label"], dataset="Lab")
    want = every[every["dataset"] == "Lab"][["patch_id", "label"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(lab.reset_index(drop=True), want)
    assert len(lab) > 0 and lab["label"].isna().any() and tiny_store.patches(columns=["patch_id"], dataset="Nowhere").empty
    amibr = tiny_store.patches(columns=["patch_id"], dataset="AMi-Br")
    assert len(amibr) == int((every["dataset"] == "AMi-Br").sum())
