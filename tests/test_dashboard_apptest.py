"""Every dashboard page, run headless with Streamlit's AppTest against stores built here: a full
small store, a store with patches only, and an empty folder."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard import APP
from dashboard_store import FAMILIES, build_dashboard_store

from dashboard.navigation import PAGES as PAGE_SPECS

# page key (as the tests name them) -> the page script relative to app.py (None: the default page)
PAGES = {(p.key or "leaderboard"): (None if not p.key else f"app_pages/{p.script}") for p in PAGE_SPECS}
TITLES = {(p.key or "leaderboard"): p.title for p in PAGE_SPECS}


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    return build_dashboard_store(tmp_path_factory.mktemp("dash"))


def open_page(store_root, page: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("MITOPROBE_STORE", str(store_root))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if PAGES[page]:
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [TITLES[page]]
    return at


def codes(at) -> str:
    return " ".join(c.value for c in at.code)


@pytest.mark.parametrize("page", list(PAGES))
def test_empty_store_says_what_to_run(tmp_path, monkeypatch, page):
    at = open_page(tmp_path / "nothing-here", page, monkeypatch)
    assert "mitoprobe data import" in codes(at)
    assert not at.dataframe


@pytest.mark.parametrize("page,command", [("compare", "mitoprobe probe"), ("similarity", "mitoprobe embed"),
                                          ("map", "mitoprobe embed"), ("errors", "mitoprobe probe")])
def test_patches_only_store_says_what_to_run(tiny_store, monkeypatch, page, command):
    at = open_page(tiny_store.root, page, monkeypatch)
    assert command in codes(at)


def test_leaderboard_without_runs_shows_paper_rows(tiny_store, monkeypatch):
    at = open_page(tiny_store.root, "leaderboard", monkeypatch)
    df = at.dataframe[0].value
    assert len(df) > 0 and set(df["source"]) == {"paper"}
    assert any("mitoprobe probe" in i.value for i in at.info)


def test_leaderboard(full_store, monkeypatch):
    at = open_page(full_store.root, "leaderboard", monkeypatch)
    df = at.dataframe[0].value
    ours = df[df["source"] == "mitoprobe"]
    assert len(ours) == len(FAMILIES) * 3  # every family on every test set
    assert (df["source"] == "paper").sum() > 0
    runs = full_store.results.read("runs")
    fam = runs[(runs["family_id"] == "fam-logreg") & (runs["test_set"] == "AtNorM-MD")]
    row = ours[(ours["head"] == "logreg") & (ours["test_set"] == "AtNorM-MD")].iloc[0]
    folds = fam[fam["fold"] >= 0]
    assert row["balanced_accuracy_mean"] == pytest.approx(folds["balanced_accuracy"].mean())
    assert row["balanced_accuracy_std"] == pytest.approx(folds["balanced_accuracy"].std(ddof=0))  # the paper's
    ens = fam[fam["fold"] == -1].iloc[0]
    assert row["ensemble_auroc"] == pytest.approx(ens["auroc"])
    assert row["ensemble_auroc_ci_low"] == pytest.approx(ens["auroc_ci_low"])
    assert row["n_folds"] == 5
    assert at.get("download_button")
    # filters: one test set, no paper rows
    at.multiselect[2].set_value(["AtNorM-Br"]).run()
    at.toggle[0].set_value(False).run()
    df = at.dataframe[0].value
    assert set(df["test_set"]) == {"AtNorM-Br"} and set(df["source"]) == {"mitoprobe"}


def test_compare(full_store, monkeypatch):
    at = open_page(full_store.root, "compare", monkeypatch)
    charts_ = lambda: at.get("vega_lite_chart")  # noqa: E731
    assert len(charts_()) == 3  # metric panels, ROC, PR
    show = at.get("segmented_control")[0]
    show.set_value("Confusion & calibration").run()
    assert not at.exception and len(charts_()) == 3  # metric panels, confusion matrices, reliability
    at.toggle[0].set_value(True).run()
    at.slider[0].set_value(0.9).run()
    assert not at.exception and any("threshold 0.90" in m.value for m in at.markdown)
    at.get("segmented_control")[0].set_value("Model vs experts").run()
    assert not at.exception and len(charts_()) == 2  # metric panels, kappa heatmap
    ref = at.dataframe[0].value  # each expert vs the others' majority (AMi-Br test: 3 experts)
    assert list(ref["expert"]) == ["expert1", "expert2", "expert3"]
    at.radio[0].set_value("AtNorM-Br").run()
    assert not at.exception
    assert any("no individual expert votes" in i.value for i in at.info)
    at.get("segmented_control")[0].set_value("ROC & PR").run()
    at.selectbox[0].set_value(3).run()  # a single fold's predictions
    assert not at.exception and len(charts_()) == 3
    at.get("segmented_control")[0].set_value("Significance").run()  # paired bootstrap + Holm (classifiers)
    assert not at.exception
    sig = at.dataframe[0].value
    assert set(sig["metric"]) == {"balanced_accuracy", "auroc"} and len(sig) == 2 * 3  # 3 pairs of 3 families
    assert ((sig["p"] <= sig["p_holm"]) & (sig["p_holm"] <= 1)).all()


def test_similarity_gallery_pick(full_store, monkeypatch):
    at = open_page(full_store.root, "similarity", monkeypatch)
    hits = at.dataframe[0].value
    assert len(hits) == 12 and hits["distance"].is_monotonic_increasing
    first = at.text_input[0].value
    assert first not in set(hits["patch_id"])  # the query itself is left out
    picks = [b for b in at.button if b.label == "Search"]
    picks[3].click().run()
    assert not at.exception and at.text_input[0].value != first
    at.slider[0].set_value(8).run()
    assert len(at.dataframe[0].value) == 8
    at.text_input[0].set_value("not-a-patch").run()
    assert any("not in set" in w.value for w in at.warning)


def _upload(at, png: bytes):
    at.radio[0].set_value("Upload a PNG").run()
    at.file_uploader[0].set_value(("query.png", png, "image/png")).run()


def test_similarity_upload_embeds_on_the_fly(full_store, monkeypatch):
    pid, png = next(iter(full_store.images().items()))
    at = open_page(full_store.root, "similarity", monkeypatch)
    _upload(at, png)
    assert not at.exception and not at.error
    hits = at.dataframe[0].value
    assert hits["patch_id"].iloc[0] == pid and hits["distance"].iloc[0] == pytest.approx(0, abs=1e-5)


def test_similarity_upload_refused_when_recipe_changed(full_store, monkeypatch):
    import embedder

    monkeypatch.setattr(embedder, "recipe_id_of", lambda *a, **k: "0000000000000000")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(buf, format="PNG")
    at = open_page(full_store.root, "similarity", monkeypatch)
    _upload(at, buf.getvalue())
    assert not at.exception
    assert any("Cannot embed" in e.value and "re-run `mitoprobe embed" in e.value for e in at.error)


def test_embedding_map(full_store, monkeypatch):
    at = open_page(full_store.root, "map", monkeypatch)
    assert len(at.get("vega_lite_chart")) == 1
    for colour in ("dataset", "prediction", "correct"):
        at.selectbox[2].set_value(colour).run()
        assert not at.exception
    at.multiselect[0].set_value(["AtNorM-MD"]).run()
    assert not at.exception


def test_errors(full_store, monkeypatch):
    at = open_page(full_store.root, "errors", monkeypatch)
    fid = "fam-logreg"
    at.selectbox[0].set_value(fid).run()
    preds = full_store.results.read("predictions")
    y = full_store.patches().set_index("patch_id")["y"]
    p = preds[preds["run_id"] == f"{fid}--1"]
    wrong = p[p["prediction"].to_numpy() != y.loc[p["patch_id"]].to_numpy()]
    test_set = wrong["test_set"].value_counts().idxmax()
    wrong = wrong[wrong["test_set"] == test_set]
    at.radio[0].set_value(test_set).run()
    df = at.dataframe[0].value
    assert len(df) == min(40, len(wrong)) > 0
    assert set(df["patch_id"]) == set(wrong["patch_id"])
    margin = (df["probability"] - 0.5).abs().to_numpy()
    assert (np.diff(margin) <= 1e-12).all()  # worst first
    at.get("segmented_control")[0].set_value("missed atypical (FN)").run()
    assert not at.exception
    if at.dataframe:
        assert set(at.dataframe[0].value["label"]) == {"Atypical"}


def test_errors_none_wrong(full_store, monkeypatch):
    at = open_page(full_store.root, "errors", monkeypatch)
    at.selectbox[0].set_value("fam-oracle").run()
    assert any("No misclassified" in s.value for s in at.success) and not at.dataframe
