"""The verdict table (classifiers/verdict.py): the paper's rows beside our runs, the rule's arithmetic,
what is never "reproduced", ``mitoprobe report --paper`` and the dashboard's "Paper verdict" page."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cli
from dashboard_store import open_page
from mitoprobe.classifiers import runs as R
from mitoprobe.classifiers import verdict as V
from mitoprobe.paper import paper_results

PAPER = paper_results().set_index(["family", "model", "dataset"])
TS = "AMi-Br-test"
PROBE_OPTIONS = {"pooling": "cls", "tta": False, "views": ["none"]}
OFFSETS = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])  # population std of these: sqrt(2)


def paper_row(method: str, model: str, ts: str = TS) -> pd.Series:
    return PAPER.loc[(method, model, ts)]


def family_rows(fid: str, model: str, means: dict[str, float], *, family: str = "probe", head: str = "torch_linear",
                options: dict | None = None, config: dict | None = None, folds=range(5), scale: float = 0.005,
                created: int = 0) -> list[dict]:
    """Run rows of one family: per test set, fold k scores ``mean + scale * OFFSETS[k]`` (fold mean ``mean``,
    population std ``scale * sqrt(2)`` over five folds), plus a fold-ensemble row the verdict ignores."""
    opts = PROBE_OPTIONS if options is None and family == "probe" else (options or {})
    cfg = config if config is not None else ({"params": {}, "protocol": {"n_folds": 5}} if family == "probe"
                                             else {"overrides": None, "paper_entry": {"script": "x.py"}})
    rows = []
    for ts, mean in means.items():
        for k in [*folds, -1]:
            ba = mean + scale * OFFSETS[k] if k >= 0 else 0.0
            rows.append(dict(run_id=f"{fid}-{k}", family_id=fid, family=family, model=model, head=head,
                             options=json.dumps(opts, sort_keys=True), config_json=json.dumps(cfg), fold=k,
                             test_set=ts, repeat=0, balanced_accuracy=ba, auroc=ba + 0.05,
                             created_at=pd.Timestamp(1_700_000_000 + created, unit="s", tz="UTC")))
    return rows


def table_of(*families: list[dict]) -> pd.DataFrame:
    return V.verdict_table(R.relabel_legacy_finetune(pd.DataFrame([r for f in families for r in f])))


def cell(table: pd.DataFrame, model: str, method: str, ts: str = TS) -> pd.Series:
    hit = table[(table["model"] == model) & (table["method"] == method) & (table["test_set"] == ts)]
    assert len(hit) == 1
    return hit.iloc[0]


# -- the rule's arithmetic ----------------------------------------------------------------------------
def test_rule_on_a_hand_computed_case():
    # paper 0.80 ± 0.03, ours 0.85 ± 0.04 (population stds, 5 folds each): spread = √(0.03² + 0.04²) = 0.05
    assert math.hypot(0.03, 0.04) == pytest.approx(0.05)
    assert V.judge(0.05, 0.05) == "reproduced"  # on the boundary: within
    assert V.judge(-0.0499, 0.05) == "reproduced"
    assert V.judge(0.0501, 0.05) == "above" and V.judge(-0.0501, 0.05) == "below"
    # Welch by hand: sample std = population std · √(5/4); t = -0.05 / √((0.03² + 0.04²) · 1.25 / 5) = -2
    a, b = 0.03 ** 2 * 1.25 / 5, 0.04 ** 2 * 1.25 / 5
    t = (0.80 - 0.85) / math.sqrt(a + b)
    dof = (a + b) ** 2 / (a ** 2 / 4 + b ** 2 / 4)
    assert t == pytest.approx(-2.0) and dof == pytest.approx(7.4184, abs=1e-4)
    assert V.welch_p(0.80, 0.03, 5, 0.85, 0.04, 5) == pytest.approx(2 * stats.t.sf(2.0, dof))
    assert math.isnan(V.welch_p(0.8, 0.0, 5, 0.85, 0.0, 5))  # no spread on either side: no test
    assert math.isnan(V.welch_p(0.8, 0.03, 1, 0.85, 0.04, 5))


def test_reproduced_above_below_and_the_cells_arithmetic():
    p_uni, p_v2 = paper_row("linear_probe", "uni"), paper_row("linear_probe", "Virchow2")
    p_lora = paper_row("lora", "uni2-h")
    table = table_of(
        family_rows("uni", "uni.hf", {TS: p_uni["balanced_accuracy_mean"] + 0.01}),  # within the spread
        # Virchow's paper outputs are CLS ⊕ mean: pooling "all" on a cls+mean set is the paper's
        family_rows("v2", "virchow2.hf", {TS: p_v2["balanced_accuracy_mean"] + 0.2},
                    options={"pooling": "all", "tta": False, "views": ["none"]}),
        family_rows("lo", "uni2_h.hf", {TS: p_lora["balanced_accuracy_mean"] - 0.2}, family="finetune", head="lora",
                    options={}))
    c = cell(table, "uni", "linear_probe")
    ours_std = 0.005 * math.sqrt(2)
    assert c["verdict"] == c["status"] == "reproduced"
    assert c["balanced_accuracy_mean"] == pytest.approx(p_uni["balanced_accuracy_mean"] + 0.01)
    assert c["balanced_accuracy_std"] == pytest.approx(ours_std)  # ddof 0, the paper's
    assert c["delta"] == pytest.approx(0.01)
    assert c["spread"] == pytest.approx(math.hypot(p_uni["balanced_accuracy_std"], ours_std))
    assert c["welch_p"] == pytest.approx(V.welch_p(c["balanced_accuracy_mean"], ours_std, 5,
                                                   p_uni["balanced_accuracy_mean"], p_uni["balanced_accuracy_std"], 5))
    assert c["n_folds"] == 5 and c["family_id"] == "uni" and c["recipe"] == "uni.hf"
    assert c["paper_source"].startswith("DeepMicroscopy/AMi-Br_Benchmark@3acf4da:Foundation_Models/Linear_Probing/uni/")
    assert cell(table, "Virchow2", "linear_probe")["verdict"] == "above"
    assert cell(table, "uni2-h", "lora")["verdict"] == "below"
    # every other published cell: not run; one row per published row, in the paper's model order
    assert len(table) == len(PAPER) and list(table["method"].drop_duplicates()) == ["linear_probe", "lora", "end_to_end"]
    assert (table["status"] == "not run").sum() == len(PAPER) - 3
    assert cell(table, "uni", "linear_probe", "AtNorM-Br")["verdict"] == "not run"
    counts = V.summary(table)
    assert (counts["reproduced"], counts["above"], counts["below"], counts["not run"]) == (1, 1, 1, len(PAPER) - 3)
    assert V.summary_text(table).endswith(f"(of {len(PAPER)} published cells)")


@pytest.mark.parametrize("rows,why", [
    (dict(options={"pooling": "all", "tta": False, "views": ["none"]}), "pooling=all (the paper: cls)"),
    (dict(options={"pooling": "cls", "tta": True, "views": ["none", "rot90"]}), "tta"),
    (dict(config={"params": {"lr": 0.001}, "protocol": {}}), "params lr=0.001 (the script: default)"),
    (dict(config={"params": {}, "protocol": {"train_on": "MyLab"}}), "trained on MyLab"),
    (dict(folds=range(3)), "3 of 5 folds"),
    (dict(family="finetune", head="lora", options={"lr": 0.001}), "lr=0.001"),
    (dict(family="finetune", head="lora", options={}, config={"overrides": {"depth": 2}, "paper_entry": {"script": "x"}}),
     "test-only overrides"),
    (dict(family="finetune", head="lora", options={}, config={"overrides": None}),  # stored before the per-model table
     "pre-table defaults"),
])
def test_runs_without_the_papers_settings_are_not_comparable(rows, why):
    method = "lora" if rows.get("family") == "finetune" else "linear_probe"
    p = paper_row(method, "uni")
    c = cell(table_of(family_rows("f", "uni.hf", {TS: p["balanced_accuracy_mean"]}, **rows)), "uni", method)
    assert c["status"] == "not comparable" and c["verdict"].startswith("not comparable: ") and why in c["verdict"]
    assert abs(c["delta"]) < 0.011  # shown for context, never judged


def test_gigapath_probe_takes_its_own_scripts_parameters():
    p = paper_row("linear_probe", "prov-gigapath")
    own = {"params": {"lr": 1e-3, "weight_decay": 1e-4}, "protocol": {}}  # prov-gigapath.py's lr and weight decay
    c = cell(table_of(family_rows("g", "gigapath.hf", {TS: p["balanced_accuracy_mean"]}, config=own)),
             "prov-gigapath", "linear_probe")
    assert c["status"] == "reproduced"
    c = cell(table_of(family_rows("g", "gigapath.hf", {TS: p["balanced_accuracy_mean"]})), "prov-gigapath",
             "linear_probe")
    assert c["verdict"] == ("not comparable: params lr=default (the script: 0.001), "
                            "weight_decay=default (the script: 0.0001)")


def test_dry_run_twin_and_which_run_a_cell_shows():
    p = paper_row("linear_probe", "uni")
    m = p["balanced_accuracy_mean"]
    twin = family_rows("twin", "uni.random", {TS: m}, created=30)  # exactly the paper's numbers, yet a dry run
    c = cell(table_of(twin), "uni", "linear_probe")
    assert (c["status"], c["verdict"], c["ours_model"]) == ("dry run", "dry run (random weights)", "uni.random")
    # the real model's run wins over the twin's, even when not comparable; the paper's settings over both,
    # even when older
    other = family_rows("other", "uni.hf", {TS: m}, options={"pooling": "mean", "tta": False, "views": ["none"]},
                        created=20)
    assert cell(table_of(twin, other), "uni", "linear_probe")["family_id"] == "other"
    paper_like = family_rows("paper-like", "uni.hf", {TS: m}, created=10)
    assert cell(table_of(twin, other, paper_like), "uni", "linear_probe")["family_id"] == "paper-like"
    newer = family_rows("newer", "uni.hf", {TS: m + 0.5}, created=40)  # the latest with the paper's settings
    c = cell(table_of(twin, other, paper_like, newer), "uni", "linear_probe")
    assert (c["family_id"], c["status"]) == ("newer", "above")
    # efficientnetv2_m.random is the paper's own from-scratch model, not a dry run
    e = paper_row("end_to_end", "efficientnetv2_m")
    c = cell(table_of(family_rows("e", "efficientnetv2_m.random", {TS: e["balanced_accuracy_mean"]},
                                  family="finetune", head="full", options={})), "efficientnetv2_m", "end_to_end")
    assert c["status"] == "reproduced"


def test_other_runs_are_not_counterparts():
    p = paper_row("linear_probe", "uni")
    table = table_of(family_rows("lr", "uni.hf", {TS: p["balanced_accuracy_mean"]}, head="logreg"),
                     family_rows("hc", "handcrafted", {TS: 0.7}))
    assert set(table["status"]) == {"not run"}


def test_format_verdict():
    p = paper_row("linear_probe", "uni")
    table = table_of(family_rows("uni", "uni.hf", {TS: p["balanced_accuracy_mean"] + 0.01}))
    shown = V.format_verdict(table, compact=True)
    row = shown[(shown["model"] == "uni") & (shown["method"] == "linear probe") & (shown["test set"] == TS)].iloc[0]
    assert row["ours BA (n)"].endswith("(5)") and row["Δ"] == "+0.010" and row["verdict"] == "reproduced"
    assert row["paper source"] == "uni_inference.ipynb" and "ours AUROC" not in shown
    full = V.format_verdict(table).iloc[0]
    assert full["paper source"] == table["paper_source"].iloc[0] and full["paper AUROC"]
    assert row["paper BA"] == f"{p['balanced_accuracy_mean']:.3f} ± {p['balanced_accuracy_std']:.3f}"


# -- a store: report --paper and the dashboard page -----------------------------------------------------
@pytest.fixture
def verdict_store(tiny_store):
    p = paper_row("linear_probe", "uni")
    rows = (family_rows("uni-fam", "uni.hf", {t: p["balanced_accuracy_mean"] + 0.01 for t in ("AMi-Br-test",)})
            + family_rows("twin-fam", "virchow.random", {TS: 0.5}, options={"pooling": "all", "tta": False,
                                                                           "views": ["none"]}))
    for r in rows:
        r.pop("created_at")
        r.update(recipe_id="rid", code_version="test", threshold_rule="fixed_0.5")
    R.append(tiny_store, rows, [])
    return tiny_store


def test_report_paper(verdict_store, monkeypatch, capsys):
    root = str(verdict_store.root)
    code, out = run_cli(monkeypatch, capsys, "report", "--paper", "--store", root)
    assert code == 0, out
    assert "uni_inference.ipynb" in out and "DeepMicroscopy/AMi-Br_Benchmark@3acf4da" in out
    assert "rule: reproduced when |Δ| ≤ √(σ_paper² + σ_ours²)" in out
    assert f"summary: 1 reproduced, 0 above, 0 below, 0 not comparable, 1 dry run, {len(PAPER) - 2} not run" in out
    code, out = run_cli(monkeypatch, capsys, "report", "--paper", "--format", "csv", "--store", root)
    csv = pd.read_csv(__import__("io").StringIO(out))
    assert code == 0 and len(csv) == len(PAPER) and list(csv.columns) == V.COLUMNS
    assert csv.loc[csv["family_id"] == "uni-fam", "status"].tolist() == ["reproduced"]
    code, out = run_cli(monkeypatch, capsys, "report", "--paper", "--format", "markdown", "--store", root)
    assert code == 0 and "| uni " in out and "rule:" in out
    code, out = run_cli(monkeypatch, capsys, "report", "--paper", "--model", "uni.hf", "--store", root)
    assert code == 2 and "does not take --model" in out


def test_paper_page(verdict_store, monkeypatch):
    at = open_page(verdict_store.root, "paper", monkeypatch)
    df = at.dataframe[0].value
    assert len(df) == len(PAPER)
    assert set(df["verdict"]) == {"reproduced", "dry run (random weights)", "not run"}
    assert any("reproduced when" in m.value for m in at.markdown)
    assert len(at.get("vega_lite_chart")) == 1  # ours vs the paper
    assert [m.value for m in at.metric][:2] == ["1", "0"]  # reproduced, above
    at.multiselect[0].set_value(["lora"]).run()
    at.multiselect[1].set_value(["AtNorM-MD"]).run()
    df = at.dataframe[0].value
    assert not at.exception and set(df["method"]) == {"LoRA"} and set(df["test set"]) == {"AtNorM-MD"}
    assert not at.get("vega_lite_chart")  # no run of ours among these cells


def test_paper_page_without_runs(tiny_store, monkeypatch):
    at = open_page(tiny_store.root, "paper", monkeypatch)
    assert set(at.dataframe[0].value["verdict"]) == {"not run"}
    assert any("mitoprobe probe" in i.value for i in at.info)
