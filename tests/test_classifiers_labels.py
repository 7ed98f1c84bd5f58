"""Short, stable family labels (``classifiers.labels``) and the default leaderboard a person reads: one
row per family, test sets side by side, sorted by held-out AUROC, within 120 columns."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from classifiers_synth import synthetic_store
from click.testing import CliRunner
from rich.console import Console

from mitoprobe.classifiers import labels as L
from mitoprobe.classifiers.fusion import fuse
from mitoprobe.classifiers.report import DELTA, HELDOUT, compact_board, leaderboard
from mitoprobe.classifiers.runner import sweep
from mitoprobe.cli import cli
from mitoprobe.display import REPORT_WIDTH, leaderboard_table, print_report
from mitoprobe.store.errors import ProtocolError


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    st = synthetic_store(tmp_path_factory.mktemp("labels"))
    sweep(st, "synth", heads=["logreg", "knn", "simpleshot"], n_boot=50, show_progress=False)
    fuse(st, ["synth:logreg", "synth:knn"], n_boot=50)
    fuse(st, ["synth:logreg", "synth:simpleshot"], rule="stack", n_boot=50, name="my stack")
    return st


def test_derived_and_given_labels():
    probe = dict(family="probe", model="uni.hf", head="logreg", options=json.dumps(
        {"pooling": "all", "views": ["none"], "tta": False}))
    assert L.family_label(probe) == "uni.hf · logreg"  # the defaults say nothing
    assert L.family_label({**probe, "options": json.dumps({"pooling": "cls", "tta": True})}) == \
        "uni.hf · logreg · pooling=cls, tta=True"
    fusion = dict(family="fusion", head="mean", family_id="abcdef123456",
                  options=json.dumps({"members": ["handcrafted:lgbm", "morphology:lgbm"]}))
    assert L.family_label(fusion) == "fuse:mean(handcrafted:lgbm+morphology:lgbm)"
    many = {**fusion, "head": "stack", "options": json.dumps(
        {"members": ["ft-1a2b3c4d-folds:full", "ft-1a2b3c4d-folds+handcrafted:lgbm", "morphology:lgbm"]})}
    assert L.family_label(many) == "fuse:stack(3 members) abcdef"
    assert L.family_label({**fusion, "options": json.dumps({"members": ["a:b", "c:d"], "name": "cnn+morph"})}) \
        == "cnn+morph"
    ft = dict(family="finetune", model="uni.hf", head="lora", family_id="f" * 16,
              options=json.dumps({"lr": 1e-4}), config_json=json.dumps({"run_key": "1a2b3c4d5e6f", "fold": 0}))
    assert L.family_label(ft) == "ft uni.hf lora 1a2b3c4d"
    assert L.family_label({**ft, "config_json": json.dumps({"run_key": "1a2b3c4d5e6f", "name": "uni lora"})}) \
        == "uni lora"
    assert L.family_label(pd.Series(ft)) == "ft uni.hf lora 1a2b3c4d"  # a runs row works the same


def test_labels_are_unique_and_names_checked():
    assert L.unique_labels({"aaaaaaaa1": "x", "bbbbbbbb2": "x", "c": "y"}) == \
        {"aaaaaaaa1": "x #aaaaaa", "bbbbbbbb2": "x #bbbbbb", "c": "y"}
    assert L.check_name(None) is None and L.check_name("  cnn + morph ") == "cnn + morph"
    for bad in ("", "   ", "x" * (L.MAX_NAME + 1), "a\tb", "a\nb"):
        with pytest.raises(ProtocolError, match="--name"):
            L.check_name(bad)
    named = json.dumps({"members": ["a:b"], "name": "n"}, sort_keys=True, separators=(",", ":"))
    assert L.without_name(named) == '{"members":["a:b"]}' and L.without_name('{"pooling":"all"}') == '{"pooling":"all"}'
    assert L.is_finetuned_set("ft-1a2b3c4d-fold0.0123abcd") and not L.is_finetuned_set("handcrafted")
    assert not L.is_finetuned_set("ft-1a2b3c4d-folds")


def test_fusion_name_is_kept_outside_the_family_id(probed):
    runs = probed.results.read("runs")
    named = runs[runs["options"].str.contains('"name":"my stack"', regex=False)]
    assert named["family_id"].nunique() == 1
    fid = named["family_id"].iloc[0]
    assert L.family_labels(runs)[fid] == "my stack"
    # the same fusion without a name (or with another) is the same family: already stored, nothing appended
    assert fuse(probed, ["synth:logreg", "synth:simpleshot"], rule="stack", n_boot=50) is None
    assert fuse(probed, ["synth:logreg", "synth:simpleshot"], rule="stack", n_boot=50, name="other") is None
    assert len(probed.results.read("runs")) == len(runs)
    unnamed = runs[(runs["family"] == "fusion") & (runs["head"] == "mean")]
    assert L.family_labels(runs)[unnamed["family_id"].iloc[0]] == "fuse:mean(synth:logreg+synth:knn)"


def test_compact_board_one_row_per_family_by_heldout_auroc(probed):
    board = leaderboard(probed)
    table = compact_board(board)
    assert list(table.columns) == ["source", "family", "AMi-Br-test", "AtNorM-Br", "AtNorM-MD", HELDOUT, DELTA]
    ours = table[table["source"] == "mitoprobe"]
    assert sorted(ours["family"]) == sorted(["synth · logreg", "synth · knn", "synth · simpleshot",
                                             "fuse:mean(synth:logreg+synth:knn)", "my stack"])
    assert (table["source"].iloc[:len(ours)] == "mitoprobe").all()  # ours first, then the paper's rows
    oof = ours[HELDOUT].astype(float).to_numpy()
    assert (np.diff(oof) <= 0).all()  # best held-out AUROC first
    mine = board[(board["source"] == "mitoprobe") & (board["label"] == "synth · logreg")].set_index("test_set")
    row = ours[ours["family"] == "synth · logreg"].iloc[0]
    m = mine.loc["AtNorM-MD"]
    assert row["AtNorM-MD"] == f"{m['balanced_accuracy_mean']:.3f} ± {m['balanced_accuracy_std']:.3f}"
    assert row[DELTA] == " ".join(f"{mine.loc[t, 'delta_vs_paper']:+.3f}" for t in ("AMi-Br-test", "AtNorM-Br",
                                                                                     "AtNorM-MD"))
    paper = table[table["source"] == "paper"]
    assert len(paper) == 7 and paper["family"].str.startswith("paper · ").all() and (paper[HELDOUT] == "").all()


def _render(board: pd.DataFrame, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width).print(leaderboard_table(compact_board(board), title="t"))
    return buf.getvalue().splitlines()


def test_default_report_fits_120_columns(probed, capsys):
    print_report(probed, width=REPORT_WIDTH)  # the function the CLI calls, at 120 columns
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "synth · logreg " in out and "my stack " in out and "bal. acc. (folds)" not in out
    assert sum("synth · logreg " in line for line in lines) == 1  # one row per family

    res = CliRunner().invoke(cli, ["report", "--store", str(probed.root)])  # not a terminal: 120 columns
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 120
    assert "held-out" in res.output and "Δ vs paper best" in res.output
    assert "paper · uni · linear probe" in res.output

    # an extra cohort test set and a long label still fit (the label column folds)
    board = leaderboard(probed)
    ours = board[board["source"] == "mitoprobe"]
    extra = ours[ours["test_set"] == "AtNorM-MD"].assign(test_set="MyLab-2024-second-cohort", delta_vs_paper=np.nan)
    long = ours.assign(label="ft-1a2b3c4d-folds+handcrafted · lgbm · pooling=cls+mean, tta=True", family_id="x")
    lines = _render(pd.concat([board, extra, long], ignore_index=True), REPORT_WIDTH)
    assert max(len(line) for line in lines) <= 120 and any("MyLab-" in line for line in lines)


def test_wide_and_files_keep_every_column(probed):
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--store", str(probed.root), "--wide"])
    assert res.exit_code == 0, res.output
    assert "AUPRC" in res.output and "Brier" in res.output  # today's full table: a row per family x test set
    assert sum("│ mitoprobe │" in line for line in res.output.splitlines()) == 5 * 3
    res = runner.invoke(cli, ["report", "--store", str(probed.root), "--format", "csv", "--no-paper"])
    csv = pd.read_csv(io.StringIO(res.output))
    assert {"label", "oof_auroc", "ensemble_auroc_ci_low", "delta_vs_paper"} <= set(csv.columns)
    assert len(csv) == 5 * 3  # every family x test set
    res = runner.invoke(cli, ["report", "--store", str(probed.root), "--format", "markdown"])
    assert res.exit_code == 0 and "bal. acc. (folds)" in res.output and "| AtNorM-MD" in res.output


def test_compare_and_fuse_speak_labels(probed):
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--store", str(probed.root), "--compare", "my stack",
                              "--compare", "synth:knn", "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "my stack" in res.output and "synth · knn" in res.output and "fusion(" not in res.output
    fuse_cmd = ["fuse", "--store", str(probed.root), "--member", "synth:knn", "--member", "synth:simpleshot"]
    res = runner.invoke(cli, [*fuse_cmd, "--name", "knn+ss"])
    assert res.exit_code == 0 and res.output.startswith("fused knn+ss (mean), family "), res.output
    res = runner.invoke(cli, [*fuse_cmd, "--name", "renamed"])
    assert res.exit_code == 0, res.output
    assert "already stored" in res.output and "as 'knn+ss'" in res.output and "new fusion only" in res.output
    res = runner.invoke(cli, [*fuse_cmd, "--name", "a\tb"])
    assert res.exit_code != 0 and "--name" in str(res.exception)
    res = runner.invoke(cli, ["fuse", "--store", str(probed.root), "--rank"])
    assert res.exit_code == 0 and "my stack" in res.output and "fusion(" not in res.output
