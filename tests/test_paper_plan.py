"""The paper's comparison as a plan: its jobs and their state, its estimates, and its resumable local run
(the multi-node run with a lost node: test_paper_ray.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_six_slide_store, run_cli
from test_store_bad_input import snapshot
from tiny_paper import FAST, tiny_recipes
from mitoprobe.embedder import get_recipe
from mitoprobe.finetune import FinetuneConfig, finetune
from mitoprobe.finetune import estimate as E
from mitoprobe.finetune.model import build_classifier, parameter_counts
from mitoprobe.finetune.paper_run import read_attempts, run_plan
from mitoprobe.finetune.plan import DONE, PARTIAL, TODO, paper_plan, paper_pooling, paper_stems, replan
from mitoprobe.finetune.registry import runs_root
from mitoprobe.paper import END_TO_END, FOUNDATION
from mitoprobe.store.errors import ConfigError

STEMS = ["uni", "efficientnetv2_m"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def plan_store(tmp_path_factory):
    torch.set_num_threads(1)
    return make_six_slide_store(tmp_path_factory.mktemp("plan"))


def test_the_plan_lists_the_papers_grid_and_writes_nothing(plan_store):
    before = snapshot(plan_store.root)
    plan = paper_plan(plan_store, random=True, models=["uni", "vit_large"])
    assert snapshot(plan_store.root) == before  # no folds, no run folder, nothing
    keys = [j.key for j in plan.jobs]
    assert keys[:2] == ["embed:uni.random", "probe:uni.random"]
    assert [j.fold for j in plan.jobs if j.model == "uni.random" and j.kind == "finetune"] == [0, 1, 2, 3, 4]
    assert {j.method for j in plan.jobs if j.model == "vit_large.random"} == {"full"}  # end-to-end: no embed/probe
    assert all(j.state == TODO for j in plan.jobs) and plan.skipped == {}
    ft = [j for j in plan.jobs if j.kind == "finetune"]
    assert all(j.cost.gpu_s > E.BUILD_S and j.cost.peak_gib > 0 and j.cost.source == "flops" for j in ft)
    # a full fine-tune keeps every weight; LoRA only adapters and head
    full = next(j for j in ft if j.method == "full").cost
    lora = next(j for j in ft if j.method == "lora").cost
    assert full.disk_kept_gib > 1.0 > 0.05 > lora.disk_kept_gib
    t = plan.totals()
    assert t["to_do"] == len(plan.jobs) == 12 and t["wall_hours"][8] < t["wall_hours"][1]
    assert paper_stems(None) == list(FOUNDATION + END_TO_END)  # all 10 by default, in the paper's order


def test_paper_pooling_reads_the_recipes_paper_outputs():
    assert paper_pooling(get_recipe("uni.hf")) == "cls"
    assert paper_pooling(get_recipe("virchow2.hf")) == "both"  # CLS ⊕ patch mean, as the Virchow scripts
    assert paper_pooling(get_recipe("efficientnetv2_m.random")) == "vector"


def test_flop_counts_agree_with_the_vit_formula_and_lora_with_peft():
    uni = get_recipe("uni.random")  # ViT-L/16 at 224: 197 tokens
    arch = E.arch_of(uni)
    linear = 24 * 12 * 1024**2  # per block: qkv 3d², proj d², MLP 8d²
    assert arch.forward_flops == pytest.approx(2 * 197 * linear, rel=0.1)
    tiny = tiny_recipes()["uni"]
    model, _ = build_classifier(FinetuneConfig.paper(tiny.name, "lora", **FAST))
    trainable = parameter_counts(model)["trainable"] - 33  # minus the head, Linear(32, 1)
    assert E.arch_of(tiny).lora_params == trainable


def test_measured_estimates_come_from_gpu_check(tmp_path):
    arch = E.Arch(forward_flops=1e11, params=10**8, lora_params=10**6, activations=10**7, largest_output=10**5)
    measured = {"lora": {"images_per_s": 100.0, "peak_gpu_gib": 20.0}, "fed": {"images_per_s": 50.0},
                "embed": {"images_per_s": 1000.0, "peak_gpu_gib": 3.0}}
    c = E.finetune_cost(arch, "lora", epochs=10, n_train=1000, n_val=200, n_test=2000, batch_size=8,
                        measured=measured)
    # the loader feeds 50 img/s, below the step's 100: training runs at 50; a LoRA forward pass at 2 x 100
    assert c.source == "measured" and c.peak_gib == 20.0
    assert c.gpu_s == pytest.approx(E.BUILD_S + 10 * (1000 / 50 + 200 / 200) + 2200 / 200)
    # tests at fp16 (H-optimus' notebooks): the embedding phase's fp16 rate; held-out scoring stays at fp32
    fp16 = E.finetune_cost(arch, "lora", epochs=10, n_train=1000, n_val=200, n_test=2000, batch_size=8,
                           eval_precision="fp16", measured=measured)
    assert fp16.gpu_s == pytest.approx(E.BUILD_S + 10 * (1000 / 50 + 200 / 200) + 200 / 200 + 2000 / 1000)
    flops = E.finetune_cost(arch, "lora", epochs=10, n_train=1000, n_val=200, n_test=2000, batch_size=8)
    assert flops.source == "flops"
    assert flops.gpu_s == pytest.approx(E.BUILD_S + 10 * 1000 * 2e11 / (67e12 * E.ACHIEVED) +
                                        (10 * 200 + 2200) * 1e11 / (67e12 * E.ACHIEVED))
    good = tmp_path / "gpu_check.json"
    good.write_text(json.dumps({"dry_run": False, "models": {"uni": measured}}))
    assert E.read_gpu_check(good) == {"uni": measured}
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ConfigError, match="bad.json"):
        E.read_gpu_check(bad)
    bad.write_text(json.dumps({"dry_run": True, "models": {}}))
    with pytest.raises(ConfigError, match="dry run"):
        E.read_gpu_check(bad)


def test_makespan_schedules_the_longest_job_first():
    assert E.makespan([5, 4, 3, 3, 3], 1) == 18
    assert E.makespan([5, 4, 3, 3, 3], 2) == 10  # LPT: 5+3+... vs 4+3+3
    assert E.makespan([5, 4, 3, 3, 3], 8) == 5


def test_bad_requests_are_refused_before_anything_is_read(plan_store, tmp_path):
    with pytest.raises(ConfigError, match="not in the paper"):
        paper_plan(plan_store, models=["resnet18"])
    with pytest.raises(ConfigError, match="folds are 0..4"):
        paper_plan(plan_store, random=True, models=["uni"], folds=[7])
    with pytest.raises(ConfigError, match="not a folder"):
        paper_plan(plan_store, models=["uni"], weights_dir=tmp_path / "nowhere")


def test_a_model_whose_weights_cannot_load_is_left_out_with_the_reason(plan_store, tmp_path):
    (tmp_path / "virchow.safetensors").write_bytes(b"not a safetensors file")
    plan = paper_plan(plan_store, models=["virchow"], weights_dir=tmp_path)
    assert plan.jobs == [] and "virchow.safetensors" in plan.skipped["virchow"]


def test_local_run_resumes_a_partial_fold_and_lands_every_row_once(tmp_path):
    torch.set_num_threads(1)
    st = make_six_slide_store(tmp_path)
    plan = paper_plan(st, models=STEMS, recipes=tiny_recipes(), settings=dict(FAST, max_epochs=3))
    cfg = plan.configs["uni"]  # fold 0 of its LoRA run: killed after its first epoch

    def kill(epoch):
        raise Killed

    with pytest.raises(Killed):
        finetune(st, cfg, [0], progress=False, n_boot=10, on_epoch=kill)
    plan = replan(plan)
    fold0 = next(j for j in plan.jobs if j.key == "finetune:uni.tiny:lora:fold0")
    assert fold0.state == PARTIAL and fold0.detail.startswith("epoch 1 ")
    lines = []
    report = run_plan(st, plan, n_boot=10, echo=lines.append)
    assert report.failed == {} and len(report.done) == len(plan.todo()) == 12
    assert len(lines) == 12 and all("ETA" in s for s in lines)
    assert all(j.state == DONE for j in report.after.jobs)
    run_dir = runs_root(st) / fold0.run_key
    assert [a["resumed_after_epoch"] for a in read_attempts(run_dir / "fold0")] == [1]
    assert json.loads((run_dir / "fold0" / "DONE.json").read_text())["epochs"] == 3
    runs = st.results.read("runs")
    assert runs.groupby(["run_id", "test_set"]).size().max() == 1
    fams = runs.groupby("family")["family_id"].nunique()
    assert fams["finetune"] == 2  # LoRA and full, each 5 folds + the fold ensemble
    ft = runs[runs["family"] == "finetune"]
    assert sorted(ft.groupby("family_id")["fold"].nunique()) == [6, 6]
    probe = runs[runs["family"] == "probe"]
    paper_probe = probe[probe["head"] == "torch_linear"]["options"].iloc[0]
    assert json.loads(paper_probe)["pooling"] == "cls"
    again = run_plan(st, report.after, n_boot=10, echo=lines.append)
    assert again.done == {} and len(st.results.read("runs")) == len(runs)  # nothing left, nothing appended
    assert np.isfinite(runs["balanced_accuracy"]).all()


def test_cli_plan_prints_jobs_and_totals(plan_store, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "paper", "plan", "--random", "--models", "uni", "--folds", "0,1",
                        "--store", str(plan_store.root))
    assert code == 0, out
    assert "finetune:uni.random:lora:fold1" in out and "fold2" not in out
    assert "4 of 4 jobs to do" in out and "on 8 GPUs" in out
    code, out = run_cli(monkeypatch, capsys, "paper", "plan", "--models", "nope", "--store", str(plan_store.root))
    assert code == 2 and "not in the paper" in out
