"""Dashboard round 2 (issue 14), run headless with Streamlit's AppTest on the small store of
``dashboard_store``: site robustness on the Embedding map, the Similarity page's exclusion toggles,
base rate and threshold, and the Errors page's breakdowns, honest row slider and CSV file name."""

from __future__ import annotations

import numpy as np
import pytest
import streamlit

from mitoprobe.classifiers import robustness
from dashboard_store import build_dashboard_store, open_page


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    # 16 patches per class and group (96 in all): every test set has a few errors to break down
    return build_dashboard_store(tmp_path_factory.mktemp("dash2"), n_per_class=16)


def captions(at) -> str:
    return " ".join(c.value for c in at.caption)


# -- Embedding map: do neighbours follow the label or the site? ---------------------------------
def _metrics(at) -> dict:
    return {m.label: m for m in at.metric}


@pytest.mark.parametrize("k", [10, 25])
def test_map_site_robustness_is_classifiers(full_store, monkeypatch, k):
    at = open_page(full_store.root, "map", monkeypatch)
    slider = next(s for s in at.slider if s.label.startswith("Neighbours per patch"))
    assert (slider.min, slider.max, slider.value) == (5, 50, 10)
    if k != 10:
        slider.set_value(k).run()
        assert not at.exception
    eset = full_store.features.sets()[0]
    want = robustness.site_robustness(full_store, eset.name, k=k)
    got = _metrics(at)
    assert got["Robustness index"].value == f"{want['robustness_index']:.3f}"
    for what in ("label", "site"):
        m = got[f"{what.capitalize()} agreement"]
        assert m.value == f"{want[f'{what}_agreement']:.3f}"
        assert f"base rate {want[f'{what}_base_rate']:.3f}" in m.proto.delta
    assert f"k = {k}: {want['sl_os']} same-label/other-site and {want['ol_ss']} other-label/same-site" in captions(at)


# -- Similarity: exclusion toggles, base rate, threshold -----------------------------------------
def _toggle(at, label: str):
    return next(t for t in at.toggle if t.label == label)


def _set_query(at, pid: str) -> None:
    at.text_input[0].set_value(pid).run()
    assert not at.exception


def _expected_hits(store, query_id: str, keep, k: int = 12) -> list[str]:
    """The k nearest stored patches to ``query_id`` among those ``keep`` accepts, straight from the store."""
    fs = store.features
    eset = fs.sets()[0]
    keys, X = fs.read(eset.name, eset.recipe_id, views=["none"])
    q = X[list(keys["patch_id"]).index(query_id)]
    hits = fs.search(eset, q, k=len(keys), view="none")
    return [p for p in hits["patch_id"] if p != query_id and keep(p)][:k]


def test_similarity_exclude_query_dataset(full_store, monkeypatch):
    meta = full_store.patches().set_index("patch_id")
    at = open_page(full_store.root, "similarity", monkeypatch)
    qid = at.text_input[0].value
    ds = meta.loc[qid, "dataset"]
    before = at.dataframe[0].value
    assert (before["dataset"] == ds).any()  # without the toggle, the query's dataset is among the hits
    _toggle(at, "Not its dataset").set_value(True).run()
    assert not at.exception
    hits = at.dataframe[0].value
    assert len(hits) == 12 and not (hits["dataset"] == ds).any()  # still k after filtering
    assert list(hits["patch_id"]) == _expected_hits(full_store, qid, lambda p: meta.loc[p, "dataset"] != ds)
    assert list(hits["rank"]) == list(range(1, 13))
    # the base rate is over the patches searched: the set less the query's dataset
    pool = meta[meta["dataset"] != ds]
    lab = meta.loc[qid, "label"]
    share = (hits["label"] == lab).mean()
    assert f"{share:.0%} of the neighbours share the query's label (base rate {(pool['label'] == lab).mean():.0%}" \
           f": the share of {lab} among the {len(pool)} patches searched)" in captions(at)
    assert any(f"excluding the query's dataset {ds}" in m.value for m in at.markdown)


def test_similarity_exclude_query_slide(full_store, monkeypatch):
    meta = full_store.patches()
    amibr = meta[meta["slide"].notna()]
    qid = amibr["patch_id"].iloc[0]
    q = amibr.iloc[0]
    same = set(meta.loc[(meta["dataset"] == q["dataset"]) & (meta["slide"] == q["slide"]), "patch_id"]) - {qid}
    assert same  # the query's slide has other patches to leave out
    at = open_page(full_store.root, "similarity", monkeypatch)
    _set_query(at, qid)
    _toggle(at, "Not its slide").set_value(True).run()
    assert not at.exception
    hits = at.dataframe[0].value
    assert len(hits) == 12 and not set(hits["patch_id"]) & same and qid not in set(hits["patch_id"])
    assert list(hits["patch_id"]) == _expected_hits(full_store, qid, lambda p: p not in same)
    assert any(f"excluding the query's slide {q['slide']}" in m.value for m in at.markdown)
    # a query whose slide is not recorded (AtNorM): nothing to leave out, and the page says so
    other = meta.loc[meta["slide"].isna(), "patch_id"].iloc[0]
    _set_query(at, other)
    assert "slide is not recorded" in captions(at)
    assert list(at.dataframe[0].value["patch_id"]) == _expected_hits(full_store, other, lambda p: True)


def test_similarity_base_rate_and_threshold(full_store, monkeypatch):
    meta = full_store.patches().set_index("patch_id")
    at = open_page(full_store.root, "similarity", monkeypatch)
    qid = at.text_input[0].value
    lab = meta.loc[qid, "label"]
    pool = meta.drop(index=qid)  # every stored patch of the set but the query
    assert f"(base rate {(pool['label'] == lab).mean():.0%}: the share of {lab} among the {len(pool)} patches " \
           "searched)" in captions(at)
    table = at.dataframe[0]
    hits = table.value
    order = list(table.proto.column_order)
    assert order.index("threshold") == order.index("probability") + 1  # beside P(atypical)
    preds = full_store.results.read("predictions")
    want = preds[preds["fold"] == -1].drop_duplicates("patch_id").set_index("patch_id")["threshold"]
    predicted = hits["prediction"].notna()
    assert predicted.any() and (hits["threshold"].notna() == predicted).all()  # a threshold wherever a P is shown
    got = hits.loc[predicted].set_index("patch_id")["threshold"]
    assert np.allclose(got.to_numpy(), want.loc[got.index].to_numpy())
    assert "decision threshold 0.500" in captions(at)


# -- Errors: breakdowns, the row slider, the CSV name --------------------------------------------
def _wrong(store, family_id: str, fold: int, test_set: str):
    preds = store.results.read("predictions")
    meta = store.patches().set_index("patch_id")
    p = preds[(preds["run_id"] == f"{family_id}-{fold}") & (preds["test_set"] == test_set)]
    p = p.drop(columns=["split"]).join(meta, on="patch_id")
    return p, p[p["prediction"].to_numpy() != p["y"].to_numpy()]


def test_errors_breakdowns_sum_to_the_errors(full_store, monkeypatch):
    at = open_page(full_store.root, "errors", monkeypatch)
    at.selectbox[0].set_value("fam-knn").run()
    at.radio[0].set_value("AMi-Br-test").run()  # the one test set with subtypes and slides
    assert not at.exception
    p, wrong = _wrong(full_store, "fam-knn", -1, "AMi-Br-test")
    assert len(wrong) > 0
    assert any(m.label == "Misclassified" and m.value == f"{len(wrong)} / {len(p)}" for m in at.metric)
    sub1, sub2, slide = (t.value for t in at.dataframe[:3])
    for table, col in ((sub1, "subtype_expert1"), (sub2, "subtype_expert2")):
        assert table["errors"].sum() == len(wrong)
        assert table["patches"].sum() == len(p)
        want = wrong[col].fillna("(none)").value_counts()
        got = table.set_index("subtype")["errors"]
        assert got[got > 0].sort_index().to_dict() == want.sort_index().to_dict()
        assert (table["missed (FN)"] + table["false alarms (FP)"] == table["errors"]).all()
        assert np.allclose(table["error rate"], table["errors"] / table["patches"])
    assert slide["errors"].sum() == len(wrong)
    per_slide = wrong.groupby("slide").size()
    got = slide.set_index("slide")["errors"]
    assert got[got > 0].sort_index().to_dict() == per_slide.sort_index().to_dict()


def test_errors_row_slider_is_honest(full_store, monkeypatch):
    at = open_page(full_store.root, "errors", monkeypatch)
    at.selectbox[0].set_value("fam-knn").run()
    counts = {ts: len(_wrong(full_store, "fam-knn", -1, ts)[1]) for ts in ("AMi-Br-test", "AtNorM-Br", "AtNorM-MD")}
    ts = max(counts, key=counts.get)
    n = counts[ts]
    assert n > 1
    at.radio[0].set_value(ts).run()
    slider = at.slider[0]
    assert slider.max == n and slider.value == min(20, n)
    assert f"({n} misclassified patches in all)" in slider.label
    assert len(at.dataframe[-1].value) == min(20, n)
    slider.set_value(1).run()
    assert not at.exception and len(at.dataframe[-1].value) == 1
    # the FN filter: the slider counts only those
    fn = int((_wrong(full_store, "fam-knn", -1, ts)[1]["y"] == 1).sum())
    at.get("segmented_control")[0].set_value("missed atypical (FN)").run()
    assert not at.exception
    if fn > 1:
        assert at.slider[0].max == fn and f"({fn} missed atypical (FN) in all)" in at.slider[0].label
    elif fn == 1:
        assert not at.slider and len(at.dataframe[-1].value) == 1
    else:
        assert any("No missed atypical" in s.value for s in at.success)


def test_errors_csv_name_has_family_and_fold(full_store, monkeypatch):
    names = []
    real = streamlit.download_button

    def spy(label, data, file_name=None, *args, **kwargs):
        names.append(file_name)
        return real(label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", spy)
    ts = max(("AMi-Br-test", "AtNorM-Br", "AtNorM-MD"),
             key=lambda t: min(len(_wrong(full_store, "fam-knn", f, t)[1]) for f in (-1, 3)))
    assert min(len(_wrong(full_store, "fam-knn", f, ts)[1]) for f in (-1, 3)) > 0
    at = open_page(full_store.root, "errors", monkeypatch)
    at.selectbox[0].set_value("fam-knn").run()
    at.radio[0].set_value(ts).run()
    assert at.dataframe and names[-1] == f"errors_handcrafted_knn_fold-ensemble_{ts}.csv"
    at.selectbox[1].set_value(3).run()
    assert not at.exception
    assert names[-1] == f"errors_handcrafted_knn_fold-3_{ts}.csv"


def test_errors_file_name_is_sanitised():
    from mitoprobe.dashboard import data

    name = data.errors_file_name("uni · logreg · pooling=cls+mean, tta=True", -1, "AtNorM-Br")
    assert name == "errors_uni_logreg_pooling_cls_mean_tta_True_fold-ensemble_AtNorM-Br.csv"
    assert data.errors_file_name("a/b\\c", 2, "T") == "errors_a_b_c_fold-2_T.csv"
