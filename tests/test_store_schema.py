"""The store's schemas (one module), datasets as specs (a new dataset is one spec) and the store
fingerprint (cheap, and split so that one job's writes do not invalidate another part's caches)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_benchmark, png_bytes

from mitoprobe.store import BENCHMARK, DataError, Store, StoreError, schema
from mitoprobe.store.atomic import TMP_PREFIX, write_parquet
from mitoprobe.store.datasets import ANNOTATIONS, SPLIT, CsvSpec, DatasetSpec, spec_of

# A made-up dataset: PNGs under Toy/{Atypical,Normal}, a CSV listing the train patches and one with
# two experts' True/False votes and the slide of every patch.
TOY = DatasetSpec(
    name="Toy",
    csvs=(CsvSpec("toy_train.csv", SPLIT, filename="{name}", split="train", purpose="lists the Toy train patches",
                  label="label"),
          CsvSpec("toy_votes.csv", ANNOTATIONS, filename="{name}", purpose="holds the Toy votes", values="bool",
                  label="atypical", votes=("vote_a", "vote_b"), slide="slide")),
    expected_counts={"train": (2, 1), "test": (2, 1)},
)


def add_toy(bench, votes_rows=None):
    """Four Toy patches (2 per label) beside the tiny benchmark; t0 and t2 are train patches."""
    rng = np.random.default_rng(5)
    rows = []
    for i, label in enumerate(("Atypical", "Atypical", "Normal", "Normal")):
        (bench / "Toy" / label).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        (bench / "Toy" / label / f"t{i}.png").write_bytes(png_bytes(pixels))
        rows.append(dict(name=f"t{i}.png", slide=f"s{i}", atypical=label == "Atypical",
                         vote_a=label == "Atypical", vote_b=i == 0))
    pd.DataFrame([dict(name="t2.png", label="Normal"), dict(name="t0.png", label="Atypical")]).to_csv(
        bench / "toy_train.csv", index=False)
    pd.DataFrame(votes_rows if votes_rows is not None else rows).to_csv(bench / "toy_votes.csv", index=False)
    return bench


# -- datasets as data --------------------------------------------------------------------------
def test_a_new_dataset_is_one_spec(tmp_path):
    bench = add_toy(make_benchmark(tmp_path))
    st = Store(tmp_path / "store")
    out = st.import_dataset(bench, bench / "AMI-BR.csv", specs=(*BENCHMARK, TOY))
    df = st.patches()
    assert df["dataset"].drop_duplicates().tolist() == ["AMi-Br", "AtNorM-Br", "AtNorM-MD", "Toy"]
    toy = df[df["dataset"] == "Toy"].set_index("filename")
    assert toy["split"].to_dict() == {"t0.png": "train", "t1.png": "test", "t2.png": "train", "t3.png": "test"}
    assert toy["train_row"].tolist()[::2] == [1, 0] and toy["train_row"].iloc[1::2].isna().all()  # row in toy_train.csv
    assert toy["y"].tolist() == [1, 1, 0, 0] and toy["relpath"]["t3.png"] == "Toy/Normal/t3.png"
    assert toy["slide"].tolist() == ["s0", "s1", "s2", "s3"]
    assert (toy["n_experts"] == 2).all() and toy["expert3_atypical"].isna().all()
    assert toy["expert1_atypical"].tolist() == [True, True, False, False]
    assert toy["expert2_atypical"].tolist() == [True, False, False, False]
    # Toy matches its expected counts; the tiny AMi-Br datasets do not, which is a note, not an error.
    (note,) = [n for n in out.notes if n.startswith("counts differ")]
    assert "AMi-Br train has 8 patches" in note and "Toy" not in note
    assert all(pq.read_schema(p).equals(schema.PATCHES) for p in st.patch_parts.part_paths())


def test_a_new_spec_gets_every_check(tmp_path):
    bench = make_benchmark(tmp_path)
    rows = [dict(name="t0.png", slide="s0", atypical="False", vote_a="True", vote_b="maybe"),
            dict(name="t1.png", slide="s1", atypical="True", vote_a="True", vote_b="True")]
    add_toy(bench, votes_rows=rows)
    with pytest.raises(DataError) as exc:
        Store(tmp_path / "store").import_dataset(bench, specs=(TOY,))
    msg = str(exc.value)
    votes = bench / "toy_votes.csv"
    assert f"{votes} row 2: vote_b must be True/False, got 'maybe'" in msg
    assert f"{votes} row 2: t0.png is labelled Normal (column atypical)" in msg and "contradicts its folder" in msg
    assert f"{bench / 'Toy' / 'Normal' / 't3.png'}: present but not listed in {votes}" in msg
    assert not (tmp_path / "store" / "patches.parquet").exists()


def test_spec_helpers_and_counts_note(tmp_path):
    assert [s.name for s in BENCHMARK] == ["AMi-Br", "AtNorM-Br", "AtNorM-MD"]
    assert spec_of("AtNorM-MD").expected_counts == {"test": (2107, 219)}
    assert spec_of("AMi-Br").expected_counts == {"train": (2894, 648), "test": (826, 184)}
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        spec_of("nope")
    with pytest.raises(ValueError, match="one label to 1"):
        DatasetSpec(name="bad", label_folders={"A": 1, "B": 1})
    bench = add_toy(make_benchmark(tmp_path))
    (bench / "Toy" / "Normal" / "t3.png").unlink()
    votes = pd.read_csv(bench / "toy_votes.csv")
    votes[votes["name"] != "t3.png"].to_csv(bench / "toy_votes.csv", index=False)
    out = Store(tmp_path / "store").import_dataset(bench, specs=(TOY,))
    assert out.notes == ["counts differ from the published benchmark (fine for a subset, otherwise check the "
                         "download): Toy test has 1 patches (1 atypical), published 2 (1)"]


def test_csv_for_no_dataset_refused(tmp_path):
    bench = add_toy(make_benchmark(tmp_path))
    with pytest.raises(DataError, match="no dataset being imported .* reads AMI-BR.csv"):
        Store(tmp_path / "store").import_dataset(bench, bench / "AMI-BR.csv", specs=(TOY,))


# -- schemas -----------------------------------------------------------------------------------
def test_stored_tables_match_the_schemas(tiny_store):
    assert all(pq.read_schema(p).equals(schema.PATCHES) for p in tiny_store.patch_parts.part_paths())
    assert tuple(tiny_store.patches().columns) == schema.PATCH_COLUMNS
    # duplicate_group has no value in the tiny data: stored as a string column all the same.
    assert tiny_store.patches()["duplicate_group"].isna().all()
    ids = tiny_store.patches()["patch_id"].tolist()
    w = tiny_store.features.writer("r1", "toy", {"cls": 4, "mean": 2}, {})
    w.write_chunk(ids, ["none"] * len(ids), {"cls": np.ones((len(ids), 4)), "mean": np.ones((len(ids), 2))})
    part = tiny_store.features.get("r1").parts[0]
    assert pq.read_schema(part).equals(schema.embedding_schema({"cls": 4, "mean": 2}))


def test_folds_validated(tiny_store):
    good = pd.DataFrame({"patch_id": ["a", "b"], "train_row": pd.array([0, None], "Int64"), "slide": ["s", None],
                         "label": ["Atypical", "Normal"], "y": [1, 0], "fold": [0, 1]})
    tiny_store.write_folds(good)
    assert pq.read_schema(tiny_store.folds_path).equals(schema.FOLDS)
    before = tiny_store.folds_path.read_bytes()
    for bad, col in ((good.assign(fold=["0", "1"]), "'fold'"), (good.drop(columns="y"), "['y']"),
                     (good.assign(extra=1), "['extra']"), (good.assign(fold=[0.5, 1.0]), "'fold'")):
        with pytest.raises(StoreError) as exc:
            tiny_store.write_folds(bad)
        assert str(tiny_store.folds_path) in str(exc.value) and col in str(exc.value)
    assert tiny_store.folds_path.read_bytes() == before


def test_result_parts_get_the_schema(tiny_store):
    res = tiny_store.results
    # An all-missing column (pandas: object of None) and a float column of whole numbers are cast.
    res.append("runs", pd.DataFrame({"run_id": ["a"], "fold": [2.0], "model": [None], "extra_metric": [0.3]}))
    t = pq.read_table(res.parts("runs")[0])
    assert t.schema.names == [*schema.RUN_COLUMNS, "extra_metric"]
    assert t.select(list(schema.RUN_COLUMNS)).schema.equals(schema.RUNS)
    assert t["fold"].to_pylist() == [2] and t["auroc"].null_count == 1
    for bad, col in (({"run_id": ["b"], "fold": ["x"]}, "'fold'"), ({"run_id": ["b"], "n": [1.5]}, "'n'"),
                     ({"model": ["m"]}, "['run_id']")):
        with pytest.raises(StoreError) as exc:
            res.append("runs", pd.DataFrame(bad))
        assert str(res.table_dir("runs")) in str(exc.value) and col in str(exc.value)
    with pytest.raises(StoreError, match="unknown result table 'run'"):
        res.append("run", pd.DataFrame({"run_id": ["c"]}))
    assert len(res.parts("runs")) == 1
    # A part written before the schema (other columns, other types) still reads with the new ones.
    write_parquet(pa.table({"run_id": ["old"], "fold": [1.0], "bal_acc": [0.7]}),
                  res.table_dir("runs") / "part-00000000T000000-old.parquet")
    runs = tiny_store.sql("select run_id, fold, bal_acc, extra_metric from runs order by run_id")
    assert runs["run_id"].tolist() == ["a", "old"] and runs["fold"].tolist() == [2, 1]
    assert res.read("runs").set_index("run_id").loc["old", "bal_acc"] == 0.7


def test_validate_messages():
    t = pa.table({"patch_id": ["a"], "view": ["none"], "cls": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))})
    assert schema.validate(t, schema.embedding_schema({"cls": 2}), "x").equals(t)
    with pytest.raises(StoreError, match=r"^part\.parquet: .*missing column\(s\) \['mean'\]"):
        schema.validate(t, schema.embedding_schema({"cls": 2, "mean": 3}), "part.parquet")
    with pytest.raises(StoreError, match="part.parquet: .*'cls'"):
        schema.validate(t, schema.embedding_schema({"cls": 3}), "part.parquet")  # wrong dimension
    with pytest.raises(StoreError, match="'patch_id' is int64, expected large_string"):
        schema.validate(pa.table({"patch_id": [1]}), pa.schema([("patch_id", pa.large_string())]), "f")


# -- fingerprint -------------------------------------------------------------------------------
def test_fingerprint_parts_change_independently(tiny_store, tmp_path):
    fp0 = tiny_store.fingerprint()
    assert fp0 == tiny_store.fingerprint() and hash(fp0) == hash(tiny_store.fingerprint())
    assert fp0.sets == () and fp0.set("r1") == ()
    ids = tiny_store.patches()["patch_id"].tolist()
    w = tiny_store.features.writer("r1", "toy", {"cls": 4}, {})
    w.write_chunk(ids[:5], ["none"] * 5, {"cls": np.ones((5, 4))})
    fp1 = tiny_store.fingerprint()
    assert (fp1.patches, fp1.results) == (fp0.patches, fp0.results) and fp1.set("r1") != ()
    w.write_chunk(ids[5:], ["none"] * (len(ids) - 5), {"cls": np.ones((len(ids) - 5, 4))})
    fp2 = tiny_store.fingerprint()
    assert (fp2.patches, fp2.results) == (fp0.patches, fp0.results) and fp2.set("r1") != fp1.set("r1")
    w.finalize(expected_rows=len(ids))
    fp3 = tiny_store.fingerprint()
    assert fp3.set("r1") != fp2.set("r1")  # COMPLETE appeared
    tiny_store.results.append("runs", pd.DataFrame({"run_id": ["a"]}))
    fp4 = tiny_store.fingerprint()
    assert (fp4.patches, fp4.sets) == (fp3.patches, fp3.sets) and fp4.results != fp3.results
    # An in-flight write is not state, and taking a fingerprint never sweeps it.
    tmp = tiny_store.results.table_dir("runs") / f"{TMP_PREFIX}part-x.parquet"
    tmp.write_bytes(b"half")
    os.utime(tmp, (0, 0))
    assert tiny_store.fingerprint() == fp4 and tmp.exists()
    other = make_benchmark(tmp_path / "other", seed=3)
    tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True)
    fp5 = tiny_store.fingerprint()
    assert (fp5.results, fp5.sets) == (fp4.results, fp4.sets) and fp5.patches != fp4.patches


def test_fingerprint_never_opens_parquet(tiny_store, monkeypatch):
    import pyarrow.parquet

    def boom(*a, **k):
        raise AssertionError("fingerprint read Parquet")

    monkeypatch.setattr(pyarrow.parquet, "read_table", boom)
    monkeypatch.setattr(pyarrow.parquet, "read_schema", boom)
    monkeypatch.setattr(pyarrow.parquet, "ParquetFile", boom)
    assert tiny_store.fingerprint().patches[0] == "MANIFEST.json"
