"""The paper's plan on a local Ray cluster of 3 nodes (a head that runs nothing and two workers of one CPU
each, the CPU standing for a GPU): embeddings through Ray Data, every (model, fold) fine-tuning job a Ray
task. One worker node is killed while a fold trains; Ray starts the fold again on the other node, where it
resumes from its last saved epoch in the shared store. Every run row lands once and the verdict renders."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from conftest import make_six_slide_store, run_cli
from tiny_paper import FAST, tiny_recipes
from mitoprobe.classifiers.verdict import verdict
from mitoprobe.finetune.paper_run import read_attempts, run_plan
from mitoprobe.finetune.plan import DONE, paper_plan
from mitoprobe.finetune.registry import runs_root
from mitoprobe.finetune.train import STATE_FILE

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

# node deaths noticed within about a second (Ray's defaults take ~15 s)
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 2, "health_check_initial_delay_ms": 0}


def _kill_first_training_node(st, workers, cluster, killed: dict, stop: threading.Event) -> None:
    """Once a fold has saved an epoch (``state.pt``; its attempt is recorded) and is not done, remove the node
    running it. The fold has many epochs left then, so it cannot finish before the node is gone."""
    while not stop.is_set():
        for fold_dir in sorted(runs_root(st).glob("*/fold*")):
            attempts = read_attempts(fold_dir)
            if attempts and (fold_dir / STATE_FILE).exists() and not (fold_dir / "DONE.json").exists():
                node = next(w for w in workers if w.node_id == attempts[0]["node"])
                killed.update(fold=fold_dir, node=node.node_id)
                cluster.remove_node(node, allow_graceful=False)
                return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_fold_lost_with_its_node_resumes_on_another_and_lands_once(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    st = make_six_slide_store(tmp_path)
    plan = paper_plan(st, models=["uni"], recipes=tiny_recipes(), folds=[0, 1],
                      settings=dict(FAST, max_epochs=24, max_steps=0, early_stop=100))  # 24 epochs: time to kill
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, _system_config=FAST_HEALTH))
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    killed: dict = {}
    stop = threading.Event()
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        killer = threading.Thread(target=_kill_first_training_node, args=(st, workers, cluster, killed, stop),
                                  daemon=True)
        killer.start()
        lines: list[str] = []
        report = run_plan(st, plan, engine="ray", n_boot=10, echo=lines.append)
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()
    assert killed, "no fold was caught training"
    assert report.failed == {} and len(lines) == len(plan.todo()) == 4
    assert all(j.state == DONE for j in report.after.jobs)
    attempts = read_attempts(killed["fold"])
    assert [a["node"] for a in attempts][0] == killed["node"] and len(attempts) == 2
    assert attempts[1]["node"] != killed["node"] and attempts[1]["resumed_after_epoch"] >= 1  # from its checkpoint
    runs = st.results.read("runs")
    assert runs.groupby(["run_id", "test_set"]).size().max() == 1
    assert runs[runs["family"] == "finetune"]["fold"].nunique() == 2
    assert len(verdict(st)) > 0
    code, out = run_cli(monkeypatch, capsys, "report", "--paper", "--store", str(st.root))
    assert code == 0 and "rule:" in out
