"""Every dashboard page, run headless with Streamlit's AppTest against stores built here: a full
small store, a store with patches only, and an empty folder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import streamlit
from PIL import Image

from dashboard_store import FAMILIES, PAGES, build_dashboard_store, open_page


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    return build_dashboard_store(tmp_path_factory.mktemp("dash"))


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
    # percentiles of the hits' distances among the query's distances to every stored patch
    closer = hits["closer_than"]
    assert closer.between(0, 100).all() and closer.is_monotonic_decreasing and closer.iloc[0] > 90
    grid = " ".join(h.proto.body for h in at.get("html"))  # the neighbours: thumbnails linking to each as query
    assert "closer than" in grid
    assert all(f'href="similarity?patch={pid}&amp;set=' in grid for pid in hits["patch_id"])
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
    pid = full_store.patches(columns=["patch_id"])["patch_id"][0]
    png = full_store.images([pid])[pid]
    at = open_page(full_store.root, "similarity", monkeypatch)
    _upload(at, png)
    assert not at.exception and not at.error
    hits = at.dataframe[0].value
    assert hits["patch_id"].iloc[0] == pid and hits["distance"].iloc[0] == pytest.approx(0, abs=1e-5)
    n = len(full_store.patches())
    assert hits["closer_than"].iloc[0] == pytest.approx(100 * (n - 1) / n)  # only itself is as close


def test_similarity_on_a_table_without_search_columns(full_store, tmp_path, monkeypatch):
    """A LanceDB table built before standardised search: the page says to run `store repair`."""
    import shutil

    from mitoprobe.store import Store

    st = Store(shutil.copytree(full_store.root, tmp_path / "old"))
    eset = st.features.sets()[0]
    st.features._lance().create_table(eset.recipe_id, data=st.features.read_table(eset), mode="overwrite")
    at = open_page(st.root, "similarity", monkeypatch)
    assert any("mitoprobe store repair --yes" in e.value for e in at.error), [e.value for e in at.error]


def test_similarity_on_a_table_that_lost_rows(full_store, tmp_path, monkeypatch):
    """A LanceDB table with fewer rows than the set's COMPLETE record: the page refuses to search
    over the patches left and says to run `store repair` (issue 22)."""
    import shutil

    from mitoprobe.store import Store

    st = Store(shutil.copytree(full_store.root, tmp_path / "lost"))
    eset = st.features.sets()[0]
    st.features.lance_table(eset).delete(f"patch_id = '{st.patches()['patch_id'].iloc[0]}'")
    at = open_page(st.root, "similarity", monkeypatch)
    assert any("COMPLETE record says" in e.value and "mitoprobe store repair --yes" in e.value
               for e in at.error), [e.value for e in at.error]


def test_similarity_upload_refused_when_recipe_changed(full_store, monkeypatch):
    from mitoprobe import embedder

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
        at.selectbox(key="map_colour").set_value(colour).run()
        assert not at.exception
    at.multiselect[0].set_value(["AtNorM-MD"]).run()
    assert not at.exception


def test_embedding_map_draws_a_sample_of_a_large_set(full_store, monkeypatch):
    from mitoprobe.dashboard import data

    monkeypatch.setattr(data, "MAP_POINTS", 10)
    at = open_page(full_store.root, "map", monkeypatch)
    assert not at.exception
    n = len(full_store.patches())
    assert any(f"{n} patches (10 drawn at random: the projection uses all)" in c.value for c in at.caption)


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
    df = at.dataframe[-1].value
    assert len(df) == min(20, len(wrong)) > 0
    assert set(df["patch_id"]) == set(wrong["patch_id"])
    margin = (df["probability"] - 0.5).abs().to_numpy()
    assert (np.diff(margin) <= 1e-12).all()  # worst first
    at.get("segmented_control")[0].set_value("missed atypical (FN)").run()
    assert not at.exception
    if len(at.dataframe) == 4:  # three breakdowns, then the FN list (none: a success note instead)
        assert set(at.dataframe[-1].value["label"]) == {"Atypical"}


def test_errors_none_wrong(full_store, monkeypatch):
    at = open_page(full_store.root, "errors", monkeypatch)
    at.selectbox[0].set_value("fam-oracle").run()
    assert any("No misclassified" in s.value for s in at.success) and not at.dataframe


# -- leaderboard: Δ vs paper, no "None" cells, the compact view, the cards --------------------------
def _paper_best_ba(family: str, test_set: str) -> tuple[float, str]:
    """The best published mean BA of the paper families our ``family`` compares with (from the CSV)."""
    from mitoprobe.classifiers.report import paper_results

    ref = paper_results()
    theirs = {"probe": ["linear_probe"], "finetune": ["lora", "end_to_end"]}[family]
    ref = ref[ref["family"].isin(theirs) & (ref["dataset"] == test_set)]
    best = ref.loc[ref["balanced_accuracy_mean"].idxmax()]
    return float(best["balanced_accuracy_mean"]), str(best["model"])


def test_leaderboard_delta_vs_paper_and_empty_cells(full_store, monkeypatch):
    at = open_page(full_store.root, "leaderboard", monkeypatch)
    table = at.dataframe[0]
    df = table.value
    ours = df[df["source"] == "mitoprobe"]
    assert len(ours) == len(FAMILIES) * 3
    for _, row in ours.iterrows():
        ba, model = _paper_best_ba(row["family"], row["test_set"])
        assert row["delta_vs_paper"] == pytest.approx(row["balanced_accuracy_mean"] - ba)
        assert row["paper_best_model"] == model
    assert df.loc[df["source"] == "paper", "delta_vs_paper"].isna().all()
    shown = list(table.proto.column_order)
    assert {"delta_vs_paper", "auprc_mean", "brier_mean"} <= set(shown)
    assert shown[:3] == ["source", "label", "test_set"]  # the pinned key columns first (label: the family)
    # missing values render as empty cells, never "None"/"nan" (paper rows have no AUPRC, pooling, ...)
    assert table.proto.placeholder == ""
    assert df[shown].isna().any().any()  # there are missing values to leave empty
    text = df[shown].select_dtypes(exclude="number").astype(object)
    assert not text.isin(["None", "nan", "NaN", "<NA>"]).any().any()
    # grouped: within each test set our rows come before the paper's
    for _, g in df.groupby("test_set"):
        src = g["source"].tolist()
        assert src == sorted(src, key=lambda s: s != "mitoprobe")


def test_leaderboard_compact_view_and_cards(full_store, monkeypatch):
    at = open_page(full_store.root, "leaderboard", monkeypatch)
    board = at.dataframe[0].value
    # the "Best on" cards: one per test set, each with the paper's best for reference
    cards = {m.label: m for m in at.metric}
    assert sorted(cards) == ["Best on AMi-Br-test", "Best on AtNorM-Br", "Best on AtNorM-MD"]
    captions = " ".join(c.value for c in at.caption)
    for ts in ("AMi-Br-test", "AtNorM-Br", "AtNorM-MD"):
        ba, model = _paper_best_ba("probe", ts)
        assert f"paper best: {ba:.3f} ({model}" in captions
        ours = board[(board["source"] == "mitoprobe") & (board["test_set"] == ts)]
        assert cards[f"Best on {ts}"].value == f"{ours['balanced_accuracy_mean'].max():.3f}"
        assert cards[f"Best on {ts}"].proto.delta == f"{ours['balanced_accuracy_mean'].max() - ba:+.3f} vs paper"
    # the compact view: rows = model · head, one column per test set, cells = mean BA
    compact = next(t for t in at.toggle if t.label == "Compact")
    compact.set_value(True).run()
    assert not at.exception
    table = at.dataframe[0]
    pivot = table.value
    sets = [c for c in table.proto.column_order if c not in ("source", "row")]
    assert sets == ["AMi-Br-test", "AtNorM-Br", "AtNorM-MD"]
    assert table.proto.placeholder == ""
    assert len(pivot) == board.drop_duplicates("family_id").shape[0]
    row = pivot[pivot["row"].str.contains("logreg")].iloc[0]
    want = board[(board["head"] == "logreg")].set_index("test_set")["balanced_accuracy_mean"]
    for ts in sets:
        assert row[ts] == pytest.approx(want[ts])
    assert pivot["source"].tolist() == sorted(pivot["source"], key=lambda s: s != "mitoprobe")  # ours first
    at.multiselect[2].set_value(["AtNorM-MD"]).run()  # a test-set filter leaves one column
    assert [c for c in at.dataframe[0].proto.column_order if c not in ("source", "row")] == ["AtNorM-MD"]


# -- one colour per run family on every chart ------------------------------------------------------
def _colours(spec) -> dict[str, str]:
    """label -> colour from every explicit colour scale (domain/range) in a Vega-Lite spec."""
    found: dict[str, str] = {}

    def walk(node):
        if isinstance(node, dict):
            enc = node.get("encoding", {}).get("color", {})
            scale = enc.get("scale") if isinstance(enc, dict) else None
            if isinstance(scale, dict) and "domain" in scale and "range" in scale and enc.get("field") == "label":
                for d, r in zip(scale["domain"], scale["range"]):
                    assert found.setdefault(d, r) == r, f"{d} has two colours in one chart"
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def test_family_colours_are_stable_and_shared():
    import pandas as pd

    from mitoprobe.dashboard import charts

    # a stable hash (not Python's salted hash()): the same colour in every process and rerun
    assert charts.family_colour("fam-logreg") == charts.family_colour("fam-logreg") in charts.FAMILY_PALETTE
    assert charts.family_colour("paper:linear_probe:uni") in charts.PAPER_PALETTE
    assert not set(charts.PAPER_PALETTE) & set(charts.FAMILY_PALETTE)
    fams = {"fam-a": "model a · logreg", "fam-b": "model b · knn", "paper:linear_probe:uni": "paper · uni"}
    pts = pd.DataFrame([dict(label=lab, family_id=f, test_set=ts, source="paper" if f.startswith("paper") else
                             "mitoprobe", balanced_accuracy_mean=0.7, balanced_accuracy_std=0.01)
                        for f, lab in fams.items() for ts in ("AMi-Br-test", "MyLab-test")])
    curve = pd.DataFrame([dict(label=lab, family_id=f, fpr=x, tpr=x, order=i) for f, lab in list(fams.items())[1::-1]
                          for i, x in enumerate((0.0, 0.5, 1.0))])  # other families, another order
    a = _colours(charts.metric_points(pts, {"balanced_accuracy": "BA"}).to_dict())
    b = _colours(charts.curves(curve, "fpr", "tpr", "fpr", "tpr", True).to_dict())
    want = {lab: charts.family_colour(f) for f, lab in fams.items()}
    assert a == want and b == {k: want[k] for k in b} and len(b) == 2


def test_compare_charts_share_family_colours(full_store, monkeypatch):
    import json

    from mitoprobe.dashboard import charts

    at = open_page(full_store.root, "compare", monkeypatch)
    specs = lambda: [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]  # noqa: E731
    points, roc, pr = (_colours(s) for s in specs())
    labels = {f"handcrafted · {h}": f for f, h, _ in FAMILIES}  # the default pooling is left out
    ours = {lab: charts.family_colour(f) for lab, f in labels.items()}
    assert roc == pr == ours
    assert {k: points[k] for k in ours} == ours
    paper = {k: v for k, v in points.items() if k not in ours}
    assert paper and set(paper.values()) <= set(charts.PAPER_PALETTE)  # the paper's rows in grey/black
    at.get("segmented_control")[0].set_value("Confusion & calibration").run()
    assert _colours(specs()[-1]) == ours  # the reliability diagram
    at.get("segmented_control")[0].set_value("Model vs experts").run()
    kappa = json.dumps(specs()[-1])
    assert all(json.dumps(c)[1:-1] in kappa for c in ours.values())  # model rows labelled in their colour


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory):
    """The full store plus a lab's cohort whose manifest leaves some labels empty (`data example-cohort`)."""
    from mitoprobe import embedder
    from mitoprobe.store.cohort_example import write_example_cohort

    root = tmp_path_factory.mktemp("dash-unlabelled")
    st = build_dashboard_store(root)
    st.import_cohort("MyLab", manifest=write_example_cohort(root / "cohort"))
    embedder.embed(st, "handcrafted", progress=False, num_workers=0)  # the cohort's vectors too
    assert st.patches()["label"].isna().any()
    return st


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_on_a_store_with_unlabelled_patches(unlabelled_store, monkeypatch, page):
    open_page(unlabelled_store.root, page, monkeypatch)  # fails on any exception (sorting None with str, ...)


@pytest.mark.parametrize("page", list(PAGES))
def test_no_page_reads_every_patchs_shown_row(full_store, monkeypatch, page):
    """Every patch's row is read only for the few index columns (``data.INDEX_COLUMNS``, once per server);
    the shown columns (votes, subtypes) only of the patches a page shows or predicted (issue 30: at x30 a
    whole-table read and its per-rerun copies cost seconds on the similarity, map and compare pages)."""
    from mitoprobe.dashboard import data
    from mitoprobe.store import Store

    reads, real = [], Store.patches

    def spy(self, columns=None, patch_ids=None):
        reads.append((tuple(columns or ()), patch_ids is None))
        return real(self, columns, patch_ids)

    monkeypatch.setattr(Store, "patches", spy)
    streamlit.cache_data.clear()
    streamlit.cache_resource.clear()
    at = open_page(full_store.root, page, monkeypatch)
    assert not at.exception
    assert [c for c, whole in reads if whole and set(c) - set(data.INDEX_COLUMNS) - {"content_sha256"}] == []
