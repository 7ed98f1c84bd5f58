"""Derived views (store/derived.py, classifiers/derived.py, dashboard/derived_views.py): the embedding map's
PCA and the robustness index for every k are built at the end of `embed`, read back by the map page, stale
(never shown) once the set or the patches change, rebuilt by the next `embed`, and known to `store check` /
`store repair`. Every store here holds a lab's cohort with unlabelled patches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mitoprobe
from conftest import REPO, make_benchmark, run_cli
from dashboard_store import open_page
from mitoprobe.classifiers import derived as compute
from mitoprobe.classifiers import robustness
from mitoprobe.store import Store, derived, integrity
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.errors import StoreError, StoreLockedError

MODEL = "handcrafted"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Store:
    """The tiny benchmark and a cohort with 4 unlabelled patches, embedded through the library (as the CLI)."""
    root = tmp_path_factory.mktemp("derived")
    bench = make_benchmark(root / "bench", n_per_class=6, seed=0)
    st = Store(root / "store")
    st.import_dataset(bench, bench / "AMI-BR.csv")
    st.import_cohort("MyLab", manifest=write_example_cohort(root / "cohort"))
    mitoprobe.open(st.root).embed(MODEL, num_workers=0)
    assert st.patches()["y"].isna().sum() == 4
    return st


@pytest.fixture
def store(base, tmp_path) -> Store:
    return Store(shutil.copytree(base.root, tmp_path / "store"))


def eset_of(st: Store):
    (eset,) = st.features.sets()
    return eset


def spec_of(st: Store, kind: str) -> derived.ViewSpec:
    return next(s for s in derived.views(st.root, eset_of(st)) if s.kind == kind)


def current(st: Store, kind: str) -> derived.Status:
    s = derived.status(spec_of(st, kind), derived.set_state(st, eset_of(st)))
    assert s.state == "current", s
    return s


def add_cohort(st: Store, tmp_path, name: str = "Other") -> int:
    """Import a second cohort (20 patches, 4 unlabelled); returns how many patches were added."""
    st.import_cohort(name, manifest=write_example_cohort(tmp_path / name, seed=7))
    return 20


def reference_index(st: Store, k: int, queries=None) -> dict:
    """The index by brute force over the labelled patches (classifiers.robustness's own functions)."""
    eset = eset_of(st)
    keys, X = st.features.read(eset.name, eset.recipe_id, views=["none"])
    meta = st.patches(columns=["patch_id", "dataset", "split", "y"]).set_index("patch_id").loc[keys["patch_id"]]
    lab = meta["y"].notna().to_numpy()
    meta, X = meta[lab], X[lab]
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    Z = robustness._zscore(np.asarray(X, np.float64), train)
    nn = robustness.neighbours(Z, k, queries=queries)
    return robustness.robustness_index(meta["y"].to_numpy(int), meta["dataset"].to_numpy(), nn, queries)


# -- built by embed, read back -------------------------------------------------------------------------
def test_embed_builds_both_views_which_read_back(store):
    eset = eset_of(store)
    proj = current(store, "projection")
    keys, X = store.features.read(eset.name, eset.recipe_id, views=["none"])
    xy = proj.table.to_pandas()
    assert xy["patch_id"].tolist() == keys["patch_id"].tolist()  # every patch, unlabelled ones included
    # all rows fit the axes (below PCA_FIT_ROWS): the map is the PCA of the standardised vectors
    from sklearn.decomposition import PCA

    Z = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1)
    want = PCA(n_components=2, random_state=0).fit(Z)
    assert np.allclose(xy[["x", "y"]].to_numpy(), want.transform(Z), atol=1e-4)
    basis = proj.manifest["basis"]
    assert basis["fit_rows"] == basis["fit_of"] == len(keys)
    assert np.allclose(basis["explained"], want.explained_variance_ratio_)

    rob = current(store, "robustness")
    df = rob.table.to_pandas().set_index("k")
    n_lab = int(store.patches()["y"].notna().sum())
    assert df.index.tolist() == list(range(derived.K_MIN, min(derived.K_MAX, n_lab - 1) + 1))
    assert rob.manifest["info"]["unlabelled"] == 4 and (df["n"] == n_lab).all()
    for k in (derived.K_MIN, 10, int(df.index.max())):  # each k is a prefix of one K_MAX search
        ref = reference_index(store, k)
        for c in ("sl_os", "ol_ss", "label_agreement", "site_agreement", "label_base_rate", "site_base_rate"):
            assert df.loc[k, c] == pytest.approx(ref[c]), (k, c)
    assert integrity.check(store) == []
    # an embed with nothing to do writes nothing: the views are current
    before = {p: p.stat().st_mtime_ns for p in derived.folder(store.root, eset.recipe_id).iterdir()}
    mitoprobe.open(store.root).embed(MODEL, num_workers=0)
    assert {p: p.stat().st_mtime_ns for p in derived.folder(store.root, eset.recipe_id).iterdir()} == before


def test_same_index_as_report_robustness_without_unlabelled_patches(tmp_path):
    bench = make_benchmark(tmp_path / "bench", n_per_class=6, seed=1)
    st = Store(tmp_path / "store")
    st.import_dataset(bench, bench / "AMI-BR.csv")
    mitoprobe.open(st.root).embed(MODEL, num_workers=0)
    df = current(st, "robustness").table.to_pandas().set_index("k")
    for k in (5, 10, 20):
        ref = robustness.site_robustness(st, MODEL, k=k)
        assert (df.loc[k, "sl_os"], df.loc[k, "ol_ss"]) == (ref["sl_os"], ref["ol_ss"])
        assert df.loc[k, "robustness_index"] == pytest.approx(ref["robustness_index"])


# -- thresholds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [7, 100, 1000])
def test_nearest_is_an_exact_search(block):
    """The streamed search (blocks folded into a running top k: a dense first block, then only what beats
    each query's k-th best) finds exactly what classifiers.robustness's one-shot search finds."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 8))
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    queries = np.sort(rng.choice(400, 60, replace=False))
    got = compute._nearest(U[queries], queries, ((a, U[a:a + block]) for a in range(0, 400, block)), 10)
    assert (got == robustness.neighbours(X, 10, queries=queries)).all()


def test_query_sample_and_small_blocks_give_the_reference_counts(store, monkeypatch):
    monkeypatch.setattr(robustness, "MAX_QUERIES", 9)  # a sample of queries, searched among all
    monkeypatch.setattr(compute, "BLOCK_ROWS", 3)  # blocks of a part each, folded into the running top k
    monkeypatch.setattr(robustness, "SIM_CELLS", 20)  # two queries at a time
    compute.build(store, eset_of(store).recipe_id, force=True)
    df = current(store, "robustness").table.to_pandas().set_index("k")
    n = int(df["n"].iloc[0])
    queries = np.sort(np.random.default_rng(robustness.SAMPLE_SEED).choice(n, 9, replace=False))
    assert (df["queries"] == 9).all()
    for k in (5, 12):
        ref = reference_index(store, k, queries)
        assert (df.loc[k, "sl_os"], df.loc[k, "ol_ss"]) == (ref["sl_os"], ref["ol_ss"])


def test_too_few_labelled_patches_or_sites_is_stored_as_a_reason(store, tmp_path, monkeypatch):
    monkeypatch.setattr(derived, "K_MIN", 60)  # more neighbours than the set's labelled patches
    compute.build(store, eset_of(store).recipe_id, force=True)
    rob = current(store, "robustness")
    assert rob.table.num_rows == 0 and "more than 60 labelled patches" in rob.manifest["info"]["reason"]
    monkeypatch.undo()
    one = Store(tmp_path / "one-site")  # a lab's cohort alone: one site
    one.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "c"))
    mitoprobe.open(one.root).embed(MODEL, num_workers=0)
    rob = current(one, "robustness")
    assert rob.table.num_rows == 0 and "at least two datasets" in rob.manifest["info"]["reason"]
    at = open_page(one.root, "map", monkeypatch)
    assert any("at least two datasets" in i.value for i in at.info) and len(at.get("vega_lite_chart")) == 1


def test_sampled_axes_and_refit_after_growth(store, tmp_path, monkeypatch):
    eset = eset_of(store)
    monkeypatch.setattr(compute, "PCA_FIT_ROWS", 10)
    compute.build(store, eset.recipe_id, force=True)
    basis = current(store, "projection").manifest["basis"]
    n = basis["fit_of"]
    assert basis["fit_rows"] == 10 < n
    at = open_page(store.root, "map", monkeypatch)
    assert any(f"fitted on a random 10 of the {n} patches" in c.value for c in at.caption)
    # grown past REFIT_GROWTH x the rows the axes were fitted on: refitted, not appended
    monkeypatch.setattr(compute, "REFIT_GROWTH", 1.0)
    add_cohort(store, tmp_path)
    mitoprobe.open(store.root).embed(MODEL, num_workers=0)
    proj = current(store, "projection")
    assert proj.manifest["basis"]["fit_of"] == n + 20 and proj.manifest["info"]["added"] == 0


# -- stale after the set changes: never shown, rebuilt by the next embed -----------------------------------
def test_new_import_and_embed_adds_patches_old_map_never_shown(store, tmp_path, monkeypatch):
    from mitoprobe import embedder

    eset = eset_of(store)
    old = current(store, "projection")
    n = old.table.num_rows
    add_cohort(store, tmp_path)
    # the import alone: the set is unchanged (its map stays current), the patches' labels and sites may not
    assert derived.status(spec_of(store, "robustness"), derived.set_state(store, eset)).state == "stale"
    current(store, "projection")
    found = integrity.check(store)
    assert [p.kind for p in found if p.kind.startswith("derived")] == ["derived-stale"]
    assert not integrity.errors(found)
    # vectors added without the library's embed (no rebuild): the old map is stale and never shown
    embedder.embed(store, MODEL, progress=False, num_workers=0)
    state = derived.set_state(store, eset)
    assert derived.status(spec_of(store, "projection"), state).state == "stale"
    at = open_page(store.root, "map", monkeypatch)
    assert not at.get("vega_lite_chart") and not at.metric
    assert any("the map is stale: the set changed" in w.value for w in at.warning)
    # the next embed (nothing to embed) brings both up to date; the map's axes stay, the new rows are projected
    mitoprobe.open(store.root).embed(MODEL, num_workers=0)
    proj = current(store, "projection")
    assert proj.table.num_rows == n + 20 and proj.manifest["info"]["added"] == 20
    assert proj.manifest["basis"] == old.manifest["basis"]
    assert proj.table.slice(0, n).equals(old.table)
    keys, X = store.features.read(eset.name, eset.recipe_id, views=["none"])
    new = keys["patch_id"].isin(proj.table["patch_id"].to_pylist()[n:]).to_numpy()
    assert np.allclose(proj.table.to_pandas()[["x", "y"]].to_numpy()[n:], compute.project(X[new], old.manifest["basis"]),
                       atol=1e-5)
    rob = current(store, "robustness").table.to_pandas().set_index("k")
    assert rob.loc[10, "n"] == int(store.patches()["y"].notna().sum())
    assert integrity.check(store) == []
    at = open_page(store.root, "map", monkeypatch)
    assert len(at.get("vega_lite_chart")) == 1 and not at.warning
    assert any(f"the 20 patches embedded since are projected onto the same axes" in c.value for c in at.caption)


def test_a_repaired_set_refits_the_map(store, tmp_path):
    """A part gone from the set (quarantined): the view is not an append of what it covered, so it is refitted."""
    eset = eset_of(store)
    before = current(store, "projection")
    part = eset.parts[0]
    shutil.move(str(part), tmp_path / part.name)  # as a repair would quarantine it
    (eset.path / "COMPLETE").unlink()  # and with it, the record (rows no longer match)
    with pytest.raises(StoreError, match="incomplete"):
        compute.build(store, eset.recipe_id)
    mitoprobe.open(store.root).embed(MODEL, num_workers=0)  # re-embeds the missing rows, then rebuilds
    after = current(store, "projection")
    assert after.manifest["info"]["added"] == 0 and after.manifest["parts"] != before.manifest["parts"]
    assert after.table.num_rows == before.table.num_rows


# -- store check / store repair -----------------------------------------------------------------------------
def test_corrupt_view_found_by_check_and_quarantined_by_repair(store, monkeypatch, capsys):
    path = spec_of(store, "projection").path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # one flipped byte inside a data page: its checksum fails
    path.write_bytes(bytes(raw))
    rc, out = run_cli(monkeypatch, capsys, "store", "check", "--store", str(store.root))
    assert rc == 2 and str(path) in out, out
    (p,) = integrity.errors(integrity.check(store))
    assert p.kind == "derived" and p.path == path and "mitoprobe store repair --yes" in p.fix
    at = open_page(store.root, "map", monkeypatch)  # the page names the damage instead of drawing it
    assert any("the map is damaged" in w.value for w in at.warning) and not at.get("vega_lite_chart")
    rc, out = run_cli(monkeypatch, capsys, "store", "repair", "--yes", "--store", str(store.root))
    assert rc == 0 and not path.exists() and any((store.root / "quarantine").rglob(path.name))
    assert integrity.check(store) == []  # a missing view is not a finding (stores made before views had none)
    mitoprobe.open(store.root).embed(MODEL, num_workers=0)
    current(store, "projection")


@pytest.mark.parametrize("damage", ["truncated", "manifest rows", "not parquet"])
def test_other_damage(store, damage):
    spec = spec_of(store, "robustness")
    table, doc = derived.read(spec)
    if damage == "truncated":
        spec.path.write_bytes(spec.path.read_bytes()[:-100])
    elif damage == "not parquet":
        spec.path.write_text("{}")
    else:  # a view whose manifest disagrees with its rows
        import json

        import pyarrow.parquet as pq

        bad = table.replace_schema_metadata({derived.META_KEY: json.dumps(dict(doc, rows=3)).encode()})
        pq.write_table(bad, spec.path)
    assert derived.status(spec, derived.set_state(store, eset_of(store))).state == "damaged"
    (p,) = integrity.errors(integrity.check(store))
    assert p.kind == "derived" and p.path == spec.path
    actions = integrity.repair(store, dry_run=False)
    assert [a.action for a in actions] == ["quarantine"] and not spec.path.exists()
    assert integrity.check(store) == []


def test_views_of_a_set_that_is_gone(store):
    orphan = derived.folder(store.root, "0123456789abcdef")
    shutil.copytree(derived.folder(store.root, eset_of(store).recipe_id), orphan)
    (p,) = integrity.check(store)
    assert (p.kind, p.severity, p.path) == ("derived-orphan", "warning", orphan)
    integrity.repair(store, dry_run=False)
    assert not orphan.exists() and integrity.check(store) == []


def test_views_of_an_unreadable_set_are_quarantined_with_it(store):
    eset = eset_of(store)
    (eset.path / "recipe.json").write_text("{")
    assert [p.kind for p in integrity.errors(integrity.check(store))] == ["recipe"]
    integrity.repair(store, dry_run=False)
    assert not derived.folder(store.root, eset.recipe_id).exists() and not integrity.errors(integrity.check(store))


# -- who may build ------------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from mitoprobe.store.lock import SetLock
SetLock(sys.argv[1], sys.argv[2]).acquire()
Path(sys.argv[3]).write_text("held")
time.sleep(120)
"""


def _held_elsewhere(root, key, ready):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), key, str(ready)], cwd=REPO)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists()
    return proc


def test_build_refused_while_a_job_writes_the_set_or_builds_its_views(store, tmp_path, monkeypatch):
    eset = eset_of(store)
    shutil.rmtree(derived.folder(store.root, eset.recipe_id))
    proc = _held_elsewhere(store.root, f"embeddings-{eset.recipe_id}", tmp_path / "set-held")
    try:
        with pytest.raises(StoreError, match="is being written by"):
            compute.build(store, eset.recipe_id)
    finally:
        proc.kill()
        proc.wait()
    proc = _held_elsewhere(store.root, f"derived-{eset.recipe_id}", tmp_path / "views-held")
    try:
        with pytest.raises(StoreLockedError):
            compute.build(store, eset.recipe_id, wait_s=0)
        at = open_page(store.root, "map", monkeypatch)  # the page's button does not wait either
        [b for b in at.button if b.label == "Build them now"][0].click().run()
        assert any("Cannot build them" in e.value and "derived views" in e.value for e in at.error)
    finally:
        proc.kill()
        proc.wait()
    assert not any(derived.folder(store.root, eset.recipe_id).glob("*.parquet"))


# -- the page ------------------------------------------------------------------------------------------------
def test_page_reads_the_stored_views(store, monkeypatch):
    with monkeypatch.context() as m:  # as for a set of 31 labelled patches: k up to 30
        m.setattr(derived, "K_MAX", 30)
        compute.build(store, eset_of(store).recipe_id, force=True)
    rob = current(store, "robustness").table.to_pandas().set_index("k")
    assert rob.index.max() == 30
    files = sorted(p for p in store.root.rglob("*") if p.is_file() and "locks" not in p.parts)
    at = open_page(store.root, "map", monkeypatch)
    assert len(at.get("vega_lite_chart")) == 1 and not at.warning
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Robustness index"] == f"{rob.loc[10, 'robustness_index']:.3f}"
    assert any("(4 unlabelled patches left out)" in c.value for c in at.caption)
    at.slider[0].set_value(31).run()  # more than the set's labelled patches allow
    assert any("at most k = 30" in i.value for i in at.info) and not at.metric
    at.slider[0].set_value(7).run()
    assert {m.label: m.value for m in at.metric}["Label agreement"] == f"{rob.loc[7, 'label_agreement']:.3f}"
    for colour in ("dataset", "label"):
        at.selectbox(key="map_colour").set_value(colour).run()
        assert not at.exception
    at.multiselect[0].set_value(["MyLab"]).run()  # the dataset filter narrows the map only
    assert any("20 patches" in c.value for c in at.caption)
    assert sorted(p for p in store.root.rglob("*") if p.is_file() and "locks" not in p.parts) == files


def test_page_never_computes_on_open_and_builds_on_request(store, monkeypatch):
    from mitoprobe.dashboard import data

    shutil.rmtree(store.root / derived.DERIVED_DIR)
    monkeypatch.setattr(data, "MAP_POINTS", 10)
    at = open_page(store.root, "map", monkeypatch)
    assert not (store.root / derived.DERIVED_DIR).exists()  # opening wrote (and computed) nothing
    assert any("the map is missing" in w.value and "the robustness index is missing" in w.value for w in at.warning)
    assert not at.get("vega_lite_chart") and not at.metric
    [b for b in at.button if b.label == "Build them now"][0].click().run()
    assert not at.exception and not at.warning and len(at.get("vega_lite_chart")) == 1
    n = len(store.patches())
    assert any(f"{n} patches (10 drawn at random: the projection uses all)" in c.value for c in at.caption)
    current(store, "projection")
    current(store, "robustness")


def test_umap_is_computed_on_demand_when_installed(store, monkeypatch):
    import types

    class UMAP:  # a stand-in for umap-learn: the first two standardised dimensions
        def __init__(self, n_components, random_state):
            assert n_components == 2

        def fit_transform(self, Z):
            return Z[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    at = open_page(store.root, "map", monkeypatch)
    at.selectbox[1].set_value("UMAP").run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 1 and not at.warning
    assert "UMAP 1" in at.get("vega_lite_chart")[0].proto.spec


@pytest.mark.parametrize("rows", [np.ones((6, 4)), np.zeros((1, 4)), np.eye(3)[:, :1]])
def test_axes_of_rows_without_two_directions(rows):
    """Identical rows, one row, or one dimension: zero (or one) axes instead of NaN shares or an error."""
    basis = compute.fit_axes(rows)
    assert np.isfinite(basis["explained"]).all() and np.asarray(basis["components"]).shape == (2, rows.shape[1])
    xy = compute.project(rows, dict(basis, mean=np.zeros(rows.shape[1]), scale=np.ones(rows.shape[1])))
    assert xy.shape == (len(rows), 2) and np.isfinite(xy).all()
