"""Shareable URLs and the patch viewer: a page opened with query parameters restores that state, keeps
the user's later changes, ignores values it does not know, and links onwards; the patch viewer shows
the stored votes and per-fold predictions; thumbnails read only the PNGs they show."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard_store import APP, PAGES, TITLES, build_dashboard_store


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    return build_dashboard_store(tmp_path_factory.mktemp("dash-links"))


def open_url(store_root, page: str, monkeypatch, **params):
    """The app on ``page`` as if its URL carried ``params`` (lists: a repeated parameter)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MITOPROBE_STORE", str(store_root))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if PAGES[page]:
        at.switch_page(PAGES[page])
    at.query_params.clear()
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [TITLES[page]]
    return at


def url(at, param: str) -> list[str]:
    """The page's current URL values of ``param`` (what it published)."""
    v = at.query_params.get(param, [])
    return list(v) if isinstance(v, (list, tuple)) else [v]


def test_errors_url_restores_family_fold_and_test_set(full_store, monkeypatch):
    at = open_url(full_store.root, "errors", monkeypatch, family="fam-knn", fold="2", test_set="AtNorM-Br")
    assert (at.selectbox[0].value, at.selectbox[1].value, at.radio[0].value) == ("fam-knn", 2, "AtNorM-Br")
    preds = full_store.results.read("predictions")
    p = preds[(preds["run_id"] == "fam-knn-2") & (preds["test_set"] == "AtNorM-Br")]
    y = full_store.patches().set_index("patch_id").loc[p["patch_id"], "y"].to_numpy()
    assert set(at.dataframe[-1].value["patch_id"]) == set(p.loc[p["prediction"].to_numpy() != y, "patch_id"])
    # the user's own change sticks (the URL follows it instead of pulling it back)
    at.radio[0].set_value("AtNorM-MD").run()
    at.run()
    assert at.radio[0].value == "AtNorM-MD" and url(at, "test_set") == ["AtNorM-MD"]
    assert at.selectbox[0].value == "fam-knn" and url(at, "family") == ["fam-knn"]


def test_unknown_url_values_fall_back_to_defaults(full_store, monkeypatch):
    plain = open_url(full_store.root, "errors", monkeypatch)
    at = open_url(full_store.root, "errors", monkeypatch, family="no-such-family", fold="x", test_set="Nowhere")
    assert (at.selectbox[0].value, at.selectbox[1].value, at.radio[0].value) == \
           (plain.selectbox[0].value, plain.selectbox[1].value, plain.radio[0].value)


def test_compare_url_restores_several_families_and_the_test_set(full_store, monkeypatch):
    at = open_url(full_store.root, "compare", monkeypatch, family=["fam-oracle", "fam-knn"], test_set="AtNorM-MD",
                  fold="4")
    assert at.multiselect[0].value == ["fam-oracle", "fam-knn"]
    assert at.radio[0].value == "AtNorM-MD" and at.selectbox[0].value == 4


def test_similarity_url_opens_the_patch_as_query(full_store, monkeypatch):
    meta = full_store.patches()
    eset = full_store.features.sets()[0]
    pid = meta["patch_id"].iloc[-1]
    at = open_url(full_store.root, "similarity", monkeypatch, patch=pid, set=eset.name, family="fam-logreg")
    assert at.text_input[0].value == pid and at.radio[0].value == "Stored patch"
    hits = at.dataframe[0].value
    assert pid not in set(hits["patch_id"]) and len(hits) == 12
    # every neighbour links on to itself as the query, in the same set, with the same family
    assert list(hits["open"]) == [f"similarity?patch={h}&set={eset.recipe_id}&family=fam-logreg"
                                  for h in hits["patch_id"]]
    assert url(at, "patch") == [pid] and url(at, "set") == [eset.recipe_id]


def test_patch_viewer_shows_votes_and_every_fold(full_store, monkeypatch):
    meta = full_store.patches().set_index("patch_id")
    preds = full_store.results.read("predictions")
    pid = preds.loc[preds["test_set"] == "AMi-Br-test", "patch_id"].iloc[0]
    at = open_url(full_store.root, "patch", monkeypatch, patch=pid, family="fam-logreg")
    assert at.text_input[0].value == pid and at.selectbox[0].value == "fam-logreg"
    votes = at.table[1].value
    m = meta.loc[pid]
    for e in range(1, 6):
        v = m[f"expert{e}_atypical"]
        if pd.notna(v):
            assert votes.loc[f"expert{e}", "vote"] == ("Atypical" if v else "Normal")
    shown = at.dataframe[0].value.sort_values("fold")
    want = preds[(preds["patch_id"] == pid) & preds["run_id"].str.startswith("fam-logreg-")].sort_values("fold")
    assert list(shown["fold"]) == [-1, 0, 1, 2, 3, 4] == list(want["fold"])
    assert np.allclose(shown["probability"], want["probability"]) and np.allclose(shown["threshold"], 0.5)
    assert list(shown["correct"]) == list((want["prediction"] == meta.loc[pid, "y"]).to_numpy())
    grid = " ".join(h.proto.body for h in at.get("html"))  # neighbours: links opening each as the query
    assert grid.count('href="similarity?patch=') == 12 and f"patch={pid}&" not in grid


def test_patch_viewer_unknown_id(full_store, monkeypatch):
    at = open_url(full_store.root, "patch", monkeypatch)
    at.text_input[0].set_value("not-a-patch").run()
    assert any("No stored patch" in w.value for w in at.warning)


def test_enlarged_is_nearest_neighbour():
    from mitoprobe.dashboard import data

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    big = np.asarray(Image.open(io.BytesIO(data.enlarged(buf.getvalue(), 3))))
    assert big.shape == (384, 384, 3)
    assert (big == np.repeat(np.repeat(px, 3, axis=0), 3, axis=1)).all()  # every pixel a 3x3 block, no blending


def test_images_reads_only_what_is_asked(full_store, monkeypatch):
    import pyarrow.parquet as pq

    from mitoprobe.store import patch_parts

    every = {p: b for t in full_store.iter_images() for p, b in zip(t["patch_id"].to_pylist(), t["png"].to_pylist())}
    some = list(every)[::7] + ["not-a-patch"]
    got = full_store.images(some)
    assert got == {p: every[p] for p in some if p in every}
    # only the row groups holding the wanted patches are read, each no further than its last wanted patch
    seen, batches = [], []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, row_groups=None, **k):
        seen.extend(row_groups)
        for b in real(self, *a, row_groups=row_groups, **k):
            batches.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    first = next(iter(every))
    assert full_store.images([first]) == {first: every[first]}
    assert seen == [0] and len(batches) == 1 and full_store.images([]) == {}
    monkeypatch.setattr(patch_parts, "PNG_BATCH", 2)  # past the batch size: a patch a few batches in
    fifth = [p for t in full_store.iter_images() for p in t["patch_id"].to_pylist()][4]
    batches.clear()
    assert full_store.images([fifth]) == {fifth: every[fifth]} and batches == [2, 2, 2]


def test_test_sets_come_from_the_results():
    from mitoprobe.dashboard import data

    assert data.test_set_order(["MyLab-test", "AtNorM-MD", "AMi-Br-test", "Another", None]) == \
           ["AMi-Br-test", "AtNorM-MD", "Another", "MyLab-test"]


def test_a_lab_test_set_and_dataset_show_up(tmp_path, monkeypatch):
    """A user-imported dataset and its own test set: every page offers them (nothing hard-coded)."""
    import json

    from mitoprobe.classifiers import runs as run_rows

    st = build_dashboard_store(tmp_path / "d", n_per_class=4)
    runs = st.results.read("runs")
    preds = st.results.read("predictions")
    lab_runs = runs[runs["test_set"] == "AtNorM-Br"].assign(test_set="MyLab-test",
                                                            run_id=lambda d: d["run_id"] + "-lab")
    lab_preds = preds[preds["test_set"] == "AtNorM-Br"].assign(test_set="MyLab-test",
                                                               run_id=lambda d: d["run_id"] + "-lab")
    lab_runs["options"] = lab_runs["options"].map(lambda o: json.dumps(json.loads(o)))
    run_rows.append(st, lab_runs.to_dict("records"), [lab_preds])
    for page in ("compare", "errors"):
        at = open_url(st.root, page, monkeypatch, test_set="MyLab-test")
        assert "MyLab-test" in at.radio[0].options and at.radio[0].value == "MyLab-test"
    at = open_url(st.root, "leaderboard", monkeypatch)
    assert "MyLab-test" in set(at.dataframe[0].value["test_set"])


def test_pages_open_on_a_general_embedding_set_not_a_fine_tuned_fold(tmp_path, monkeypatch):
    """A fine-tuned fold checkpoint's set (``ft-<run8>-fold<k>.<sha8>``, trained on four folds) is listed
    last, so the pages' default set is a general one, whatever the recipe ids' order on disk."""
    from mitoprobe.dashboard import data

    st = build_dashboard_store(tmp_path / "d", n_per_class=4)
    hand = st.features.sets()[0]
    keys, X = st.features.read(hand.name, hand.recipe_id)
    ft_name, ft_rid = "ft-1a2b3c4d-fold0.0123abcd", "0" * 16  # its folder sorts first on disk
    cuts = np.cumsum([0, *hand.outputs.values()])  # X: the outputs side by side, in order
    with st.features.writer(ft_rid, ft_name, dict(hand.outputs), {"finetuned": True}) as w:
        w.write_chunk(keys["patch_id"], keys["view"].tolist(),
                      {o: X[:, a:b].astype(np.float32) for o, a, b in zip(hand.outputs, cuts[:-1], cuts[1:])})
        w.finalize()
    assert [s.name for s in st.features.sets()][0] == ft_name
    assert [s.name for s in data.embedding_sets(str(st.root))] == [hand.name, ft_name]
    for page in ("map", "similarity"):
        at = open_url(st.root, page, monkeypatch)
        assert at.selectbox[0].value == hand.recipe_id, page
    at = open_url(st.root, "map", monkeypatch, set=ft_rid)  # still chosen by URL (or by hand)
    assert at.selectbox[0].value == ft_rid
