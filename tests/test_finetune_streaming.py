"""Fine-tuning streams its PNGs from the store's parts (issue 30): nothing holds a fold's images.

* ``PatchParts.locate`` finds each patch's (part, row group, row) from the ids and footers only;
* ``StoredPngs`` reads the row group a sample needs, keeps only the rows it needs, caches at most its budget
  per process (not pickled into workers), and says so when the table changed under a run;
* a fold trained from the store is the fold trained from PNGs held in memory (same checkpoint, same
  probabilities), for the per-sample path with and without workers and for batch augmentation;
* above ``CHUNK_BYTES`` an epoch keeps its draws but reads them chunk by chunk (each row group about once),
  independent of the worker count; above ``DECODED_BUDGET`` batch augmentation decodes per batch and trains
  the same; a lab's cohort with unlabelled patches and other sizes trains (``train_on``) and is scored.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import make_six_slide_store
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.embedder.recipes import get_recipe
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune import data as D
from mitoprobe.finetune import train as T
from mitoprobe.finetune.job import fold_images
from mitoprobe.store import Store
from mitoprobe.store import patch_parts as PP
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.errors import FinetuneError
from tiny_paper import tiny_vit

TINY = tiny_vit("vit_stream_test.random").name


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """The six-slide benchmark, then a lab's cohort in row groups of 7: its labelled patches are training
    patches on 6 slides, 4 are unlabelled, sizes 96 to 200 px (JPEG and PNG)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stream")
    st = make_six_slide_store(root)
    manifest = write_example_cohort(root / "cohort")
    m = pd.read_csv(manifest)
    m["split"], m["slide"] = "train", [f"lab-{i % 6}" for i in range(len(m))]
    m.to_csv(manifest, index=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PP, "ROW_GROUP", 7)
        st.import_cohort("MyLab", manifest=manifest)
    return st


def _ids(st: Store, dataset: str) -> list[str]:
    p = st.patches(columns=["patch_id", "dataset"])
    return p.loc[p["dataset"] == dataset, "patch_id"].tolist()


def _reads(monkeypatch) -> list:
    """Every row group read through ``finetune.data``: (part, group)."""
    seen, real = [], D.read_row_group
    monkeypatch.setattr(D, "read_row_group", lambda path, g, *a, **kw: seen.append((path, g)) or real(path, g, *a, **kw))
    return seen


def _fold(st: Store, train_on: str = "AMi-Br", in_memory: bool = False, cfg: FinetuneConfig | None = None
          ) -> T.FoldImages:
    proto = load_protocol(st, train_on=train_on)
    targets = (cfg.targets, cfg.aux_subtypes > 0) if cfg else ()
    data = fold_images(st, proto, 0, list(proto.tests), *targets)
    if in_memory:  # what fold_images gave before issue 30: every PNG of the fold in a dict
        need = [*data.train_ids, *data.val_ids, *(p for v in data.test_ids.values() for p in v)]
        data.images = st.images(need)
    return data


# -- locating and reading ------------------------------------------------------------------------------------------

def test_locate_finds_each_patch_from_ids_and_footers(store):
    ids = _ids(store, "MyLab")[::-1] + ["not-stored"] + _ids(store, "AMi-Br")[:3]
    loc = store.patch_parts.locate(ids)
    assert loc.part[len(ids) - 4] == -1 and (np.delete(loc.part, len(ids) - 4) >= 0).all()
    for i, pid in enumerate(ids):
        if loc.part[i] < 0:
            continue
        t = pq.ParquetFile(loc.parts[loc.part[i]]).read_row_group(int(loc.group[i]), columns=["patch_id", "png"])
        assert t["patch_id"][int(loc.row[i])].as_py() == pid
        assert 0 < loc.png_bytes[i] <= max(len(b) for b in t["png"].to_pylist()) * 1.1
    mylab = loc.group[:20]
    assert sorted(set(mylab.tolist())) == [0, 1, 2]  # 20 patches in row groups of 7


def test_stored_pngs_read_by_row_group_and_cache_within_budget(store, monkeypatch):
    ids = _ids(store, "MyLab")
    want = store.images(ids)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    pngs = D.StoredPatches(store.patch_parts, ids).pngs([ids[i] for i in order])  # cache 0: the last group only
    reads = _reads(monkeypatch)
    assert [pngs[i] for i in pngs.storage_order()] == [want[ids[order[i]]] for i in pngs.storage_order()]
    assert len(reads) == 3 == len(set(reads)) and len(pngs._cache) == 1  # storage order: each group once
    assert [pngs[i] for i in range(len(ids))] == [want[ids[i]] for i in order]  # any order: the same bytes
    fresh = D.StoredPatches(store.patch_parts, ids).pngs([ids[i] for i in order], cache_bytes=10**9)
    reads.clear()
    assert dict(fresh.in_storage_order()) == {i: want[ids[order[i]]] for i in range(len(ids))}
    assert len(reads) == 3 and not fresh._cache  # what decodes a whole set once: each group once, nothing kept
    big = D.StoredPatches(store.patch_parts, ids).pngs(ids, cache_bytes=10**9)
    reads.clear()
    for _ in range(2):
        [big[i] for i in rng.permutation(len(ids))]
    assert len(reads) == 3  # a cache that holds them all reads each group once
    kept = sum(a.nbytes for a in big._cache.values())
    assert sum(len(want[p]) for p in ids) <= kept <= sum(len(want[p]) for p in ids) + 1024  # the needed rows only
    clone = pickle.loads(pickle.dumps(big))  # what a spawned worker receives: no cached PNG
    assert not clone._cache and clone[5] == want[ids[5]]


def test_a_missing_patch_and_a_changed_table_are_refused_by_name(store, tmp_path):
    ids = _ids(store, "MyLab")
    with pytest.raises(FinetuneError, match="1 patch.*not in the store.*nope"):
        D.StoredPatches(store.patch_parts, [*ids, "nope"])
    pngs = D.StoredPatches(store.patch_parts, ids).pngs(ids)
    copy = Store(shutil.copytree(store.root, tmp_path / "copy"))
    moved = D.StoredPatches(copy.patch_parts, ids).pngs(ids)
    part = moved.paths[0]
    t = pq.read_table(part)
    pq.write_table(t.take(pa.array(np.arange(len(t))[::-1].copy())), part, row_group_size=7)  # same rows, reordered
    with pytest.raises(FinetuneError, match="row group 0 no longer holds the patches.*fold resumes"):
        moved[0]
    assert pngs[0] == store.images([ids[0]])[ids[0]]


def test_fold_images_reads_no_png(store, monkeypatch):
    reads = _reads(monkeypatch)
    monkeypatch.setattr(Store, "images", lambda *a: pytest.fail("fold_images read the PNGs"))
    monkeypatch.setattr(PP, "read_row_group", lambda *a, **kw: pytest.fail("a row group was read"))
    data = _fold(store)
    assert isinstance(data.images, D.StoredPatches) and not reads
    assert isinstance(data.pngs(data.train_ids), D.StoredPngs) and len(data.pngs(data.val_ids)) == len(data.val_ids)


# -- training from the store is training from memory ----------------------------------------------------------------

def _cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig.paper(TINY, "lora", **{"max_epochs": 2, "max_steps": 3, "batch_size": 4, **kw})


def _same_fold(a: dict, b: dict, pa_: Path, pb: Path) -> None:
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]
    assert [e["train_loss"] for e in a["history"]] == [e["train_loss"] for e in b["history"]]
    x, y = T.read_predictions(pa_), T.read_predictions(pb)
    assert x[["split", "patch_id"]].equals(y[["split", "patch_id"]])
    np.testing.assert_allclose(x["probability"], y["probability"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_fold_from_the_store_trains_as_one_from_memory(store, tmp_path, workers):
    cfg = _cfg(hed=0.05, dihedral=True)
    rt = T.Runtime(progress=False, num_workers=workers)
    ref = T.train_fold(cfg, _fold(store, in_memory=True), tmp_path / "memory", rt)
    got = T.train_fold(cfg, _fold(store), tmp_path / "store", rt)
    _same_fold(ref, got, tmp_path / "memory", tmp_path / "store")
    preds = T.read_predictions(tmp_path / "store")
    assert set(preds["split"]) == {"val", "AMi-Br-test", "AtNorM-Br", "AtNorM-MD"}  # MyLab is train-only here


def test_batch_augmentation_within_and_above_the_decoded_budget_trains_the_same(store, tmp_path, monkeypatch):
    cfg = FinetuneConfig.preset("offline", max_epochs=2, max_steps=2, batch_size=8, tta="none", cpu_bf16=False)
    stacked, decoded = [], []
    real_stack, real_decode = D.stack_pixels, T.decode_for_eval
    monkeypatch.setattr(D, "stack_pixels", lambda *a: stacked.append(1) or real_stack(*a))
    monkeypatch.setattr(T, "decode_for_eval", lambda *a: decoded.append(real_decode(*a)) or decoded[-1])
    ref = T.train_fold(cfg, _fold(store, in_memory=True, cfg=cfg), tmp_path / "memory", T.Runtime(progress=False))
    got = T.train_fold(cfg, _fold(store, cfg=cfg), tmp_path / "store", T.Runtime(progress=False))
    assert len(stacked) == 2 and all(d is not None for d in decoded)
    _same_fold(ref, got, tmp_path / "memory", tmp_path / "store")
    monkeypatch.setattr(D, "DECODED_BUDGET", 0)  # neither the pixels nor the held-out inputs fit: per batch
    decoded.clear()
    for w in (0, 2):
        streamed = T.train_fold(cfg, _fold(store, cfg=cfg), tmp_path / f"streamed{w}",
                                T.Runtime(progress=False, num_workers=w))
        _same_fold(ref, streamed, tmp_path / "memory", tmp_path / f"streamed{w}")
    assert len(stacked) == 2 and decoded == [None, None]


def test_decoded_budget_bounds_what_is_kept(store, monkeypatch):
    data = _fold(store)
    val = data.pngs(data.val_ids)
    tf = FinetuneConfig.preset("offline").eval_preprocess(get_recipe("offline_cnn64.random"))
    full = T.decode_for_eval(val, tf)
    assert full.shape[0] == len(val)
    monkeypatch.setattr(D, "DECODED_BUDGET", full.numel() * 4 - 1)
    assert T.decode_for_eval(val, tf) is None
    train = data.pngs(data.train_ids)
    one = D._pixels(train[0]).nbytes
    monkeypatch.setattr(D, "DECODED_BUDGET", one * len(train))
    assert isinstance(D.training_pixels(train), torch.Tensor)
    monkeypatch.setattr(D, "DECODED_BUDGET", one * len(train) - 1)
    streamed = D.training_pixels(train)
    stacked = torch.from_numpy(np.stack([D.decode_png(train[i]) for i in range(len(train))])).permute(0, 3, 1, 2)
    assert isinstance(streamed, D.PixelDataset) and torch.equal(streamed[3], stacked[3])
    assert torch.equal(D.stack_pixels(train), stacked)  # read in storage order, put in the fold's order
    mixed = _fold(store, "MyLab")
    sizes = mixed.pngs(mixed.train_ids)  # the cohort's patches differ in size
    with pytest.raises(FinetuneError, match="one size"):
        D.stack_pixels(sizes)
    monkeypatch.setattr(D, "DECODED_BUDGET", 0)
    per_batch = D.training_pixels(sizes)
    with pytest.raises(FinetuneError, match="one size"):
        [per_batch[i] for i in range(len(sizes))]


# -- above CHUNK_BYTES: chunked epochs -----------------------------------------------------------------------------

def test_chunked_epochs_keep_the_draws_read_each_group_once_and_ignore_workers(store, tmp_path, monkeypatch):
    data = _fold(store, "MyLab")
    pngs = data.pngs(data.train_ids, cache_bytes=0)
    assert pngs.chunks(1) is None  # within CHUNK_BYTES: the draws' own order
    plain = list(D.EpochSampler(data.train_y, "weighted", 40, 1))
    monkeypatch.setattr(D, "CHUNK_BYTES", 1)  # every row group a chunk of its own
    chunks = pngs.chunks(1)
    assert len(set(chunks.tolist())) == len(pngs.group_bytes) == 3
    assert not np.array_equal(chunks, pngs.chunks(2)) or not np.array_equal(pngs.chunks(3), chunks)
    chunked = list(D.EpochSampler(data.train_y, "weighted", 40, 1, pngs))
    assert sorted(chunked) == sorted(plain) and chunked != plain  # the same (position, seed) draws, regrouped
    seq = chunks[[p for p, _ in chunked]]
    assert (np.diff(seq) != 0).sum() == len(set(seq.tolist())) - 1  # each chunk's draws together
    assert [pair for pair in chunked if chunks[pair[0]] == seq[0]] == [pair for pair in plain if chunks[pair[0]] == seq[0]]
    reads = _reads(monkeypatch)
    [pngs[p] for p, _ in chunked]
    assert len(reads) == len(set(seq.tolist()))  # a cache of one row group reads each group once an epoch
    cfg = _cfg(sampler="weighted")
    recs = [T.train_fold(cfg, _fold(store, "MyLab"), tmp_path / f"w{w}", T.Runtime(progress=False, num_workers=w))
            for w in (0, 2)]
    _same_fold(recs[0], recs[1], tmp_path / "w0", tmp_path / "w2")


def test_the_training_cache_budget_changes_reads_not_results(store, tmp_path, monkeypatch):
    cfg = _cfg(max_epochs=1, max_steps=4)
    reads = _reads(monkeypatch)
    ref = T.train_fold(cfg, _fold(store, "MyLab"), tmp_path / "cached", T.Runtime(progress=False))
    cached = len(reads)
    monkeypatch.setattr(T, "TRAIN_CACHE_BYTES", 0)  # one row group at a time: random draws read again
    reads.clear()
    got = T.train_fold(cfg, _fold(store, "MyLab"), tmp_path / "uncached", T.Runtime(progress=False))
    assert len(reads) > cached
    _same_fold(ref, got, tmp_path / "cached", tmp_path / "uncached")


def test_a_labs_cohort_with_unlabelled_patches_trains_and_is_scored(store, tmp_path):
    data = _fold(store, "MyLab")
    labelled = store.patches().query("dataset == 'MyLab' and y.notna()")["patch_id"]
    assert len(data.train_ids) + len(data.val_ids) == len(labelled) == 16
    rec = T.train_fold(_cfg(), data, tmp_path / "fold0", T.Runtime(progress=False))
    preds = T.read_predictions(tmp_path / "fold0")
    assert rec["n_train"] == len(data.train_ids) and set(preds.loc[preds["split"] == "val", "patch_id"]) == set(data.val_ids)
    assert preds["probability"].between(0, 1).all() and preds["patch_id"].isin(labelled).sum() == len(data.val_ids)


def test_finetune_train_on_a_labs_cohort_is_its_own_run_with_the_cohorts_folds(store, tmp_path):
    """``mitoprobe finetune --train-on MyLab``: the folds are the cohort's labelled split=train patches, the
    run (and family) differs from the AMi-Br one, and the benchmark's test sets are scored."""
    import json

    from click.testing import CliRunner

    from mitoprobe.cli import cli
    from mitoprobe.finetune import finetune

    st = Store(shutil.copytree(store.root, tmp_path / "st"))
    cfg = _cfg(train_on="MyLab")
    assert cfg.options()["train_on"] == "MyLab" and "train_on" not in _cfg().to_dict()  # older runs keep their keys
    s = finetune(st, cfg, "0", num_workers=0, progress=False, n_boot=5)
    conf = json.loads((s.run_dir / "config.json").read_text())
    assert conf["protocol"]["train_on"] == "MyLab" and conf["config"]["train_on"] == "MyLab"
    runs = st.results.read("runs")
    labelled = st.patches().query("dataset == 'MyLab' and y.notna()")
    fold0 = load_protocol(st, train_on="MyLab").fold_data(0)
    assert set(runs["n_train"]) == {len(fold0.train_idx)} and len(fold0.train_idx) < len(labelled)
    assert set(runs["test_set"]) == set(load_protocol(st, train_on="MyLab").tests) != set()
    other = finetune(st, _cfg(), "0", num_workers=0, progress=False, n_boot=5)
    assert other.run_key != s.run_key and other.family_id != s.family_id
    res = CliRunner().invoke(cli, ["finetune", "--help"])
    assert "--train-on" in res.output
