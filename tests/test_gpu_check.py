"""``benchmarks.gpu_check``'s dry run (``--device cpu``): every model, every phase, tiny stand-ins, in seconds.

Not a timing test: it checks that each of the 10 models builds tiny, runs its embedding pass (the 7
foundation models), its paper training step (LoRA or full) and that step fed by its loader, and that the one
JSON file the script writes has a positive rate for each, so the GPU check runs the moment a GPU is lent;
and that the time budget holds inside a phase (its timed loop stops early, ``cut``) and between models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import gpu_check
from conftest import png_bytes


def _patches(root: Path, n_per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for label in ("Atypical", "Normal"):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            (root / label / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)))
    return root


def test_gpu_check_dry_run_covers_every_model(tmp_path, monkeypatch):
    import torch

    monkeypatch.delenv("OUT", raising=False)
    out = tmp_path / "x.json"
    threads = torch.get_num_threads()
    try:
        rc = gpu_check.main(["--device", "cpu", "--steps", "2", "--warmup", "0", "--out", str(out), "--threads", "1",
                             "--workers", "1", "--patches", str(_patches(tmp_path / "patches")), "--n-patches", "8",
                             "--loader-samples", "24", "--embed-batch", "4", "--embed-steps", "1",
                             "--time-budget", "3600"])
    finally:
        torch.set_num_threads(threads)  # --threads is process-wide: leave the other tests theirs
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["skipped"] == []
    assert report["patches"].startswith("8 PNGs from")
    assert set(report["models"]) == set(gpu_check.MODELS)
    for stem, entry in report["models"].items():
        method = "lora" if stem in gpu_check.FOUNDATION else "full"
        assert entry["method"] == method
        phases = ("embed", method, "fed") if stem in gpu_check.FOUNDATION else (method, "fed")
        for phase in phases:
            assert "error" not in entry[phase], (stem, phase, entry[phase])
            assert entry[phase]["images_per_s"] > 0 and entry[phase]["cut"] is False, (stem, phase)
        assert "embed" in entry or stem not in gpu_check.FOUNDATION
        step = entry[method]
        assert step["steps"] == 2 and step["step_ms"] > 0 and "peak_gpu_gib" in step
        assert 0 < step["params_trainable"] <= step["params_total"]
        assert (step["params_trainable"] < step["params_total"]) == (method == "lora")  # LoRA freezes the backbone
        # the loader fed the training step: 24 images, the worker's first batch of 8 untimed
        assert (entry["fed"]["images"], entry["fed"]["workers"]) == (16, 1)
        assert entry["fed_over_step"] > 0 and isinstance(entry["input_bound"], bool)
    assert report["models"]["swin_base"]["recipe"] == "swin_base.random"  # embedder.recipes.random_twin


def test_gpu_check_time_budget_cuts_phases_skips_models_and_records(tmp_path, monkeypatch):
    """A spent budget: the first model's timed loops stop after one step each (``cut``), the next is skipped."""
    monkeypatch.delenv("OUT", raising=False)
    out = tmp_path / "y.json"
    assert gpu_check.main(["--device", "cpu", "--only", "uni,vit_large", "--time-budget", "0", "--out", str(out),
                           "--patches", str(tmp_path / "absent"), "--n-patches", "2", "--warmup", "0", "--steps", "5",
                           "--embed-batch", "2", "--embed-steps", "3", "--workers", "1", "--loader-samples", "40"]) == 0
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["uni"] and report["skipped"] == ["vit_large"]
    assert "synthetic" in report["patches"]
    uni = report["models"]["uni"]
    for phase in ("embed", "lora", "fed"):
        assert "error" not in uni[phase] and uni[phase]["cut"] is True and uni[phase]["images_per_s"] > 0, phase
    assert uni["embed"]["steps"] == uni["lora"]["steps"] == 1
    assert uni["fed"]["images"] == 8  # one timed batch after the worker's first
