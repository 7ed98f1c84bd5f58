"""``benchmarks.gpu_check``'s dry run (``--device cpu``): every model, every phase, tiny stand-ins, in seconds.

Not a timing test: it checks that each of the 10 models builds tiny, runs its embedding pass (the 7
foundation models), its paper training step (LoRA or full) and its loader, and that the one JSON file
the script writes has a positive rate for each, so the GPU check runs the moment a GPU is lent.
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
        rc = gpu_check.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--out", str(out), "--threads", "1",
                             "--workers", "1", "--patches", str(_patches(tmp_path / "patches")), "--n-patches", "8",
                             "--loader-samples", "24", "--embed-batch", "4", "--embed-steps", "1"])
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
        phases = ("embed", method, "loader") if stem in gpu_check.FOUNDATION else (method, "loader")
        for phase in phases:
            assert "error" not in entry[phase], (stem, phase, entry[phase])
            assert entry[phase]["images_per_s"] > 0, (stem, phase)
        assert "embed" in entry or stem not in gpu_check.FOUNDATION
        step = entry[method]
        assert 0 < step["params_trainable"] <= step["params_total"]
        assert (step["params_trainable"] < step["params_total"]) == (method == "lora")  # LoRA freezes the backbone
        assert isinstance(entry["input_bound"], bool)
    assert report["models"]["swin_base"]["recipe"] == "swin_base.random-bench"


def test_gpu_check_time_budget_skips_and_records(tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    out = tmp_path / "y.json"
    assert gpu_check.main(["--device", "cpu", "--only", "uni,vit_large", "--time-budget", "0", "--out", str(out),
                           "--patches", str(tmp_path / "absent"), "--n-patches", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["models"] == {} and report["skipped"] == ["uni", "vit_large"]
    assert "synthetic" in report["patches"]
